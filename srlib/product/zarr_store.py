"""Streaming a lazy product into a chunked, resumable Zarr store (format 2).

Format 2 because GDAL (3.10, inside the rasterio wheel) reads it, which lets the COG
stage read the store directly. Each dask block of the product is written as one
chunk-aligned region, together with the overview levels it can reduce on its own; a
marker file records each finished region and lists the chunks it wrote. The remaining
(small) overview levels are then computed from the store, so a store is whole when
:func:`to_zarr` returns and :func:`srlib.to_cog` only reads it. The store is marked
complete (root attribute ``srlib_complete``) only when every region and level is written
and every expected chunk exists (empty chunks are written too, so that a missing chunk
file is always a hole). Readers check that: a store with a missing chunk is refused,
naming the region, and a rerun of :func:`to_zarr` rewrites that region. A rerun after a
crash computes only the regions without a valid marker, rewriting each whole (a killed
writer can tear a chunk), so it ends with the same bytes as an uninterrupted run; the
``.partial`` files a killed writer leaves are removed.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import glob
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numcodecs
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ..engine.memory import frozen_heap, tune_malloc
from ..errors import IncompleteStoreError, InputError
from ..files import PARTIAL, write_atomic
from ..progress import report
from . import zarr_v2
from .encoding import ENCODINGS, OVERVIEWS, TILE, Encoding, encoding
from .pyramid import levels_needed
from .waves import WRITE, check_not_aborted, compute_waves, plan_waves, wave_regions

__all__ = ["ZARR_TILE", "build_overviews", "default_compressor", "holds_product",
           "is_complete", "missing_chunks", "open_zarr", "remove_store", "spill_dir",
           "to_zarr"]

#: Zarr chunk side: the COG's internal tile, so that regions and tiles align.
ZARR_TILE = TILE
#: Smallest overview chunk side that regions write directly (smaller levels: to_cog).
MIN_LOCAL_CHUNK = 64


def _progress_dir(path: Path) -> Path:
    """Region markers live beside the store (Zarr readers warn about foreign entries)."""
    return path.with_name(path.name + ".progress")


def spill_dir(path: str | os.PathLike) -> Path:
    """Where ``to_zarr(cog_tiles=True)`` puts the COG tiles it compresses ahead."""
    path = Path(path)
    return path.with_name(path.name + ".cogtiles")


def remove_store(path: str | os.PathLike) -> None:
    """Delete a store with what lives beside it (region markers, COG tiles made ahead)."""
    path = Path(path)
    for folder in (path, _progress_dir(path), spill_dir(path)):
        shutil.rmtree(folder, ignore_errors=True)


def cog_order(names: list[str]) -> list[str]:
    """Variables in the order the COG's bands take (:data:`ENCODINGS`' first)."""
    return [v for v in ENCODINGS if v in names] + [v for v in names if v not in ENCODINGS]


@functools.lru_cache(maxsize=1)
def gdal_reads_blosc() -> bool:
    """Whether this process's GDAL reads Blosc-compressed Zarr (a real probe, cached).

    The GDAL 3.10 inside rasterio 1.4.4's wheel does; the GDAL 3.9.3 of rasterio 1.4.3's
    and the 3.8.4 of 1.3.10's do not (they read zlib and zstd).
    """
    import tempfile
    import warnings

    import rasterio

    with tempfile.TemporaryDirectory(prefix="srlib-blosc-probe-") as tmp:
        path = os.path.join(tmp, "probe.zarr")
        array = zarr.open_array(path, mode="w", shape=(16, 16), chunks=(16, 16),
                                dtype="int16", zarr_format=2, compressor=_BLOSC)
        array[:] = np.arange(256, dtype="int16").reshape(16, 16)
        try:
            with warnings.catch_warnings():
                # the probe has no grid: GDAL's warning about it is the probe's, not the
                # user's (the filter must be in place before the open, which warns)
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    return bool((src.read(1) == array[:]).all())
        except (rasterio.errors.RasterioError, OSError):  # RasterioIOError is not a
            return False  # RasterioError before rasterio 1.4


_BLOSC = numcodecs.Blosc("lz4", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)


def default_compressor() -> numcodecs.abc.Codec:
    """Blosc LZ4 level 5 with bit-shuffle, or Zstd level 1 where GDAL lacks Blosc.

    The store is an intermediate, so encoding speed matters more than size: on int16
    output LZ4 with bit-shuffle compresses about as well as zstd on Swin2SR output at a
    fraction of the time (figures in benchmarks/README.md). The COG is made from the
    store by GDAL, so the store uses a codec this GDAL reads (:func:`gdal_reads_blosc`).
    """
    return _BLOSC if gdal_reads_blosc() else numcodecs.Zstd(level=1)


def product_token(sr: xr.Dataset) -> str:
    """Deterministic identity of a lazy product: its dask graph names, shape and grid."""
    names = [sr[v].data.name if hasattr(sr[v].data, "dask") else tokenize(sr[v].values)
             for v in sr.data_vars]
    return tokenize(names, dict(sr.sizes), str(sr.rio.crs), tuple(sr.rio.transform()))


REGION_TILES = 5  # a write region spans at most 5 x 5 Zarr chunks (2560 px)


def _aligned(sr: xr.Dataset, tile: int) -> xr.Dataset:
    """Rechunk so that every dask chunk but the last is a whole number of Zarr chunks.

    Chunks are also split to at most ``REGION_TILES`` Zarr chunks a side: a large model
    block (Swin2SR's default 5120 px) is then written by several threads at once.
    """
    first = sr[next(iter(sr.data_vars))]
    cap = tile * REGION_TILES
    if first.chunks is None:
        return sr.chunk({"y": cap, "x": cap})
    sizes = {}
    for dim, chunks in zip(first.dims, first.chunks, strict=True):
        if any(c % tile for c in chunks[:-1]) or max(chunks) > cap:
            sizes[dim] = min(cap, tile * max(1, round(chunks[0] / tile)))
    return sr.chunk(sizes) if sizes else sr


def var_encoding(var: xr.DataArray) -> Encoding:
    """Return the :class:`~srlib.product.encoding.Encoding` of a product's variable."""
    nodata = var.attrs.get("_FillValue", var.attrs.get("nodata", var.encoding.get("_FillValue")))
    return encoding(str(var.name), dtype=var.dtype, nodata=nodata)


def cog_nodata(var: xr.DataArray) -> int:
    """Nodata of a variable as the COG and the overview levels store it."""
    return var_encoding(var).cog_nodata


@functools.lru_cache(maxsize=256)
def _array(path: str, store_id: str) -> zarr.Array:
    """Open an array of a store once per worker process (its metadata costs 5 ms a read).

    ``store_id`` is drawn when the store is created, so a store deleted and created
    again (another codec, ``resume=False``) is opened afresh.
    """
    array = zarr.open_array(store=path, mode="r+", zarr_format=2)
    return array.with_config({"write_empty_chunks": True})  # a missing chunk is a hole


@dataclasses.dataclass(frozen=True)
class ArrayLayout:
    """What reading or writing a format-2 array's chunk files directly needs."""

    shape: tuple[int, int]
    chunks: tuple[int, int]
    dtype: np.dtype
    fill: Any
    sep: str
    codec: numcodecs.abc.Codec | None


def array_layout(path: str | os.PathLike) -> ArrayLayout | None:
    """Return a format-2 array's layout from its ``.zarray``, or None.

    None where srlib does not handle the chunk files itself: only 2-D, C-ordered arrays
    without filters (what :func:`to_zarr` writes).
    """
    meta = json.loads(Path(path, ".zarray").read_text())
    if meta.get("filters") or meta.get("order", "C") != "C" or len(meta["shape"]) != 2:
        return None
    compressor = meta.get("compressor")
    return ArrayLayout(tuple(meta["shape"]), tuple(meta["chunks"]), np.dtype(meta["dtype"]),
                       meta.get("fill_value") or 0, meta.get("dimension_separator") or ".",
                       numcodecs.get_codec(compressor) if compressor else None)


def _block_chunks(sr: xr.Dataset) -> tuple[tuple[int, ...], ...]:
    """Return the (y, x) chunks of the product's first variable (dask-backed)."""
    chunks = sr[next(iter(sr.data_vars))].chunks
    if chunks is None:
        raise InputError("the product is not dask-backed: chunk it (.chunk()) before writing")
    return chunks


@functools.lru_cache(maxsize=256)
def _meta(path: str, store_id: str) -> ArrayLayout | None:
    """:func:`array_layout`, read once per store (``store_id``) and array."""
    return array_layout(path)


def _put(path: str, store_id: str, region: tuple[slice, slice], block: np.ndarray) -> None:
    """Write ``block`` at ``region`` of a format-2 array, one chunk file at a time.

    What zarr-python writes, without its event loop: that loop runs in one thread, so
    region writes from several threads queued behind it and writing did not scale with
    the cores (1.2x from 2 CPUs). Each chunk is encoded here (the codecs release the
    GIL) and written in place: a chunk torn by a kill is harmless, since a region whose
    marker is missing is rewritten whole and readers refuse a store not marked complete.
    Regions that are not chunk-aligned go through zarr-python.
    """
    meta = _meta(path, store_id)
    y, x = region
    if meta is None or y.start % meta.chunks[0] or x.start % meta.chunks[1] or \
            (y.stop % meta.chunks[0] and y.stop != meta.shape[0]) or \
            (x.stop % meta.chunks[1] and x.stop != meta.shape[1]):
        _array(path, store_id)[region] = block
        return
    shape = meta.chunks
    cy, cx = shape
    block = block.astype(meta.dtype, copy=False)
    for iy in range(y.start // cy, -(-y.stop // cy)):
        for ix in range(x.start // cx, -(-x.stop // cx)):
            part = block[iy * cy - y.start:(iy + 1) * cy - y.start,
                         ix * cx - x.start:(ix + 1) * cx - x.start]
            if part.shape != shape:  # an edge chunk is stored whole, padded
                whole = np.full(shape, meta.fill, meta.dtype)
                whole[:part.shape[0], :part.shape[1]] = part
                part = whole
            data = np.ascontiguousarray(part)
            encoded = meta.codec.encode(data) if meta.codec is not None else data.tobytes()
            with open(os.path.join(path, f"{iy}{meta.sep}{ix}"), "wb") as fh:
                fh.write(encoded)


def _grid_of(array_dir: str) -> tuple[tuple[int, int], str]:
    """Return a format-2 array's chunk shape and chunk-key separator (its ``.zarray``)."""
    meta = json.loads(Path(array_dir, ".zarray").read_text())
    return tuple(meta["chunks"]), meta.get("dimension_separator") or "."


def _grid(array_dir: str, store_id: str) -> tuple[tuple[int, int], str]:
    """Return :func:`_grid_of` for region writes, from :func:`_meta` (cached per store).

    The ``.zarray`` itself where srlib does not handle the array's chunks.
    """
    meta = _meta(array_dir, store_id)
    return (meta.chunks, meta.sep) if meta is not None else _grid_of(array_dir)


def _chunk_keys(grid: tuple[tuple[int, int], str], y: slice, x: slice) -> list[str]:
    """Keys of the chunks of an array of ``grid`` (:func:`_grid_of`) covering ``[y, x]``."""
    (cy, cx), sep = grid
    return [f"{iy}{sep}{ix}" for iy in range(y.start // cy, -(-y.stop // cy))
            for ix in range(x.start // cx, -(-x.stop // cx))]


def _spill_tiles(path: str, store_id: str, region: tuple[slice, slice], marker: str,
                 encodings: dict[str, Encoding], blocks: dict[str, np.ndarray]) -> None:
    """Compress the region's full-resolution COG tiles now, beside the store.

    The block is in memory and the model is busy with the next ones: the COG's main cost
    (LZW of the full resolution) overlaps inference instead of following it.
    :func:`srlib.to_cog` then copies these tiles (:class:`.cog_tiles.SpilledTiles`).
    Skipped where the COG could not take them as they are (mixed dtypes or nodata,
    a region not on the tile grid).
    """
    from .cog_tiles import CODEC, encode_tile

    names = cog_order(list(blocks))
    encs = [encodings[n] for n in names]
    y, x = region
    if len({(e.cog_dtype, e.cog_nodata) for e in encs}) != 1 or y.start % ZARR_TILE \
            or x.start % ZARR_TILE:
        return
    planes = [e.to_cog(blocks[n]) for e, n in zip(encs, names, strict=True)]
    folder = spill_dir(path)
    folder.mkdir(exist_ok=True)
    name = folder / Path(marker).name
    tiles: dict[str, list[int]] = {}
    t = ZARR_TILE
    with open(name.with_suffix(".bin"), "wb") as fh:
        for ty in range(y.start // t, -(-y.stop // t)):
            for tx in range(x.start // t, -(-x.stop // t)):
                ys = slice(ty * t - y.start, min((ty + 1) * t, y.stop) - y.start)
                xs = slice(tx * t - x.start, min((tx + 1) * t, x.stop) - x.start)
                data = encode_tile([p[ys, xs] for p in planes], t, encs[0].cog_nodata,
                                   encs[0].cog_dtype)
                tiles[f"{ty}-{tx}"] = [fh.tell(), len(data)]
                fh.write(data)
    index = {"store_id": store_id, "bands": names, "tile": t, "codec": CODEC,
             "tiles": tiles}
    write_atomic(name.with_suffix(".json"), json.dumps(index))


#: Region writes running in this process, per store (see :func:`wait_for_writers`)
_inflight: collections.Counter[str] = collections.Counter()
_inflight_changed = threading.Condition()


@contextlib.contextmanager
def _writing(path: str) -> Iterator[None]:
    key = os.path.abspath(path)
    with _inflight_changed:
        _inflight[key] += 1
    try:
        yield
    finally:
        with _inflight_changed:
            _inflight[key] -= 1
            if _inflight[key] <= 0:
                del _inflight[key]
                _inflight_changed.notify_all()


def wait_for_writers(path: str | os.PathLike, timeout: float | None = None) -> bool:
    """Wait until no thread of this process writes a region of the store at ``path``.

    A job stopped by a signal (or failing) unwinds its main thread while the threads
    computing its blocks finish the region they hold; whoever makes the product next
    must not start before they are done. Regions not started yet never start (each
    checks :func:`srlib.signals.check_stop` first). Returns ``False`` on timeout.
    """
    key = os.path.abspath(path)
    with _inflight_changed:
        return _inflight_changed.wait_for(lambda: not _inflight.get(key), timeout)


def _write_region(path: str, store_id: str, region: tuple[slice, slice], marker: str,
                  levels: int, encodings: dict[str, Encoding], cog_tiles: bool = False,
                  **blocks: np.ndarray) -> int:
    from ..signals import check_stop

    check_stop()  # a stopped job starts no new region
    check_not_aborted(path)  # nor one whose store failed elsewhere
    with _writing(path):
        return _write_region_now(path, store_id, region, marker, levels, encodings,
                                 cog_tiles, blocks)


def _write_region_now(path: str, store_id: str, region: tuple[slice, slice], marker: str,
                      levels: int, encodings: dict[str, Encoding], cog_tiles: bool,
                      blocks: dict[str, np.ndarray]) -> int:
    written: dict[str, list[str]] = {}
    if cog_tiles:
        _spill_tiles(path, store_id, region, marker, encodings, blocks)
    for name, block in blocks.items():
        _put(os.path.join(path, name), store_id, region, block)
        written[name] = _chunk_keys(_grid(os.path.join(path, name), store_id), *region)
        # the first overview levels come from the block in memory: no second read pass
        enc = encodings[name]
        level = enc.to_cog(block)
        for k in range(1, levels + 1):
            level = enc.reduce(level, enc.cog_nodata).astype(enc.cog_dtype, copy=False)
            array = os.path.join(OVERVIEWS, str(k), name)
            y0, x0 = region[0].start >> k, region[1].start >> k
            part = (slice(y0, y0 + level.shape[0]), slice(x0, x0 + level.shape[1]))
            _put(os.path.join(path, array), store_id, part, level)
            written[array] = _chunk_keys(_grid(os.path.join(path, array), store_id), *part)
    lost = [f"{a}/{k}" for a, keys in written.items() for k in keys
            if not os.path.exists(os.path.join(path, a, k))]
    if lost:
        raise IncompleteStoreError(f"{path}: chunks {lost[:3]} vanished right after they were "
                                   "written; check the file system and rerun")
    # the marker goes last and atomically: its presence proves the whole region landed
    from ..failpoints import hit

    hit("zarr", marker)
    write_atomic(marker, json.dumps({"chunks": written}))
    return 1


def _marker_valid(path: Path, marker: Path) -> bool:
    """Tell whether a region marker lists chunks that all exist (text markers: no)."""
    try:
        written = json.loads(marker.read_text())["chunks"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((path / array / key).exists() for array, keys in written.items() for key in keys)


def _local_levels(shape: tuple[int, int], chunks: tuple[tuple[int, ...], ...]) -> int:
    """Overview levels that each region can reduce on its own (aligned, not too small)."""
    total = levels_needed(*shape)
    k = 0
    while k < total:
        nxt = k + 1
        ok = all(len(c) == 1 or (c[0] % (1 << nxt) == 0 and c[0] >> nxt >= MIN_LOCAL_CHUNK)
                 for c in chunks)
        if not ok:
            break
        k = nxt
    return k


def _create_overview_arrays(path: Path, sr: xr.DataArray | xr.Dataset, levels: int,
                            chunks: tuple[tuple[int, ...], ...],
                            compressor: numcodecs.abc.Codec) -> None:
    """Create the levels the regions reduce themselves (metadata only), all or none.

    Made in a ``*.partial`` folder renamed into place: a kill midway leaves no half
    pyramid for a resumed run to take as made.
    """
    if levels < 1:
        return
    tmp = path / f"{OVERVIEWS}.{uuid.uuid4().hex}.partial"
    zarr_v2.create_group(tmp)
    h, w = sr.sizes["y"], sr.sizes["x"]
    for k in range(1, levels + 1):
        group = tmp / str(k)
        zarr_v2.create_group(group, {"srlib_complete": False})
        shape = (-(-h // (1 << k)), -(-w // (1 << k)))
        chunk = tuple(min(-(-c[0] // (1 << k)), n) for c, n in zip(chunks, shape, strict=True))
        for name, var in sr.data_vars.items():
            enc = var_encoding(var)
            zarr_v2.create_array(group / str(name), shape=shape, chunks=chunk,
                                 dtype=enc.cog_dtype, fill_value=enc.cog_nodata,
                                 compressor=compressor, attrs={"_ARRAY_DIMENSIONS": ["y", "x"]})
    os.replace(tmp, path / OVERVIEWS)


def _reduce(block: np.ndarray, enc: Encoding) -> np.ndarray:
    return enc.reduce(block, enc.cog_nodata).astype(enc.cog_dtype, copy=False)


def _halve_lazy(arr: xr.DataArray, enc: Encoding, first: bool) -> xr.DataArray:
    data = arr.data.rechunk({0: 2048, 1: 2048})
    if first:  # the full-resolution arrays are in the store's encoding
        data = data.map_blocks(enc.to_cog, dtype=np.dtype(enc.cog_dtype))
    chunks = tuple(tuple(-(-c // 2) for c in dim) for dim in data.chunks)
    out = da.map_blocks(_reduce, data, enc, dtype=np.dtype(enc.cog_dtype), chunks=chunks,
                        meta=np.empty((0, 0), enc.cog_dtype))
    return xr.DataArray(out, dims=("y", "x"),
                        attrs={k: v for k, v in arr.attrs.items() if k == "long_name"})


def _group_complete(path: Path, group: str) -> bool:
    attrs = path / group / ".zattrs"
    try:
        return bool(json.loads(attrs.read_text()).get("srlib_complete"))
    except (OSError, ValueError):  # missing or torn group: rebuild it
        return False


def build_overviews(path: str | os.PathLike, *, tile: int = ZARR_TILE) -> int:
    """Compute the overview levels a store lacks (idempotent); return the level count.

    :func:`to_zarr` calls this before it marks the store complete: the levels that fit
    inside its regions are written with them; the remaining (small) levels are made
    here, level ``k`` from level ``k - 1`` with dask. Overview quality is int16 with the
    COG's nodata (-32768) for "no valid pixel" (see :mod:`srlib.product.pyramid`).
    """
    path = Path(path)
    ds = _open(path)
    levels = levels_needed(ds.sizes["y"], ds.sizes["x"], tile=tile)
    prev = ds[[v for v in ds.data_vars if ds[v].dims == ("y", "x")]]
    encs = {v: var_encoding(ds[v]) for v in prev.data_vars}
    for k in range(1, levels + 1):
        report("overviews", k - 1, levels, "levels")
        group = f"{OVERVIEWS}/{k}"
        if not _group_complete(path, group):
            level = xr.Dataset({name: _halve_lazy(arr, encs[name], k == 1)
                                for name, arr in prev.data_vars.items()})
            encoding = {v: {"chunks": (ZARR_TILE, ZARR_TILE), "_FillValue": encs[v].cog_nodata,
                            "compressors": [default_compressor()]} for v in level.data_vars}
            level.attrs["srlib_complete"] = False
            # write_empty_chunks through zarr's config: zarr 3.0's create_array takes no
            # such argument, which xarray would pass on
            with zarr.config.set({"array.write_empty_chunks": True}):
                level.to_zarr(path, group=group, mode="w", zarr_format=2, encoding=encoding,
                              consolidated=False)
            zarr.open_group(str(path), path=group, mode="r+",
                            zarr_format=2, use_consolidated=False).attrs["srlib_complete"] = True
        prev = xr.open_zarr(path, group=group, mask_and_scale=False, consolidated=False)
    zarr.consolidate_metadata(str(path))  # GDAL finds groups through .zmetadata
    report("overviews", levels, levels, "levels")
    return levels


def _arrays(path: Path) -> list[str]:
    """Every 2-D data array of a store (full resolution and overview levels), by path."""
    found = []
    for zarray in sorted(path.rglob(".zarray")):
        meta = json.loads(zarray.read_text())
        if len(meta["shape"]) == 2:
            found.append(zarray.parent.relative_to(path).as_posix())
    return found


def missing_chunks(path: str | os.PathLike) -> dict[str, list[str]]:
    """Chunks a store's arrays should have but lack, by array (empty when whole)."""
    path = Path(path)
    missing: dict[str, list[str]] = {}
    for array in _arrays(path):
        h, w = json.loads((path / array / ".zarray").read_text())["shape"]
        keys = _chunk_keys(_grid_of(str(path / array)), slice(0, h), slice(0, w))
        absent = [k for k in keys if not (path / array / k).exists()]
        if absent:
            missing[array] = absent
    return missing


def _damaged_regions(path: Path, missing: dict[str, list[str]]) -> list[str]:
    """Region ids ("iy-ix") of the full-resolution regions that hold missing chunks."""
    attrs = _root_attrs(path)
    edges = attrs.get("srlib_regions") or {}
    ys, xs = np.asarray(edges.get("y", [0])), np.asarray(edges.get("x", [0]))
    regions = set()
    for array, keys in missing.items():
        level = int(array.split("/")[1]) if array.startswith(OVERVIEWS + "/") else 0
        meta = json.loads((path / array / ".zarray").read_text())
        cy, cx = meta["chunks"]
        sep = meta.get("dimension_separator") or "."
        for key in keys:
            iy, ix = (int(v) for v in key.split(sep))
            y0, x0 = (iy * cy) << level, (ix * cx) << level
            regions.add(f"{int(np.searchsorted(ys, y0, side='right')) - 1}-"
                        f"{int(np.searchsorted(xs, x0, side='right')) - 1}")
    return sorted(regions)


def _check_whole(path: Path) -> None:
    missing = missing_chunks(path)
    if missing:
        where = ", ".join(f"{a}: {k[:3]}" for a, k in list(missing.items())[:3])
        raise IncompleteStoreError(
            f"{path} is damaged: {sum(map(len, missing.values()))} chunks are missing ({where}) "
            f"in regions {_damaged_regions(path, missing)[:5]}; rerun srlib.to_zarr (or the "
            "srlib command) with the same input to rewrite them")


def _remove_partials(path: Path) -> None:
    """Delete the ``*.partial`` files and folders a killed writer left behind.

    In the store, among its region markers and among its spilled COG tiles.
    """
    found = [p for folder in (path, _progress_dir(path), spill_dir(path))
             for p in folder.rglob(f"*{PARTIAL}")]
    for leftover in sorted(found, reverse=True):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _threads() -> int:
    """Threads of the active scheduler (a distributed client's, or this machine's)."""
    from ..config import available_cpus, distributed_client

    client = distributed_client()
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return int(dask.config.get("num_workers", None) or available_cpus())


def _source_block(source_ends: list[np.ndarray] | None,
                  region: tuple[slice, slice]) -> tuple[int, int]:
    """Index of the model block (dask chunk before alignment) where a region starts.

    ``source_ends``: per dimension, the cumulative ends of the model's chunks.
    """
    if source_ends is None:
        return (0, 0)
    return tuple(int(np.searchsorted(ends, r.start, side="right"))
                 for ends, r in zip(source_ends, region, strict=True))  # type: ignore[return-value]


def _root_attrs(path: Path) -> dict:
    zattrs = path / ".zattrs"
    try:
        attrs = json.loads(zattrs.read_text()) if zattrs.exists() else {}
    except (OSError, ValueError):  # a torn or foreign file: not a usable srlib store
        return {}
    return attrs if isinstance(attrs, dict) else {}


def is_complete(path: str | os.PathLike) -> bool:
    """Whether the store at ``path`` was marked complete by :func:`to_zarr`."""
    return bool(_root_attrs(Path(path)).get("srlib_complete"))


def holds_product(path: str | os.PathLike, sr: xr.Dataset, *, chunks: int | None = None) -> bool:
    """Whether the store at ``path`` was written (or is being written) for the product ``sr``.

    The identity covers the product's dask graph (input, model weights and code, stats,
    patch geometry, precision), shape and grid: see :func:`product_token`.
    """
    attrs = _root_attrs(Path(path))
    return attrs.get("srlib_product") == product_token(_aligned(sr, chunks or ZARR_TILE))


def to_zarr(
    sr: xr.Dataset,
    path: str | os.PathLike,
    *,
    chunks: int | None = None,
    compressor: numcodecs.abc.Codec | None = None,
    resume: bool = True,
    cog_tiles: bool = False,
) -> Path:
    """Stream a lazy super-resolved Dataset into a chunked Zarr store, resumably.

    Parameters
    ----------
    sr : xarray.Dataset
        Output of :func:`srlib.super_resolve` (or any dask-backed Dataset on a y/x grid).
    path : str or PathLike
        Store directory.
    chunks : int, optional
        Zarr chunk side in pixels (default 512, the COG tile). Dask chunks are aligned to
        whole multiples of it.
    compressor : numcodecs codec, optional
        Default :func:`default_compressor` (Blosc LZ4, bit-shuffle), readable by GDAL.
    resume : bool
        Continue an interrupted store of the same product (default). ``False`` deletes an
        existing store and starts again.
    cog_tiles : bool
        Also compress each region's full-resolution COG tiles as it is written, beside
        the store (``NAME.cogtiles/``), for :func:`srlib.to_cog` to copy: the COG's main
        cost then overlaps inference (on a GPU node, the CPUs compress while the GPU
        runs the next blocks). Costs about half the raw full resolution on disk until
        the store is removed (:func:`remove_store`). :func:`srlib.super_resolve_to_cog`
        and ``srlib dr`` turn it on when the model runs on a GPU.

    Returns
    -------
    Path
        The store, marked complete.

    Raises
    ------
    InputError
        The store at ``path`` holds a different product; delete it or pass
        ``resume=False``.
    """
    tune_malloc()
    with frozen_heap():
        return _to_zarr(sr, Path(path), tile=chunks or ZARR_TILE, compressor=compressor,
                        resume=resume, cog_tiles=cog_tiles)


def _to_zarr(sr: xr.Dataset, path: Path, *, tile: int,
             compressor: numcodecs.abc.Codec | None, resume: bool, cog_tiles: bool) -> Path:
    source_chunks = sr[next(iter(sr.data_vars))].chunks  # the model's blocks
    source_ends = None if source_chunks is None else [np.cumsum(c) for c in source_chunks]
    sr = _aligned(sr, tile)
    token = product_token(sr)
    progress = _progress_dir(path)
    if path.exists() and not resume:
        remove_store(path)
    if path.exists():
        attrs = _root_attrs(path)
        if attrs.get("srlib_product") != token:
            raise InputError(
                f"{path} holds another product (or is not an srlib store); delete it or pass "
                "resume=False to overwrite it"
            )
        _remove_partials(path)
        if attrs.get("srlib_complete"):
            missing = missing_chunks(path)
            if not missing:
                return path
            _reopen_damaged(path, missing, first_chunks=sr[next(iter(sr.data_vars))].chunks)
    else:
        shutil.rmtree(spill_dir(path), ignore_errors=True)  # another store's tiles
        _create_store(path, sr, token, tile, compressor or default_compressor())

    store_id = str(_root_attrs(path).get("srlib_store_id", ""))
    first_chunks = _block_chunks(sr)
    ychunks, xchunks = first_chunks
    levels = _local_levels((sr.sizes["y"], sr.sizes["x"]), first_chunks)
    if not (path / OVERVIEWS).exists():
        _create_overview_arrays(path, sr, levels, first_chunks,
                                compressor or default_compressor())
    groups = _region_tasks(path, sr, store_id, levels, source_ends,
                           cog_tiles=cog_tiles and tile == ZARR_TILE)
    total = len(ychunks) * len(xchunks)
    done = total - sum(len(g) for g in groups.values())
    report("inference", done, total, "regions")
    threads = _threads()
    region_bytes = ychunks[0] * xchunks[0] * sum(sr[v].dtype.itemsize for v in sr.data_vars)
    done = compute_waves(str(path), plan_waves(list(groups.values()),
                                               wave_regions(threads, region_bytes)),
                         done, total, threads)
    unwritten = [f"{iy}-{ix}" for iy in range(len(ychunks)) for ix in range(len(xchunks))
                 if not (progress / f"{iy}-{ix}").exists()]
    if unwritten:
        raise IncompleteStoreError(f"{path}: regions {unwritten[:5]} were not written; rerun "
                                   "srlib.to_zarr to resume")
    _complete(path, sr, levels, tile)
    return path


def _create_store(path: Path, sr: xr.Dataset, token: str, tile: int,
                  compressor: numcodecs.abc.Codec) -> None:
    """Write a new store's metadata (no chunks yet) and an empty progress folder."""
    encoding = {v: {"chunks": (tile, tile), "compressors": [compressor]} for v in sr.data_vars}
    template = sr.rio.write_crs(sr.rio.crs) if sr.rio.crs else sr.copy()
    crs_wkt = sr.rio.crs.to_wkt() if sr.rio.crs else None
    for v in template.data_vars:
        if crs_wkt:  # CF grid mapping for xarray/rioxarray, _CRS for GDAL's Zarr driver
            template[v].attrs.update(grid_mapping="spatial_ref", _CRS={"wkt": crs_wkt})
    regions = {d: np.cumsum((0, *c[:-1])).tolist()
               for d, c in zip(("y", "x"), _block_chunks(sr), strict=True)}
    template.attrs.update(srlib_product=token, srlib_complete=False, srlib_chunk=tile,
                          srlib_store_id=uuid.uuid4().hex, srlib_regions=regions)
    # made aside and renamed into place: a writer killed midway (a SIGTERM while the
    # arrays' metadata is written) must not leave a store whose root names the product
    # but whose arrays are missing, which every resume would then fail on
    for stale in path.parent.glob(f"{glob.escape(path.name)}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    template.to_zarr(staging, mode="w", compute=False, zarr_format=2, encoding=encoding,
                     consolidated=True)
    progress = _progress_dir(path)
    shutil.rmtree(progress, ignore_errors=True)
    progress.mkdir()
    os.replace(staging, path)


def _region_tasks(path: Path, sr: xr.Dataset, store_id: str, levels: int,
                  source_ends: list[np.ndarray] | None, *, cog_tiles: bool = False
                  ) -> dict[tuple[int, int], list]:
    """Delayed writes of the regions without a valid marker, by the model block they cut."""
    ychunks, xchunks = _block_chunks(sr)
    ystarts, xstarts = np.cumsum((0, *ychunks)), np.cumsum((0, *xchunks))
    progress = _progress_dir(path)
    encodings = {str(v): var_encoding(sr[v]) for v in sr.data_vars}
    # One graph for every region's write, over the unoptimised blocks: per-variable fusion
    # would run the shared model block once per variable and drop task annotations
    # (super_resolve's GPU resources); and one dask.delayed call per region would cull the
    # whole graph once per region (34 s for the 484 regions of a quarter tile, 16x that
    # for a whole tile), where this builds it once.
    arrays = {str(v): sr[v].data for v in sr.data_vars}
    keys = {v: a.__dask_keys__() for v, a in arrays.items()}
    names = tuple(arrays)
    name = f"{WRITE}-{uuid.uuid4().hex}"  # fresh keys: a rerun never reuses results
    layer: dict[Any, tuple] = {}
    members: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
    for iy in range(len(ychunks)):
        for ix in range(len(xchunks)):
            marker = progress / f"{iy}-{ix}"
            if marker.exists() and _marker_valid(path, marker):
                continue
            region = (slice(int(ystarts[iy]), int(ystarts[iy + 1])),
                      slice(int(xstarts[ix]), int(xstarts[ix + 1])))
            job = _RegionJob(str(path), store_id, region, str(marker), levels, encodings,
                             names, cog_tiles)
            layer[(name, iy, ix)] = (_write_packed, job, *(keys[v][iy][ix] for v in names))
            members.setdefault(_source_block(source_ends, region), []).append((name, iy, ix))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=list(arrays.values()))
    return {block: [Delayed(key, graph, layer=name) for key in group]
            for block, group in members.items()}


@dataclasses.dataclass(frozen=True)
class _RegionJob:
    """What a region's write task needs besides its blocks (one object: never a key)."""

    path: str
    store_id: str
    region: tuple[slice, slice]
    marker: str
    levels: int
    encodings: dict[str, Encoding]
    names: tuple[str, ...]
    cog_tiles: bool = False


def _write_packed(job: _RegionJob, *blocks: np.ndarray) -> int:
    return _write_region(job.path, job.store_id, job.region, job.marker, job.levels,
                         job.encodings, job.cog_tiles,
                         **dict(zip(job.names, blocks, strict=True)))


def _complete(path: Path, sr: xr.Dataset, levels: int, tile: int) -> None:
    """Build the remaining overview levels, check every chunk, mark the store complete."""
    group = zarr.open_group(str(path), mode="r+", zarr_format=2, use_consolidated=False)
    for k in range(1, levels + 1):
        group[f"{OVERVIEWS}/{k}"].attrs["srlib_complete"] = True
    zarr.consolidate_metadata(str(path))
    total = build_overviews(path, tile=tile)
    _check_whole(path)
    group.attrs.update(_describe_pyramid(path, sr, total), srlib_complete=True)
    if "spatial_ref" in sr.coords:  # CF: a plain xr.open_zarr then keeps it a coordinate
        group.attrs["coordinates"] = "spatial_ref"
    zarr.consolidate_metadata(str(path))
    shutil.rmtree(_progress_dir(path), ignore_errors=True)


def _describe_pyramid(path: Path, sr: xr.Dataset, levels: int) -> dict[str, Any]:
    """Describe the overview levels as a multiscale pyramid (CF and GeoZarr-style).

    Level ``k`` gets its own dimensions ``y_k``/``x_k`` with cell-centre coordinates and
    the root's grid mapping, so that ``xr.open_datatree`` opens the whole store (a child
    group may not reuse its parent's dimension names at another size) and every level is
    georeferenced. Returns the root's attributes that list the levels (``multiscales``).
    """
    t = sr.rio.transform() if sr.rio.crs is not None else None
    datasets = [{"path": ".", "level": 0,
                 **({"cell_size": [t.a, t.e]} if t is not None else {})}]
    h, w = sr.sizes["y"], sr.sizes["x"]
    for k in range(1, levels + 1):
        sub = path / OVERVIEWS / str(k)
        ydim, xdim = f"y_{k}", f"x_{k}"
        for zarray in sorted(sub.glob("*/.zarray")):
            name = zarray.parent.name
            if len(json.loads(zarray.read_text())["shape"]) == 2:
                zarr_v2.update_attrs(zarray.parent, {
                    "_ARRAY_DIMENSIONS": [ydim, xdim],
                    **({"grid_mapping": "spatial_ref"} if t is not None else {}),
                    **(_level_attrs(sr[name]) if name in sr else {})})
        if t is None:
            continue
        f = 1 << k
        for dim, n, start, step, axis in ((ydim, -(-h // f), t.f, t.e * f, "y"),
                                          (xdim, -(-w // f), t.c, t.a * f, "x")):
            zarr_v2.create_array(sub / dim, shape=(n,), chunks=(n,), dtype="<f8",
                                 fill_value=None, compressor=None,
                                 attrs={"_ARRAY_DIMENSIONS": [dim], "units": "m",
                                        "axis": axis.upper(),
                                        "standard_name": f"projection_{axis}_coordinate"})
            zarr_v2.write_chunk(sub / dim, "0", start + (np.arange(n) + 0.5) * step)
        datasets.append({"path": f"{OVERVIEWS}/{k}", "level": k,
                         "cell_size": [t.a * (1 << k), t.e * (1 << k)]})
    return {"Conventions": "CF-1.10", "multiscales": [{
        "name": "overviews", "type": "reduce", "datasets": datasets,
        "metadata": {"method": "2 x 2 blocks: reflectance the mean of the valid pixels, "
                               "quality the most frequent valid code (srlib.product.pyramid)"},
    }]}


#: Attributes each overview level repeats from the full-resolution variable.
_CF_ATTRS = ("long_name", "standard_name", "units", "scale_factor", "add_offset",
             "flag_values", "flag_meanings")


def _level_attrs(var: xr.DataArray) -> dict[str, Any]:
    """Return a variable's CF attributes as its overview levels store them (COG values).

    Levels hold the COG's values: where the store maps a code to the COG's nodata (the
    quality band's 0), that code is nodata there, not a flag.
    """
    attrs = {a: v for a, v in var.attrs.items() if a in _CF_ATTRS}
    enc = var_encoding(var)
    if enc.lut is not None and "flag_values" in attrs:
        dropped = {src for src, dst in enc.lut if dst == enc.cog_nodata}
        pairs = [(v, m) for v, m in zip(attrs["flag_values"],
                                         str(attrs.get("flag_meanings", "")).split(),
                                         strict=False) if v not in dropped]
        attrs["flag_values"] = [v for v, _ in pairs]
        attrs["flag_meanings"] = " ".join(m for _, m in pairs)
    return attrs


def _reopen_damaged(path: Path, missing: dict[str, list[str]],
                    first_chunks: tuple | None) -> None:
    """Mark a complete store with missing chunks incomplete, keeping its whole regions."""
    damaged = set(_damaged_regions(path, missing))
    group = zarr.open_group(str(path), mode="r+", zarr_format=2, use_consolidated=False)
    group.attrs["srlib_complete"] = False
    local = sorted(int(p.name) for p in (path / OVERVIEWS).iterdir() if p.name.isdigit()) \
        if (path / OVERVIEWS).exists() else []
    for k in local:  # the small levels are rebuilt from the regions afterwards
        if not (path / OVERVIEWS / str(k) / ".zattrs").exists():
            continue
        sub = zarr.open_group(str(path), path=f"{OVERVIEWS}/{k}", mode="r+", zarr_format=2,
                              use_consolidated=False)
        if sub.attrs.get("srlib_complete"):
            sub.attrs["srlib_complete"] = False
    progress = _progress_dir(path)
    shutil.rmtree(progress, ignore_errors=True)
    progress.mkdir()
    if first_chunks is not None:
        for iy in range(len(first_chunks[0])):
            for ix in range(len(first_chunks[1])):
                name = f"{iy}-{ix}"
                if name not in damaged:
                    write_atomic(progress / name, json.dumps({"chunks": {}}))


def _open(path: Path) -> xr.Dataset:
    ds = xr.open_zarr(path, mask_and_scale=False, consolidated=True)
    ds = ds[[v for v in ds.data_vars if v != OVERVIEWS]]
    return ds[cog_order(list(ds.data_vars))]


def open_zarr(path: str | os.PathLike) -> xr.Dataset:
    """Open a complete srlib Zarr store lazily, int16 values and nodata kept as stored.

    Raises
    ------
    IncompleteStoreError
        The store was not completely written (the writer was interrupted), or a chunk is
        missing (named with its region); rerun :func:`to_zarr` to complete it.
    """
    path = Path(path)
    if not (path / ".zattrs").exists():
        raise InputError(f"{path} is not a Zarr store written by srlib.to_zarr")
    attrs = _root_attrs(path)
    if not attrs.get("srlib_complete"):
        raise IncompleteStoreError(
            f"{path} is incomplete: its writer stopped before every region was written. "
            "Rerun srlib.to_zarr (or the srlib command) with the same input to resume it"
        )
    _check_whole(path)
    try:
        return _open(path)
    except Exception as err:
        raise IncompleteStoreError(f"{path} cannot be read as an srlib store: "
                                   f"{type(err).__name__}: {err}; rerun srlib.to_zarr") from err
