"""A COG written tile by tile on every core: read, predictor, LZW in parallel threads.

GDAL's COG driver copies its source from one thread and only compresses in parallel,
so the COG stage barely used the cores it was given (1.4x from 8x the cores on a GPU
node; benchmarks/write_split.py). This writer does the whole per-tile work in a pool of
threads that release the GIL: each task reads the tile's chunks of every band straight
from the srlib Zarr store (format 2, decoded by numcodecs), maps stored values to the
COG's (quality's nodata), applies TIFF's horizontal predictor and compresses with LZW
(``imagecodecs``, the codecs of ``tifffile``). The calling thread only writes the
finished tiles, in order.

The layout is GDAL's COG layout, byte for byte in structure: the ghost header
(``LAYOUT=IFDS_BEFORE_DATA``, block leaders and trailers), every IFD before any tile,
then the tiles from the smallest overview to the full resolution, row by row. What the
file declares (georeferencing, nodata, band descriptions, colour interpretation,
scale/offset, statistics, quality codes) is not written by hand: GDAL's COG driver
writes a 1 x 1 file from the same VRT, and its tags are copied into every IFD. The tile
offsets and sizes are patched in at the end; the caller validates the file with
``cog_validate`` and renames it into place.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
from rasterio.shutil import copy as rio_copy

from ..errors import IncompleteStoreError, SrlibError
from ..signals import check_stop
from .zarr_store import array_layout

__all__ = ["CODEC", "SpilledTiles", "StoreArray", "encode_tile", "gdal_template", "write_cog"]

# TIFF field types and their sizes; the tags srlib sets itself
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
              16: 8, 17: 8, 18: 8}
_SHORT, _LONG, _LONG8 = 3, 4, 16
_NEW_SUBFILE_TYPE, _WIDTH, _LENGTH = 254, 256, 257
_TILE_OFFSETS, _TILE_BYTE_COUNTS = 324, 325
#: Tags only the full-resolution IFD carries (georeferencing, GDAL's metadata).
_MAIN_ONLY = {33550, 33922, 34264, 34735, 34736, 34737, 42112}


class StoreArray:
    """Windows of a 2-D Zarr format-2 array, read from its chunk files (thread-safe).

    Parameters
    ----------
    path : Path
        The array's directory (holding ``.zarray``).
    """

    def __init__(self, path: Path) -> None:
        layout = array_layout(path)
        if layout is None:
            raise SrlibError(f"{path} is not a 2-D C-ordered array without filters, as "
                             "srlib.to_zarr writes them; rewrite the store with srlib.to_zarr")
        self.path = path
        self.shape, self.chunks, self.dtype = layout.shape, layout.chunks, layout.dtype
        self.sep, self.codec = layout.sep, layout.codec

    def _chunk(self, iy: int, ix: int) -> np.ndarray:
        key = self.path / f"{iy}{self.sep}{ix}"
        try:
            raw = key.read_bytes()
        except FileNotFoundError:
            raise IncompleteStoreError(
                f"{key} is missing: the store is damaged; rerun srlib.to_zarr with the same "
                "input to rewrite it") from None
        data = self.codec.decode(raw) if self.codec is not None else raw
        return np.frombuffer(data, dtype=self.dtype).reshape(self.chunks)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Return the window ``[y0:y1, x0:x1]`` (inside the array)."""
        cy, cx = self.chunks
        out = np.empty((y1 - y0, x1 - x0), self.dtype)
        for iy in range(y0 // cy, -(-y1 // cy)):
            for ix in range(x0 // cx, -(-x1 // cx)):
                chunk = self._chunk(iy, ix)
                ya, yb = max(y0, iy * cy), min(y1, (iy + 1) * cy)
                xa, xb = max(x0, ix * cx), min(x1, (ix + 1) * cx)
                out[ya - y0:yb - y0, xa - x0:xb - x0] = \
                    chunk[ya - iy * cy:yb - iy * cy, xa - ix * cx:xb - ix * cx]
        return out


#: How the tiles are encoded (recorded with tiles compressed ahead of the COG).
CODEC = "lzw+horizontal-predictor/contig/1"


def encode_tile(planes: list[np.ndarray], tile: int, fill: int, dtype: str) -> bytes:
    """Return one COG tile: the bands' planes (COG values) interleaved, padded, compressed.

    The one encoding both the writer and :func:`srlib.to_zarr`'s tiles made ahead use,
    so a tile compressed early is the byte-identical tile.
    """
    block = np.full((tile, tile, len(planes)), fill, dtype)
    for i, plane in enumerate(planes):
        block[:plane.shape[0], :plane.shape[1], i] = plane
    predicted = imagecodecs.delta_encode(block, axis=1)
    # imagecodecs' stubs name bytes, but its codecs take any buffer: no copy here
    return bytes(imagecodecs.lzw_encode(predicted))  # type: ignore[arg-type]


class SpilledTiles:
    """Full-resolution tiles compressed ahead, while the store was written.

    :func:`srlib.to_zarr` with ``cog_tiles=True`` writes, beside the store
    (``NAME.zarr.cogtiles/``), each region's tiles (``R.bin``) and their index
    (``R.json``, written last: its presence proves the tiles). Only indexes of this very
    store (its ``srlib_store_id``), bands in this order, this tile and this codec count;
    any tile not found is made from the store.
    """

    def __init__(self, folder: Path, store_id: str, bands: list[str], tile: int) -> None:
        self.where: dict[tuple[int, int], tuple[Path, int, int]] = {}
        if not store_id or not folder.is_dir():
            return
        for index in folder.glob("*.json"):
            try:
                meta = json.loads(index.read_text())
                ok = (meta["store_id"] == store_id and meta["bands"] == bands
                      and meta["tile"] == tile and meta["codec"] == CODEC)
                tiles = meta["tiles"] if ok else {}
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a torn index: those tiles are made again
            data = index.with_suffix(".bin")
            for key, (offset, size) in tiles.items():
                ty, tx = (int(v) for v in key.split("-"))
                self.where[(ty, tx)] = (data, int(offset), int(size))

    def __len__(self) -> int:
        return len(self.where)

    def get(self, ty: int, tx: int) -> bytes | None:
        """Return tile (ty, tx) as compressed ahead, or None."""
        found = self.where.get((ty, tx))
        if found is None:
            return None
        path, offset, size = found
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        return data if len(data) == size else None


@dataclass(frozen=True)
class Level:
    """One image of the COG: its arrays (one per band) and how stored values map."""

    arrays: list[StoreArray]
    to_cog: list[Callable[[np.ndarray], np.ndarray]]
    spilled: SpilledTiles | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.arrays[0].shape


@dataclass
class _Tag:
    code: int
    type: int
    count: int
    data: bytes  # the value, little-endian


def _ifd(raw: bytes, offset: int, big: bool) -> tuple[list[_Tag], int]:
    """Parse the IFD at ``offset`` of a little-endian TIFF; return its tags and the next."""
    count_fmt, entry, inline = ("<Q", 20, 8) if big else ("<H", 12, 4)
    (n,) = struct.unpack_from(count_fmt, raw, offset)
    pos = offset + struct.calcsize(count_fmt)
    tags = []
    for _ in range(n):
        if big:
            code, typ, count = struct.unpack_from("<HHQ", raw, pos)
        else:
            code, typ, count = struct.unpack_from("<HHI", raw, pos)
        size = _TYPE_SIZE[typ] * count
        value_at = pos + entry - inline
        if size > inline:
            (value_at,) = struct.unpack_from("<Q" if big else "<I", raw, value_at)
        tags.append(_Tag(code, typ, count, raw[value_at:value_at + size]))
        pos += entry
    (nxt,) = struct.unpack_from("<Q" if big else "<I", raw, pos)
    return tags, nxt


def gdal_template(vrt: str, creation: dict[str, str], big: bool) -> tuple[bytes, list[_Tag]]:
    """GDAL's ghost header and the tags of its first IFD, for a COG of this VRT.

    ``vrt`` describes a 1 x 1 raster with the product's bands and metadata; GDAL's COG
    driver writes it, so the declarations are GDAL's own.
    """
    with tempfile.TemporaryDirectory(prefix="srlib-cog-template-") as tmp:
        src, dst = os.path.join(tmp, "t.vrt"), os.path.join(tmp, "t.tif")
        Path(src).write_text(vrt)
        rio_copy(src, dst, driver="COG", **{**creation, "BIGTIFF": "YES" if big else "NO"})
        raw = Path(dst).read_bytes()
    if raw[:2] != b"II":
        raise SrlibError("GDAL wrote a big-endian TIFF template; srlib's COG writer needs "
                         "little-endian: use engine='gdal'")
    first = struct.unpack_from("<Q" if big else "<I", raw, 8 if big else 4)[0]
    ghost = raw[16 if big else 8:first]
    tags, _ = _ifd(raw, first, big)
    return ghost, tags


def _tile_count(shape: tuple[int, int], tile: int) -> tuple[int, int]:
    return -(-shape[0] // tile), -(-shape[1] // tile)


def _tile_bytes(level: Level, ty: int, tx: int, tile: int, fill: int, dtype: str) -> bytes:
    """Read, map, predict and compress one tile of every band (runs in a worker thread)."""
    if level.spilled is not None:
        ahead = level.spilled.get(ty, tx)
        if ahead is not None:
            return ahead
    h, w = level.shape
    y0, x0 = ty * tile, tx * tile
    y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
    return encode_tile([to_cog(array.read(y0, y1, x0, x1))
                        for array, to_cog in zip(level.arrays, level.to_cog, strict=True)],
                       tile, fill, dtype)


class _Layout:
    """IFDs and their values laid out before the data; where tile offsets go."""

    def __init__(self, ghost: bytes, ifds: list[list[_Tag]], big: bool) -> None:
        self.big = big
        entry, inline = (20, 8) if big else (12, 4)
        count_size, next_size = (8, 8) if big else (2, 4)
        out = bytearray(b"II" + (struct.pack("<HHHQ", 43, 8, 0, 0) if big
                                 else struct.pack("<HI", 42, 0)))
        out += ghost
        self.patch: list[dict[int, int]] = []  # per IFD: tag -> where its values are
        next_at = 8 if big else 4
        for tags in ifds:
            if len(out) % 2:
                out += b"\0"
            struct.pack_into("<Q" if big else "<I", out, next_at, len(out))
            tags = sorted(tags, key=lambda t: t.code)
            start = len(out)
            values_at = start + count_size + entry * len(tags) + next_size
            body = bytearray(struct.pack("<Q" if big else "<H", len(tags)))
            extra = bytearray()
            where: dict[int, int] = {}
            for tag in tags:
                body += struct.pack("<HHQ" if big else "<HHI", tag.code, tag.type, tag.count)
                if len(tag.data) <= inline:
                    where[tag.code] = start + len(body)
                    body += tag.data.ljust(inline, b"\0")
                else:
                    if len(extra) % 2:
                        extra += b"\0"
                    where[tag.code] = values_at + len(extra)
                    body += struct.pack("<Q" if big else "<I", values_at + len(extra))
                    extra += tag.data
            next_at = start + len(body)
            body += b"\0" * next_size
            out += body + extra
            self.patch.append(where)
        self.header = bytes(out)
        if len(self.header) > 0xFFFFFFFF and not big:
            raise SrlibError("the COG's IFDs do not fit a classic TIFF; use bigtiff='YES'")


def _tags_for(base: list[_Tag], shape: tuple[int, int], tiles: int, big: bool,
              overview: bool) -> list[_Tag]:
    drop = {_WIDTH, _LENGTH, _TILE_OFFSETS, _TILE_BYTE_COUNTS, _NEW_SUBFILE_TYPE, 273, 279}
    if overview:
        drop |= _MAIN_ONLY
    tags = [t for t in base if t.code not in drop]
    for code, value in ((_WIDTH, shape[1]), (_LENGTH, shape[0])):
        typ, fmt = (_SHORT, "<H") if value < 1 << 16 else (_LONG, "<I")
        tags.append(_Tag(code, typ, 1, struct.pack(fmt, value)))
    if overview:
        tags.append(_Tag(_NEW_SUBFILE_TYPE, _LONG, 1, struct.pack("<I", 1)))
    typ, size = (_LONG8, 8) if big else (_LONG, 4)
    for code in (_TILE_OFFSETS, _TILE_BYTE_COUNTS):
        tags.append(_Tag(code, typ, tiles, b"\0" * size * tiles))
    return tags


def _jobs(levels: list[Level], tile: int) -> Iterator[tuple[int, int, int]]:
    """(level, tile row, tile column) in file order: smallest overview first."""
    for k in range(len(levels) - 1, -1, -1):
        rows, cols = _tile_count(levels[k].shape, tile)
        for ty in range(rows):
            for tx in range(cols):
                yield k, ty, tx


def write_cog(target: Path, levels: list[Level], *, ghost: bytes, tags: list[_Tag],
              big: bool, tile: int, fill: int, dtype: str, threads: int) -> None:
    """Write ``levels`` (full resolution first) as a COG at ``target``.

    Tiles are made by ``threads`` threads, at most ``4 x threads`` ahead of the writer;
    a classic TIFF that would pass 4 GiB is refused before the offsets overflow.
    """
    counts = [_tile_count(level.shape, tile) for level in levels]
    ifds = [_tags_for(tags, level.shape, r * c, big, k > 0)
            for k, (level, (r, c)) in enumerate(zip(levels, counts, strict=True))]
    layout = _Layout(ghost, ifds, big)
    offsets = [np.zeros(r * c, np.uint64) for r, c in counts]
    sizes = [np.zeros(r * c, np.uint64) for r, c in counts]
    limit = (1 << 64) if big else (1 << 32)
    with open(target, "r+b") as fh, ThreadPoolExecutor(
            max(1, threads), thread_name_prefix="srlib-cog") as pool:
        fh.truncate(0)
        fh.write(layout.header)
        pos = len(layout.header)
        pending: deque[tuple[int, int, Future[bytes]]] = deque()
        jobs = _jobs(levels, tile)

        def submit() -> bool:
            job = next(jobs, None)
            if job is None:
                return False
            k, ty, tx = job
            future = pool.submit(_tile_bytes, levels[k], ty, tx, tile, fill, dtype)
            pending.append((k, ty * counts[k][1] + tx, future))
            return True

        try:
            while len(pending) < 4 * max(1, threads) and submit():
                pass
            while pending:
                k, index, future = pending.popleft()
                data = future.result()
                check_stop()
                submit()
                if pos + len(data) + 8 >= limit:
                    raise SrlibError(f"{target} would pass 4 GiB as a classic TIFF; write it "
                                     "with bigtiff='YES' (or 'IF_SAFER')")
                fh.write(struct.pack("<I", len(data)))  # GDAL's block leader: the size
                offsets[k][index], sizes[k][index] = pos + 4, len(data)
                fh.write(data)
                fh.write(data[-4:])  # and its trailer: the last 4 bytes again
                pos += len(data) + 8
        except BaseException:
            for _, _, future in pending:
                future.cancel()
            raise
        fmt = "<u8" if big else "<u4"
        for k, where in enumerate(layout.patch):
            for code, values in ((_TILE_OFFSETS, offsets[k]), (_TILE_BYTE_COUNTS, sizes[k])):
                fh.seek(where[code])
                fh.write(values.astype(fmt).tobytes())
        fh.flush()
        os.fsync(fh.fileno())
