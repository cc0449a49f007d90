"""Per-band normalisation statistics of a model (the ``stats JSON``)."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError, StatsMismatchWarning

__all__ = ["BandStats", "Stats", "default_s2_stats", "read_stats"]


@dataclass(frozen=True)
class BandStats:
    """Mean and standard deviation per band, in reflectance x 10000."""

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def select(self, bands: tuple[str, ...]) -> BandStats:
        """Return the statistics of ``bands`` in that order."""
        missing = [b for b in bands if b not in self.bands]
        if missing:
            raise ModelError(
                f"statistics have no entry for bands {missing}; they cover {list(self.bands)}. "
                "Add the bands to the stats JSON."
            )
        idx = [self.bands.index(b) for b in bands]
        return BandStats(bands, tuple(self.mean[i] for i in idx), tuple(self.std[i] for i in idx))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(mean, std)`` as float32 arrays shaped ``(bands, 1, 1)``."""
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return mean, std


@dataclass(frozen=True)
class Stats:
    """Input and output normalisation of a model.

    The model sees ``(x - input.mean) / input.std`` and its output is mapped back with
    ``y * output.std + output.mean``.
    """

    input: BandStats
    output: BandStats


def _band_stats(block: dict, default_bands: tuple[str, ...], where: str) -> BandStats:
    if not isinstance(block, dict) or "mean" not in block or "std" not in block:
        raise ModelError(f"{where}: needs 'mean' and 'std' lists of numbers")
    values = {}
    for key in ("mean", "std"):
        raw = block[key]
        if not isinstance(raw, list | tuple) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
            raise ModelError(f"{where}: '{key}' must be a list of numbers, got {raw!r}")
        if not all(math.isfinite(v) for v in raw):
            raise ModelError(f"{where}: '{key}' has a NaN or infinite value: {list(raw)}; "
                             "recompute the statistics")
        values[key] = tuple(float(v) for v in raw)
    mean, std = values["mean"], values["std"]
    if len(mean) != len(std):
        raise ModelError(f"{where}: 'mean' has {len(mean)} values but 'std' has {len(std)}")
    if any(s <= 0 for s in std):
        raise ModelError(f"{where}: every 'std' must be positive, got {list(std)}")
    bands = tuple(block.get("bands") or default_bands[: len(mean)])
    if len(bands) != len(mean):
        raise ModelError(f"{where}: {len(bands)} band names for {len(mean)} values")
    return BandStats(bands, mean, std)


def read_stats(
    source: str | Path | dict,
    *,
    bands_in: tuple[str, ...],
    bands_out: tuple[str, ...],
) -> Stats:
    """Read a stats JSON and check it against the model's bands.

    The JSON holds ``{"input": {"bands": [...], "mean": [...], "std": [...]},
    "output": {...}}`` in reflectance x 10000; ``bands`` may be omitted when the values
    follow the model's band order. When ``output`` is missing or holds fewer bands than
    the model outputs (as in some legacy files), the input statistics of the output bands
    are used instead and one :class:`~srlib.errors.StatsMismatchWarning` is issued here,
    once, when the model is loaded.

    Parameters
    ----------
    source : str, Path or dict
        Path of the JSON file, or its parsed content.
    bands_in, bands_out : tuple of str
        The model's input and output bands.

    Returns
    -------
    Stats
    """
    where = str(source) if not isinstance(source, dict) else "stats"
    if isinstance(source, dict):
        data = source
    else:
        try:
            data = json.loads(Path(source).read_text())
        except FileNotFoundError as err:
            raise ModelError(f"stats file {source} does not exist; pass the path of the "
                             "stats JSON that came with the checkpoint") from err
        except json.JSONDecodeError as err:
            raise ModelError(f"stats file {source} is not valid JSON: {err}") from err
    if "input" not in data:
        raise ModelError(f"{where}: no 'input' section; expected "
                         '{"input": {"mean": [...], "std": [...]}, "output": {...}}')
    stats_in = _band_stats(data["input"], bands_in, f"{where} input")
    if len(stats_in.bands) < len(bands_in):
        raise ModelError(
            f"{where}: input statistics cover {len(stats_in.bands)} bands but the model "
            f"takes {len(bands_in)} ({list(bands_in)})"
        )
    stats_in = stats_in.select(bands_in)
    out_block = data.get("output")
    stats_out = None
    if out_block is not None:
        stats_out = _band_stats(out_block, bands_out, f"{where} output")
        if len(stats_out.bands) < len(bands_out) or not set(bands_out) <= set(stats_out.bands):
            stats_out = None
    if stats_out is None:
        warnings.warn(
            f"{where}: output statistics do not cover the model's {len(bands_out)} output "
            f"bands {list(bands_out)}; de-normalising with the input statistics of those bands",
            StatsMismatchWarning,
            stacklevel=3,
        )
        return Stats(stats_in, stats_in.select(bands_out))
    return Stats(stats_in, stats_out.select(bands_out))


# Typical L2A statistics (reflectance x 10000) used by weight-free models to fill nodata
# before interpolation; any value works for linear models, these keep numbers well scaled.
_DEFAULT_MEAN = (1200.0, 1400.0, 1500.0, 1800.0, 2400.0, 2700.0, 2800.0, 2900.0, 2600.0, 1900.0)
_DEFAULT_STD = (900.0, 900.0, 1100.0, 1100.0, 1100.0, 1200.0, 1200.0, 1200.0, 1200.0, 1100.0)


def default_s2_stats(bands_in: tuple[str, ...], bands_out: tuple[str, ...]) -> Stats:
    """Return generic Sentinel-2 L2A statistics for models that carry none."""
    from ..bands import S2_BANDS

    base = BandStats(S2_BANDS, _DEFAULT_MEAN, _DEFAULT_STD)
    return Stats(base.select(bands_in), base.select(bands_out))
