"""Grid arithmetic: input validation of georeferencing and the zoomed output grid."""

from __future__ import annotations

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from ..errors import InputError

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
    _check_measurable(obj)
    try:
        transform = obj.rio.transform(recalc=True)
    except Exception as err:
        raise InputError(f"cannot derive the grid's transform: {err}; write it with "
                         "ds.rio.write_transform(...)") from err
    if transform.b != 0 or transform.d != 0:
        raise InputError("the input grid is rotated or sheared; reproject it to a north-up grid")
    _check_regular(obj, transform)
    return transform, crs


def _check_measurable(obj: xr.DataArray | xr.Dataset) -> None:
    """Refuse a grid one pixel wide or tall whose transform is not written down.

    Its pixel size cannot be read from a single coordinate, and rioxarray then reports
    a 1 m grid at the origin (the error named "a regular 1 grid off by 4e+05").
    """
    short = [d for d in (obj.rio.x_dim, obj.rio.y_dim) if obj.sizes.get(d, 2) < 2]
    if not short:
        return
    mapping = obj.rio.grid_mapping
    stored = mapping in obj.coords and obj[mapping].attrs.get("GeoTransform")
    if not stored:
        raise InputError(
            f"the input is 1 pixel along {' and '.join(short)}, so its pixel size cannot be "
            "read from the coordinates: take at least 2 pixels, or write the grid first "
            "(ds.rio.write_transform(transform) before cropping)")


def _check_regular(obj: xr.DataArray | xr.Dataset, transform: Affine) -> None:
    """Refuse x/y coordinates that are not finite and evenly spaced at the transform's step."""
    for dim, step, origin in ((obj.rio.x_dim, transform.a, transform.c),
                              (obj.rio.y_dim, transform.e, transform.f)):
        if dim not in obj.coords:
            continue
        values = np.asarray(obj[dim].values, dtype=np.float64)
        if values.ndim != 1 or not np.isfinite(values).all():
            raise InputError(f"the {dim} coordinates are not finite 1-D values; the grid "
                             "cannot be georeferenced: fix them or rebuild the grid with "
                             "ds.rio.write_transform(...)")
        if not np.isfinite(step) or step == 0:
            raise InputError(f"the {dim} pixel size is {step}; fix the {dim} coordinates")
        expect = origin + (np.arange(values.size) + 0.5) * step
        worst = float(np.abs(values - expect).max()) if values.size else 0.0
        if worst > 1e-3 * abs(step):
            raise InputError(
                f"the {dim} coordinates are not evenly spaced (off a regular {abs(step):g} "
                f"grid by up to {worst:.3g} in CRS units); super-resolution needs a regular "
                "grid: resample the scene onto one (e.g. ds.rio.reproject(crs, "
                "resolution=...)) first")


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
