"""Zarr store -> Cloud-Optimized GeoTIFF, fast, atomic and validated.

How: the overview pyramid is in the store (``overviews/1``, ``overviews/2``, ...), written
by :func:`srlib.to_zarr` (reflectance is the mean of the valid pixels of each 2 x 2
block, and the quality band takes the most frequent valid code, ties to the higher code,
never an average of codes); this module only reads the store, so a read-only store
converts. A VRT then
presents the full-resolution arrays (read by GDAL's Zarr driver) with those overviews,
and GDAL's COG driver writes the file with its own threads (compression of tiles in
parallel, ``NUM_THREADS``) and bounded memory. The COG profile (LZW, 512 px tiles) and
the validation come from rio-cogeo. ``rio_cogeo.cog_translate`` is not used for the copy:
it applies one overview resampling to every band (the quality band would be averaged)
and copies 512 px blocks from a single Python loop, which is slower than GDAL's own
threaded copy (benchmarks/README.md).

The file is written under a temporary name beside the target, validated, and moved into
place with an atomic rename only when complete and valid; the temporary files a killed
conversion left (``.<name>.*.tmp.tif`` and ``.vrt``) are removed on the next one.
"""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from rasterio.shutil import copy as rio_copy
from rio_cogeo.cogeo import cog_validate
from rio_cogeo.profiles import cog_profiles

from ..bands import OUTPUT_BANDS, REFLECTANCE_SCALE, Quality
from ..config import available_cpus
from ..errors import IncompleteStoreError, InputError, SrlibError
from ..progress import active as progress_active
from ..progress import watch_file
from .cog_tiles import Level, SpilledTiles, StoreArray, gdal_template, write_cog
from .encoding import OVERVIEWS, TILE
from .pyramid import levels_needed
from .zarr_store import (
    build_overviews,
    cog_nodata,
    gdal_reads_blosc,
    open_zarr,
    spill_dir,
    var_encoding,
)

__all__ = ["COG_TILE", "build_overviews", "to_cog"]

#: COG tile side (the product's tile, :data:`srlib.bands.TILE`).
COG_TILE = TILE


def _store_levels(store: Path, ds: xr.Dataset) -> int:
    """Overview levels of a complete store; refuse one whose pyramid is not whole."""
    levels = levels_needed(ds.sizes["y"], ds.sizes["x"], tile=COG_TILE)
    for k in range(1, levels + 1):
        attrs = store / OVERVIEWS / str(k) / ".zattrs"
        try:
            done = json.loads(attrs.read_text()).get("srlib_complete")
        except (OSError, ValueError):
            done = False
        if not done:
            raise IncompleteStoreError(
                f"{store} lacks overview level {k}; it was written by an older srlib or "
                "interrupted: rerun srlib.to_zarr with the same input to complete it")
    return levels


def _check_gdal_reads(store: Path, bands: list[str]) -> None:
    """Refuse, before any work, a store whose codec this process's GDAL cannot decode."""
    for band in bands:
        try:
            meta = json.loads((store / band / ".zarray").read_text())
        except (OSError, ValueError):
            continue
        codec = (meta.get("compressor") or {}).get("id")
        if codec == "blosc" and not gdal_reads_blosc():
            raise InputError(
                f"{store} is compressed with Blosc, which this GDAL ({rasterio.__gdal_version__}, "
                f"rasterio {rasterio.__version__}) cannot read: rewrite the store here "
                "(srlib.to_zarr picks a codec this GDAL reads), or install rasterio>=1.4.4 "
                "(GDAL 3.10), e.g. pip install -U rasterio")


def _remove_leftovers(target: Path) -> None:
    """Delete the temporary files of an earlier, killed conversion to ``target``."""
    for pattern in (f".{target.name}.*.tmp.tif", f".{target.name}.*.tmp.vrt"):
        for leftover in target.parent.glob(pattern):
            leftover.unlink(missing_ok=True)


def _source(parent: ET.Element, tag: str, store: Path, array: str, shape: tuple[int, int],
            dtype: str) -> ET.Element:
    src = ET.SubElement(parent, tag)
    name = ET.SubElement(src, "SourceFilename", relativeToVRT="0")
    name.text = f'ZARR:"{store}":/{array}'
    ET.SubElement(src, "SourceBand").text = "1"
    if tag != "Overview":
        ET.SubElement(src, "SourceProperties", RasterXSize=str(shape[1]),
                      RasterYSize=str(shape[0]), DataType=dtype,
                      BlockXSize=str(TILE), BlockYSize=str(TILE))
        rect = {"xOff": "0", "yOff": "0", "xSize": str(shape[1]), "ySize": str(shape[0])}
        ET.SubElement(src, "SrcRect", rect)
        ET.SubElement(src, "DstRect", rect)
    return src


