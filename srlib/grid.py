"""Grid arithmetic: input validation of georeferencing and the zoomed output grid."""

from __future__ import annotations

import numpy as np
import xarray as xr
from affine import Affine

from .errors import InputError

__all__ = ["check_grid", "zoom_coords", "zoom_transform"]


def check_grid(obj: xr.DataArray | xr.Dataset) -> tuple[Affine, object]:
    """Return ``(transform, crs)`` of a projected, north-up grid, or raise InputError."""
    crs = obj.rio.crs
    if crs is None:
        raise InputError("the input has no CRS; set it with ds.rio.write_crs('EPSG:326NN')")
    if not crs.is_projected:
        raise InputError(
            f"the input CRS {crs} is not projected; super-resolution needs a metric grid: "
            "reproject with ds.rio.reproject('EPSG:326NN') (the scene's UTM zone)"
        )
    try:
        transform = obj.rio.transform(recalc=True)
    except Exception as err:
        raise InputError(f"cannot derive the grid's transform: {err}; write it with "
                         "ds.rio.write_transform(...)") from err
    if transform.b != 0 or transform.d != 0:
        raise InputError("the input grid is rotated or sheared; reproject it to a north-up grid")
    return transform, crs


def zoom_transform(transform: Affine, scale: int) -> Affine:
    """Return the transform with the same origin and pixels ``scale`` times smaller."""
    return Affine(transform.a / scale, 0.0, transform.c, 0.0, transform.e / scale, transform.f)


def zoom_coords(transform: Affine, shape: tuple[int, int], scale: int) -> dict[str, np.ndarray]:
    """Pixel-centre ``y``/``x`` coordinates of the grid zoomed by ``scale``."""
    t = zoom_transform(transform, scale)
    ny, nx = shape[0] * scale, shape[1] * scale
    return {
        "y": t.f + (np.arange(ny) + 0.5) * t.e,
        "x": t.c + (np.arange(nx) + 0.5) * t.a,
    }
