"""Derivative products on the 1 m grid, computed lazily from a product's Zarr store.

- ``NDVI`` = (NIR - red) / (NIR + red), int16 x 10000, nodata -32768;
- ``EVI`` = 2.5 (NIR - red) / (NIR + 6 red - 7.5 blue + 1) on reflectance (the MODIS
  coefficients: G = 2.5, C1 = 6, C2 = 7.5, L = 1), clipped to [-1, 1], int16 x 10000,
  nodata -32768;
- ``RGB``: 8-bit visual, a linear stretch of reflectance 0-0.3 onto 1-255 (0 is nodata),
  3 bands (red, green, blue);
- ``NIR``: the NIR band, int16 reflectance x 10000, nodata -32768.

Pixels that are nodata in any band used (or whose denominator is 0) are nodata. Each
derivative is streamed to its own Zarr store and converted with :func:`srlib.to_cog`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from ..bands import OUTPUT_NODATA
from .cog import to_cog
from .zarr_store import open_zarr, to_zarr

__all__ = ["DERIVATIVES", "derivative_datasets", "write_derivatives"]

DERIVATIVES = ("NDVI", "EVI", "RGB", "NIR")
RGB_MAX_REFLECTANCE = 0.3


def _var(data: xr.DataArray, name: str, nodata: int, long_name: str) -> xr.DataArray:
    out = data.rename(name)
    out.attrs = {"long_name": long_name, "nodata": nodata, "_FillValue": nodata}
    return out


def _index(num: xr.DataArray, den: xr.DataArray, valid: xr.DataArray) -> xr.DataArray:
    ok = valid & (den != 0)
    value = (num / den.where(ok, 1.0)).clip(-1.0, 1.0) * 10000
    return xr.where(ok, np.rint(value), OUTPUT_NODATA).astype(np.int16)


def derivative_datasets(zarr_path: str | os.PathLike) -> dict[str, xr.Dataset]:
    """Lazy derivative Datasets (see the module docstring) of a complete product store."""
    ds = open_zarr(zarr_path)
    refl = {b: ds[b].astype(np.float32) * np.float32(1e-4) for b in ("red", "green", "blue",
                                                                     "nir")}
    valid = {b: ds[b] != OUTPUT_NODATA for b in refl}
    red, blue, nir = refl["red"], refl["blue"], refl["nir"]
    ndvi = _index(nir - red, nir + red, valid["nir"] & valid["red"])
    evi = _index(2.5 * (nir - red), nir + 6 * red - 7.5 * blue + 1,
                 valid["nir"] & valid["red"] & valid["blue"])
    rgb = {}
    for band in ("red", "green", "blue"):
        scaled = np.rint(refl[band] / RGB_MAX_REFLECTANCE * 254 + 1).clip(1, 255)
        rgb[band] = _var(xr.where(valid[band], scaled, 0).astype(np.uint8), band, 0,
                         f"{band}, 8-bit visual (reflectance 0-{RGB_MAX_REFLECTANCE})")
    out = {
        "NDVI": {"ndvi": _var(ndvi, "ndvi", OUTPUT_NODATA, "NDVI x 10000")},
        "EVI": {"evi": _var(evi, "evi", OUTPUT_NODATA, "EVI x 10000")},
        "RGB": rgb,
        "NIR": {"nir": _var(ds["nir"], "nir", OUTPUT_NODATA, "nir reflectance x 10000")},
    }
    grid = ds.rio.crs, ds.rio.transform()
    result = {}
    for name, variables in out.items():
        d = xr.Dataset(variables).chunk({"y": 2560, "x": 2560})
        result[name] = d.rio.write_crs(grid[0]).rio.write_transform(grid[1])
    return result


def write_derivatives(zarr_path: str | os.PathLike, cog_path: str | os.PathLike) -> list[Path]:
    """Write ``<stem>_{NDVI,EVI,RGB,NIR}.tif`` beside ``cog_path``; return their paths."""
    cog_path = Path(cog_path)
    paths = []
    for name, ds in derivative_datasets(zarr_path).items():
        store = Path(zarr_path).with_name(f"{Path(zarr_path).stem}_{name}.zarr")
        to_zarr(ds, store)
        paths.append(to_cog(store, cog_path.with_name(f"{cog_path.stem}_{name}.tif")))
    return paths