_GDAL_TYPES = {"int16": "Int16", "uint8": "Byte", "uint16": "UInt16", "int32": "Int32",
               "float32": "Float32"}


#: Bands stored as value x 10000 in int16: reflectance, and the NDVI and EVI derivatives.
_SCALED = (*OUTPUT_BANDS, "ndvi", "evi")
#: Colour interpretation of the bands that have one (the others are "undefined").
_COLOR = {"red": "Red", "green": "Green", "blue": "Blue"}
#: Largest side of the level the stored statistics are computed on (approximate).
_STATS_SIDE = 2048


def band_statistics(store: Path, ds: xr.Dataset, bands: list[str], levels: int
                    ) -> dict[str, dict[str, float]]:
    """Statistics of each band's valid COG values, from an overview level (approximate).

    Read from the first level whose larger side is at most 2048 px (the full resolution
    of a small product): minimum, maximum, mean, standard deviation, valid percent, and
    the 2nd and 98th percentiles (a display stretch that one bright cloud does not set).
    """
    h, w = ds.sizes["y"], ds.sizes["x"]
    k = 0
    while k < levels and max(h, w) / 2**k > _STATS_SIDE:
        k += 1
    level = ds if k == 0 else xr.open_zarr(store, group=f"{OVERVIEWS}/{k}",
                                           mask_and_scale=False, consolidated=False)
    out = {}
    for band in bands:
        enc = var_encoding(ds[band])
        values = np.asarray(level[band].values)
        if k == 0:
            values = enc.to_cog(values)
        valid = values[values != enc.cog_nodata].astype(np.float64)
        if valid.size == 0:
            out[band] = {"valid_percent": 0.0}
            continue
        p2, p98 = np.percentile(valid, [2, 98])
        out[band] = {"minimum": float(valid.min()), "maximum": float(valid.max()),
                     "mean": float(valid.mean()), "stddev": float(valid.std()),
                     "valid_percent": 100.0 * valid.size / values.size,
                     "p2": float(p2), "p98": float(p98)}
    return out


def _metadata(parent: ET.Element, items: dict[str, object], domain: str | None = None) -> None:
    md = ET.SubElement(parent, "Metadata", {"domain": domain} if domain else {})
    for key, value in items.items():
        ET.SubElement(md, "MDI", key=key).text = str(value)


def _band_metadata(band: str, enc: object, stats: dict[str, float]) -> dict[str, object]:
    """Return what a band declares in the COG: statistics, resampling, quality codes."""
    items: dict[str, object] = {}
    if stats.get("valid_percent"):
        items.update({f"STATISTICS_{k.upper()}": repr(v) for k, v in stats.items()
                      if k in ("minimum", "maximum", "mean", "stddev")})
        items["STATISTICS_APPROXIMATE"] = "YES"
        if "p2" in stats:
            items.update(STATISTICS_P2=repr(stats["p2"]), STATISTICS_P98=repr(stats["p98"]))
    items["STATISTICS_VALID_PERCENT"] = repr(stats.get("valid_percent", 0.0))
    mode = getattr(enc, "reducer", "mean") == "mode"
    items["OVERVIEW_RESAMPLING"] = "MODE" if mode else "AVERAGE"
    if band == "quality":
        codes = [q for q in Quality if q != Quality.NODATA]
        items["flag_values"] = " ".join(str(int(q)) for q in codes)
        items["flag_meanings"] = " ".join(q.name.lower() for q in codes)
        items.update({f"CLASS_{int(q)}": q.name.lower() for q in codes})
    return items


