"""The bundled real Sentinel-2 L2A sample scenes (see ``srlib/data/ATTRIBUTION.md``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import rioxarray
import xarray as xr
from odc.geo.xr import xr_reproject

from .bands import S2_FILE_BANDS
from .errors import InputError

__all__ = ["SAMPLES", "sample_scene"]

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

_METADATA = {
    "29RKH": {
        "id": "S2A_29RKH_20200219_0_L2A",
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


def sample_scene(name: str = "29RKH", *, chunks: int | dict[str, int] | None = None) -> xr.Dataset:
    """Return a bundled real Sentinel-2 L2A scene as a lazy, dask-backed Dataset.

    Variables are named by Earth Search v1 asset keys (``blue, green, red, rededge1,
    rededge2, rededge3, nir, nir08, swir16, swir22``, plus ``scl`` where the source has one),
    all on the grid of the finest bands. Bands at half that resolution (the 20 m group)
    are resampled **bilinearly** while loading (odc-geo ``xr_reproject``), ``scl`` by
    **nearest** neighbour. Values are uint16 DN with nodata 0; ``scale_factor`` and
    ``add_offset`` attributes give reflectance = DN * scale_factor + add_offset.

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
    size = chunks if chunks is not None else 512
    chunk_spec = {"y": size, "x": size} if isinstance(size, int) else dict(size)

    files = {S2_FILE_BANDS[p.stem]: p for p in sorted(folder.glob("*.tif"))}
    opened = {
        band: rioxarray.open_rasterio(path, chunks=chunk_spec, mask_and_scale=False)
        .squeeze("band", drop=True)
        .rename(band)
        for band, path in files.items()
    }
    finest = min(opened.values(), key=lambda a: abs(a.rio.resolution()[0]))
    geobox = finest.odc.geobox
    variables = {}
    for band in [b for b in S2_FILE_BANDS.values() if b in opened]:
        arr = opened[band]
        if arr.shape != finest.shape:
            method = "nearest" if band == "scl" else "bilinear"
            arr = xr_reproject(arr, geobox, resampling=method, dst_nodata=0)
            arr = arr.chunk(chunk_spec)
        arr = arr.assign_coords(y=finest.y, x=finest.x)
        attrs = {"nodata": 0}
        if band != "scl":
            attrs.update(scale_factor=1e-4, add_offset=0.0, units="1")
        else:
            attrs.update(long_name="Scene Classification Layer")
        arr = arr.drop_vars([c for c in arr.coords if c not in ("y", "x")])
        variables[band] = arr.astype(np.uint8 if band == "scl" else np.uint16).assign_attrs(attrs)
    ds = xr.Dataset(variables)
    ds = ds.rio.write_crs(finest.rio.crs).rio.write_transform(finest.rio.transform())
    for band in ds.data_vars:
        ds[band] = ds[band].rio.write_nodata(0, encoded=False)
    meta = dict(_METADATA[name])
    item_path = folder / "item.json"
    if item_path.exists():
        item = json.loads(item_path.read_text())
        meta["processing_baseline"] = item["properties"]["s2:processing_baseline"]
    ds.attrs.update(meta, source=SAMPLES[name][1])
    return ds
