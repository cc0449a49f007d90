"""The bundled real Sentinel-2 L2A sample scenes (see ``srlib/data/ATTRIBUTION.md``)."""

from __future__ import annotations

import json
import os
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from dask.array.core import normalize_chunks
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..bands import S2_FILE_BANDS
from ..errors import InputError

__all__ = ["SAMPLES", "sample_scene", "scene_folder"]

#: Bundled samples: name -> (folder, description).
SAMPLES: dict[str, tuple[str, str]] = {
    "29RKH": (
        "S2A_29RKH_20200219",
        "S2A L2A tile 29RKH, 2020-02-19, whole tile decimated 10x (1098 x 1098 px at 100 m), "
        "with SCL",
    ),
    "bigearthnet": (
        "bigearthnet_87_48",
        "BigEarthNet L2A patch, 2017-06-13, native 120 x 120 px at 10 m, no SCL",
    ),
}

_METADATA: dict[str, dict[str, Any]] = {
    "29RKH": {
        "id": "S2A_29RKH_20200219_0_L2A",
        "items": ["S2A_29RKH_20200219_0_L2A"],
        "item_hrefs": ["https://earth-search.aws.element84.com/v1/collections/"
                       "sentinel-2-l2a/items/S2A_29RKH_20200219_0_L2A"],
        "datetime": "2020-02-19T11:34:25.405000",
        "processing_baseline": "02.14",
    },
    "bigearthnet": {
        "id": "S2A_MSIL2A_20170613T101031_87_48",
        "datetime": "2017-06-13T10:10:31",
        "processing_baseline": "02.05",
    },
}


def _data_dir(folder: str) -> Path:
    return Path(str(resources.files("srlib") / "data" / folder))