def _vrt(store: Path, ds: xr.Dataset, bands: list[str], levels: int, *,
         resampling: str | None = None, template: bool = False) -> str:
    """Return the VRT that GDAL's COG driver copies.

    It holds the store's arrays, what each band declares, and the store's overview levels
    (none when GDAL makes them with ``resampling``). ``template``: a 1 x 1 raster with the
    same declarations and no sources, whose COG gives srlib's writer its tags.
    """
    h, w = (1, 1) if template else (ds.sizes["y"], ds.sizes["x"])
    nodata = {cog_nodata(ds[b]) for b in bands}
    if len(nodata) != 1:
        raise SrlibError(f"bands {bands} have different nodata values {nodata}; a GeoTIFF "
                         "holds one: write them to separate COGs")
    (nodata_value,) = nodata
    t = ds.rio.transform()
    stats = band_statistics(store, ds, bands, levels)
    root = ET.Element("VRTDataset", rasterXSize=str(w), rasterYSize=str(h))
    ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = ds.rio.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    _metadata(root, {"OVERVIEW_RESAMPLING": resampling or "reflectance AVERAGE of the valid "
                                                          "pixels, quality MODE of the codes"})
    for i, band in enumerate(bands, start=1):
        enc = var_encoding(ds[band])
        gdal_type = _GDAL_TYPES[enc.cog_dtype]
        vb = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(i),
                           blockXSize=str(COG_TILE), blockYSize=str(COG_TILE))
        ET.SubElement(vb, "Description").text = band
        declared = _band_metadata(band, enc, stats[band])
        if resampling:
            declared["OVERVIEW_RESAMPLING"] = resampling
        _metadata(vb, declared)
        ET.SubElement(vb, "NoDataValue").text = str(nodata_value)
        ET.SubElement(vb, "ColorInterp").text = _COLOR.get(band, "Undefined")
        if enc.cog_dtype == "int16" and band in _SCALED:  # counts -> reflectance (index)
            ET.SubElement(vb, "UnitType").text = "1"
            ET.SubElement(vb, "Offset").text = "0"
            ET.SubElement(vb, "Scale").text = repr(REFLECTANCE_SCALE)
        if template:
            continue
        if enc.lut is not None:  # stored values differ from the COG's (quality's nodata)
            src = _source(vb, "ComplexSource", store, band, (h, w),
                          _GDAL_TYPES[str(ds[band].dtype)])
            ET.SubElement(src, "LUT").text = ",".join(f"{a}:{b}" for a, b in enc.lut)
        else:
            _source(vb, "SimpleSource", store, band, (h, w), gdal_type)
        for k in range(1, 0 if resampling else levels + 1):
            _source(vb, "Overview", store, f"{OVERVIEWS}/{k}/{band}", (0, 0), gdal_type)
    return ET.tostring(root, encoding="unicode")


def _stored_bytes(store: Path) -> int:
    """Bytes of a store's chunk files."""
    return sum(f.stat().st_size for f in store.rglob("*") if f.is_file())


_YES_NO = ("YES", "NO")
_RESAMPLINGS = ("NEAREST", "AVERAGE", "BILINEAR", "CUBIC", "CUBICSPLINE", "LANCZOS", "MODE",
                "RMS")
#: The GDAL COG driver's creation options a user may set, and the values each takes
#: (a type, or the allowed words).
COG_OPTIONS: dict[str, type | tuple[str, ...]] = {
    "BLOCKSIZE": int, "LEVEL": int, "QUALITY": int, "OVERVIEW_QUALITY": int,
    "OVERVIEW_COUNT": int, "MAX_Z_ERROR": float, "NUM_THREADS": int,
    "COMPRESS": ("NONE", "LZW", "DEFLATE", "ZSTD", "LZMA", "PACKBITS", "JPEG", "WEBP", "LERC",
                 "LERC_DEFLATE", "LERC_ZSTD", "JXL"),
    "OVERVIEW_COMPRESS": ("AUTO", "NONE", "LZW", "DEFLATE", "ZSTD", "LZMA", "PACKBITS",
                          "JPEG", "WEBP", "LERC", "LERC_DEFLATE", "LERC_ZSTD", "JXL"),
    "PREDICTOR": ("YES", "NO", "STANDARD", "FLOATING_POINT"),
    "OVERVIEW_PREDICTOR": ("YES", "NO", "STANDARD", "FLOATING_POINT"),
    "BIGTIFF": ("YES", "NO", "IF_NEEDED", "IF_SAFER"),
    "SPARSE_OK": ("TRUE", "FALSE", *_YES_NO), "STATISTICS": ("AUTO", *_YES_NO),
    "GEOTIFF_VERSION": ("AUTO", "1.0", "1.1"),
    "RESAMPLING": _RESAMPLINGS, "OVERVIEW_RESAMPLING": _RESAMPLINGS,
}


