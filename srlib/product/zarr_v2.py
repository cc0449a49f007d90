"""Zarr format-2 metadata written as the JSON files it is, without zarr-python's event loop.

zarr-python sends every group, array and attribute update through its event-loop
thread, about a millisecond a call; a store's overview pyramid takes ~250 such calls,
all of them in the serial start and end of :func:`srlib.to_zarr` (0.4 s of a 6 s demo on
2 CPUs, while the other core idled). These write the same documents (compared with
zarr-python's own in the tests), each through a ``*.partial`` file renamed into place,
so a kill never leaves a torn one (and :func:`.zarr_store.to_zarr` sweeps the
leftovers on resume).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numcodecs.abc
import numpy as np

from ..files import write_atomic

__all__ = ["create_array", "create_group", "update_attrs", "write_chunk"]


def _dump(path: Path, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, indent=2))


def _fill_json(value: Any, dtype: np.dtype) -> Any:
    """Return a fill value as format 2 writes it (NaN and infinities as strings)."""
    if value is None:
        return None
    if dtype.kind == "f":
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if dtype.kind == "b":
        return bool(value)
    return int(value)


def create_group(path: Path, attrs: dict[str, Any] | None = None) -> None:
    """Write a group's ``.zgroup`` and ``.zattrs`` (its folder made if needed)."""
    path.mkdir(parents=True, exist_ok=True)
    _dump(path / ".zgroup", {"zarr_format": 2})
    _dump(path / ".zattrs", attrs or {})


def create_array(path: Path, *, shape: Sequence[int], chunks: Sequence[int],
                 dtype: np.typing.DTypeLike, fill_value: Any,
                 compressor: numcodecs.abc.Codec | None,
                 attrs: dict[str, Any] | None = None) -> None:
    """Write a C-ordered, filter-less array's ``.zarray`` and ``.zattrs`` (no chunks)."""
    dt = np.dtype(dtype)
    path.mkdir(parents=True, exist_ok=True)
    _dump(path / ".zarray", {
        "shape": [int(n) for n in shape], "chunks": [int(n) for n in chunks],
        "dtype": dt.str, "fill_value": _fill_json(fill_value, dt), "order": "C",
        "filters": None, "dimension_separator": ".",
        "compressor": None if compressor is None else compressor.get_config(),
        "zarr_format": 2,
    })
    _dump(path / ".zattrs", attrs or {})


def update_attrs(path: Path, attrs: dict[str, Any]) -> None:
    """Merge ``attrs`` into a group's or array's ``.zattrs`` (a torn or missing one: ``{}``)."""
    try:
        current = json.loads((path / ".zattrs").read_text())
    except (OSError, ValueError):
        current = {}
    if not isinstance(current, dict):
        current = {}
    current.update(attrs)
    _dump(path / ".zattrs", current)


def write_chunk(path: Path, key: str, data: np.ndarray) -> None:
    """Write one uncompressed chunk (C order, the array's dtype) at ``key``."""
    write_atomic(path / key, np.ascontiguousarray(data).tobytes())