def _read(path: str, shape: tuple[int, int], resampling: Resampling,
          y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Read ``[y0:y1, x0:x1]`` of one band on the finest grid (``shape``).

    GDAL resamples a coarser band on read, from the fractional window of the band's own
    pixels that covers the chunk: the same values as a read of the whole band, at any
    chunking (checked on every band of both samples, chunks of 100-512 px).
    """
    src = _opened(path)
    fy, fx = src.height / shape[0], src.width / shape[1]
    window = Window(x0 * fx, y0 * fy, (x1 - x0) * fx, (y1 - y0) * fy)
    return src.read(1, window=window, out_shape=(y1 - y0, x1 - x0), resampling=resampling)


_handles = threading.local()


def _opened(path: str) -> rasterio.DatasetReader:
    """Return the band file, opened once per thread: an open costs more than a chunk's read.

    Kept per thread (a GDAL dataset is not for two threads at once) and per file
    version, so a file rewritten in place is opened again; the few handles (one per
    band file and thread) close with their thread.
    """
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    cache: dict[tuple[str, int, int], rasterio.DatasetReader] = \
        _handles.__dict__.setdefault("open", {})
    src = cache.get(key)
    if src is None:
        for old in [k for k in cache if k[0] == path]:
            cache.pop(old).close()
        src = cache[key] = rasterio.open(path)
    return src


def _band(path: str, shape: tuple[int, int], resampling: Resampling, dtype: type,
          chunks: tuple[int, int], name: str) -> da.Array:
    """One band as a dask array whose every chunk is read from its own window.

    Each chunk reads only its window: a whole-band read per chunk (or per dask compute,
    as each wave of :func:`srlib.to_zarr` is) would read the band again and again.
    """
    normal = normalize_chunks(chunks, shape, dtype=dtype)
    ys, xs = (np.cumsum((0, *c)).tolist() for c in normal)
    name = f"{name}-{tokenize(path, shape, resampling, normal)}"
    layer: dict[Any, tuple] = {
        (name, iy, ix): (_read, path, shape, resampling, ys[iy], ys[iy + 1], xs[ix], xs[ix + 1])
        for iy in range(len(normal[0])) for ix in range(len(normal[1]))}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    return da.Array(graph, name, normal, dtype=dtype)


def sample_scene(
    name: str = "29RKH", *, chunks: int | dict[str, int] | None = None
) -> xr.Dataset:
    """Return a bundled real Sentinel-2 L2A scene as a lazy, dask-backed Dataset.

    Variables are named by Earth Search v1 asset keys (``blue, green, red, rededge1,
    rededge2, rededge3, nir, nir08, swir16, swir22``, plus ``scl`` where the source has one),
    all on the grid of the finest bands. Bands at half that resolution (the 20 m group)
    are resampled **bilinearly** while loading (GDAL's resampling on read, pixel centres
    aligned), ``scl`` by **nearest** neighbour. Values are uint16 DN with nodata 0;
    ``scale_factor`` and ``add_offset`` attributes give
    reflectance = DN * scale_factor + add_offset.

    Parameters
    ----------
    name : {"29RKH", "bigearthnet"}
        ``"29RKH"`` (default): tile 29RKH of 2020-02-19, decimated 10x by its publisher
        (1098 x 1098 px at 100 m, with SCL); real pixels, not the real ground sampling.
        ``"bigearthnet"``: a native 10 m patch of 120 x 120 px without SCL.
    chunks : int or dict, optional
        Dask chunk size in pixels (default 512).

    Returns
    -------
    xarray.Dataset
        Dims ``(y, x)``, CRS and transform written with rioxarray.

    Examples
    --------
    >>> ds = srlib.sample_scene()
    >>> ds.red.rio.resolution()
    (100.0, -100.0)
    """
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}")
    folder = _data_dir(SAMPLES[name][0])
    ds = scene_folder(folder, chunks=chunks, name=name)
    meta = dict(_METADATA[name])
    item_path = folder / "item.json"
    if item_path.exists():
        item = json.loads(item_path.read_text())
        meta["processing_baseline"] = item["properties"]["s2:processing_baseline"]
    ds.attrs.clear()  # the sample's own description, in its order
    ds.attrs.update(meta, source=SAMPLES[name][1])
    return ds


def scene_folder(folder: str | os.PathLike, *, chunks: int | dict[str, int] | None = None,
                 name: str | None = None) -> xr.Dataset:
    """Return a local scene: a folder of one GeoTIFF per band, as a lazy Dataset.

    The files are named by Sentinel-2 band (``B02.tif`` ... ``B12.tif``, ``SCL.tif``), as
    in the bundled samples and in an L2A product's ``IMG_DATA``; the bands are put on
    the grid of the blue band as :func:`sample_scene` describes. ``name`` names the dask
    arrays (default: the folder's name).

    Raises
    ------
    InputError
        The folder has no blue band (``B02.tif``).
    """
    folder = Path(folder)
    files = {S2_FILE_BANDS[p.stem]: p for p in sorted(folder.glob("*.tif"))
             if p.stem in S2_FILE_BANDS}
    if "blue" not in files:
        raise InputError(f"{folder} holds no B02.tif: a scene folder has one GeoTIFF per "
                         f"band, named {sorted(S2_FILE_BANDS)} (.tif)")
    name = name or folder.name
    size = chunks if chunks is not None else 512
    chunk_spec = {"y": size, "x": size} if isinstance(size, int) else dict(size)

    with rasterio.open(files["blue"]) as ref:
        shape, transform, crs = ref.shape, ref.transform, ref.crs
    variables = {}
    for band in [b for b in S2_FILE_BANDS.values() if b in files]:
        dtype = np.uint8 if band == "scl" else np.uint16
        method = Resampling.nearest if band == "scl" else Resampling.bilinear
        data = _band(str(files[band]), shape, method, dtype,
                     (chunk_spec.get("y", 512), chunk_spec.get("x", 512)),
                     f"srlib-sample-{name}-{band}")
        attrs: dict = {"nodata": 0}
        if band != "scl":
            attrs.update(scale_factor=1e-4, add_offset=0.0, units="1")
        else:
            attrs.update(long_name="Scene Classification Layer")
        variables[band] = xr.DataArray(data, dims=("y", "x"), attrs=attrs)
    coords = {
        "y": transform.f + (np.arange(shape[0]) + 0.5) * transform.e,
        "x": transform.c + (np.arange(shape[1]) + 0.5) * transform.a,
    }
    ds = xr.Dataset(variables, coords=coords)
    ds = ds.rio.write_crs(crs).rio.write_transform(transform)
    for band in ds.data_vars:
        ds[band] = ds[band].rio.write_nodata(0, encoded=False)
    item_path = folder / "item.json"
    if item_path.exists():
        item = json.loads(item_path.read_text())
        ds.attrs["processing_baseline"] = item["properties"]["s2:processing_baseline"]
    return ds