def check_creation_options(options: dict[str, Any]) -> dict[str, str]:
    """Return COG creation options upper-cased and checked (:data:`COG_OPTIONS`).

    Raises
    ------
    InputError
        An unknown option, or a value the option does not take (named, with the choices).
    """
    out = {}
    for name, value in options.items():
        key, text = str(name).upper(), str(value).strip()
        kind = COG_OPTIONS.get(key)
        if kind is None:
            raise InputError(f"unknown COG creation option {key}={text}; srlib takes "
                             f"{', '.join(sorted(COG_OPTIONS))}")
        if isinstance(kind, tuple):
            ok = text.upper() in kind or (key == "NUM_THREADS" and text.upper() == "ALL_CPUS")
            text = text.upper()
        else:
            try:
                ok = kind(text) > 0 or (key == "MAX_Z_ERROR" and kind(text) == 0)
            except ValueError:
                ok = key == "NUM_THREADS" and text.upper() == "ALL_CPUS"
                text = text.upper() if ok else text
        if key == "BLOCKSIZE" and ok and (int(text) % 16 or int(text) > 4096):
            ok = False
        if not ok:
            choices = (", ".join(kind) if isinstance(kind, tuple) else
                       "a positive multiple of 16 up to 4096" if key == "BLOCKSIZE" else
                       f"a positive {kind.__name__}" + (" or ALL_CPUS"
                                                        if key == "NUM_THREADS" else ""))
            raise InputError(f"COG creation option {key}={text!r} is not valid; {key} takes "
                             f"{choices}")
        out[key] = text
    return out


_ENGINES = ("auto", "srlib", "gdal")


def _threads(threads: int | str) -> int:
    """Threads for ``threads`` ("ALL_CPUS": the CPUs this process may use)."""
    if str(threads).upper() == "ALL_CPUS":
        return available_cpus()
    try:
        count = int(threads)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise InputError(f"threads={threads!r}: give a positive number or 'ALL_CPUS' (the "
                         "CPUs this process may use)")
    return count


def _is_big(bigtiff: str, raw_bytes: int) -> bool:
    """Whether to write BigTIFF, GDAL's way: IF_SAFER from 2 GB raw, IF_NEEDED from 4."""
    mode = bigtiff.upper()
    if mode in ("YES", "NO"):
        return mode == "YES"
    return raw_bytes > (2**31 if mode == "IF_SAFER" else 2**32 - 2**26)


def _levels(store: Path, ds: xr.Dataset, bands: list[str], levels: int) -> list[Level]:
    """Return the full resolution and each overview level, as the writer reads them."""
    encs = [var_encoding(ds[b]) for b in bands]
    ahead = SpilledTiles(spill_dir(store), str(ds.attrs.get("srlib_store_id", "")), bands,
                         COG_TILE)
    out = [Level([StoreArray(store / b) for b in bands], [e.to_cog for e in encs],
                 ahead if len(ahead) else None)]
    for k in range(1, levels + 1):
        out.append(Level([StoreArray(store / OVERVIEWS / str(k) / b) for b in bands],
                         [np.asarray] * len(bands)))
    return out


def to_cog(
    zarr_path: str | os.PathLike,
    cog_path: str | os.PathLike,
    *,
    threads: int | str = "ALL_CPUS",
    bigtiff: str = "IF_SAFER",
    overview_resampling: str = "average",
    engine: str = "auto",
    **options: Any,
) -> Path:
    """Convert a complete srlib Zarr store into a validated Cloud-Optimized GeoTIFF.

    Five int16 bands (red, green, blue, nir, quality; the quality band's code 0 "nodata"
    is written as -32768 so that one nodata value covers every band), 512 x 512 tiles,
    LZW with horizontal predictor, internal overviews down to 512 px or less (reflectance
    averaged over valid pixels, quality by majority; see the module docstring), nodata
    -32768 and band descriptions set.

    Parameters
    ----------
    zarr_path : str or PathLike
        Store written by :func:`srlib.to_zarr` (refused if incomplete).
    cog_path : str or PathLike
        Target file. Written as a hidden temporary file beside it and renamed into place
        only when complete and ``cog_validate`` passes: a crash never leaves a file here.
    threads : int or "ALL_CPUS"
        Threads that read, predict and compress tiles. ``ALL_CPUS``: the CPUs this
        process may use (its affinity, e.g. ``taskset`` or SLURM's ``--cpus-per-task``,
        and its cgroup quota), not the machine's.
    bigtiff : str
        GDAL ``BIGTIFF`` option.
    overview_resampling : {"average", "nearest", "mode"}
        ``average``: the store's pyramid (reflectance averaged over valid pixels, quality
        by majority). ``nearest`` or ``mode``: GDAL builds the overviews with that one
        method for every band (both keep quality codes whole); others are refused, as they
        would average the quality codes.
    engine : {"auto", "srlib", "gdal"}
        ``srlib``: srlib's tile-parallel writer (:mod:`srlib.product.cog_tiles`), which
        uses every core. ``gdal``: GDAL's COG driver over a VRT of the store, which
        takes any creation option but copies from one thread. ``auto`` (default):
        srlib's writer for the standard profile, GDAL's when ``overview_resampling`` or
        a creation option other than ``NUM_THREADS``/``BIGTIFF`` asks for it. Both give
        the same pixels, overviews and metadata.
    **options
        Further GDAL COG creation options (e.g. ``level=9``).

    Returns
    -------
    Path
    """
    if overview_resampling not in ("average", "nearest", "mode"):
        raise InputError(f"overview_resampling={overview_resampling!r}: use 'average' (srlib's "
                         "pyramid), 'nearest' or 'mode'; others would average quality codes")
    if engine not in _ENGINES:
        raise InputError(f"engine={engine!r}: use one of {', '.join(_ENGINES)}")
    options = check_creation_options(options)
    threads = options.pop("NUM_THREADS", threads)
    bigtiff = options.pop("BIGTIFF", bigtiff)
    workers = _threads(threads)  # a bad count fails here, before any work
    needs_gdal = sorted(options)  # what srlib's writer does not take
    if overview_resampling != "average":
        needs_gdal.append(f"overview_resampling={overview_resampling}")
    if engine == "srlib" and needs_gdal:
        raise InputError(f"srlib's COG writer does not take {', '.join(needs_gdal)}: pass "
                         "engine='gdal' (or 'auto')")
    use_gdal = engine == "gdal" or bool(needs_gdal)
    store = Path(zarr_path).resolve()
    target = Path(cog_path)
    ds = open_zarr(store)
    bands = [str(b) for b in ds.data_vars if ds[b].dims == ("y", "x")]
    if ds.rio.crs is None:
        raise SrlibError(f"{store} has no CRS; it was not written by srlib.to_zarr")
    levels = _store_levels(store, ds)
    if use_gdal:
        _check_gdal_reads(store, bands)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp.tif",
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    vrt = tmp.with_suffix(".vrt")
    profile = cog_profiles.get("lzw")
    creation = {
        "COMPRESS": profile["compress"].upper(),
        "PREDICTOR": "YES",
        "BLOCKSIZE": str(profile["blockxsize"]),
        "NUM_THREADS": str(threads),
        "BIGTIFF": bigtiff,
        "OVERVIEWS": "FORCE_USE_EXISTING",
        **options,
    }
    resampling = None
    if overview_resampling != "average":  # GDAL's overviews, not the store's
        resampling = overview_resampling.upper()
        creation.update(OVERVIEWS="IGNORE_EXISTING", OVERVIEW_RESAMPLING=resampling)
    try:
        # measured: a 15.6 GB COG from a 17 GB store
        expected = 0.92 * _stored_bytes(store) if progress_active() else 0.0
        with watch_file("cog", lambda: tmp, expected):
            if use_gdal:
                vrt.write_text(_vrt(store, ds, bands, levels, resampling=resampling))
                with rasterio.Env(GDAL_NUM_THREADS=str(threads), GDAL_CACHEMAX=512):
                    rio_copy(str(vrt), str(tmp), driver="COG", **creation)
            else:
                _write_tiles(store, ds, bands, levels, tmp, creation, workers)
        valid, errors, _warnings = cog_validate(str(tmp), quiet=True)
        if not valid:
            raise SrlibError(f"{'GDAL' if use_gdal else 'srlib'} wrote an invalid COG for "
                             f"{store}: {errors}")
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        vrt.unlink(missing_ok=True)
    return target


def _write_tiles(store: Path, ds: xr.Dataset, bands: list[str], levels: int, tmp: Path,
                 creation: dict[str, str], threads: int) -> None:
    """Write the COG with srlib's tile-parallel writer (:mod:`.cog_tiles`)."""
    dtypes = {var_encoding(ds[b]).cog_dtype for b in bands}
    if len(dtypes) != 1:
        raise SrlibError(f"bands {bands} have different COG dtypes {dtypes}; a GeoTIFF holds "
                         "one: write them to separate COGs")
    (dtype,) = dtypes
    stack = _levels(store, ds, bands, levels)
    raw = sum(np.prod(level.shape) for level in stack) * len(bands) * np.dtype(dtype).itemsize
    big = _is_big(creation["BIGTIFF"], int(raw))
    ghost, tags = gdal_template(_vrt(store, ds, bands, levels, template=True), creation, big)
    write_cog(tmp, stack, ghost=ghost, tags=tags, big=big, tile=COG_TILE,
              fill=cog_nodata(ds[bands[0]]), dtype=dtype, threads=threads)
