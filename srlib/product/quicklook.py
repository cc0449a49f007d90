"""Quicklooks: input and output side by side, as RGB and NDVI PNGs, and a plot helper.

Both panels are drawn at the same size (at most ``max_size`` pixels wide each): the
input from the scene (nearest neighbour), the output from the product's overview
closest to that size. RGB is a linear stretch of reflectance 0-0.3; NDVI maps
[-0.2, 0.9] from brown to green; nodata is black.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from rasterio.enums import Resampling

from ..bands import OUTPUT_NODATA

__all__ = ["ndvi_colors", "plot_side_by_side", "quicklook_arrays", "write_quicklooks"]


def _rgb8(red: np.ndarray, green: np.ndarray, blue: np.ndarray,
          valid: np.ndarray) -> np.ndarray:
    stack = np.stack([red, green, blue]).astype(np.float32) * 1e-4
    out = np.clip(stack / 0.3 * 254 + 1, 1, 255).astype(np.uint8)
    out[:, ~valid] = 0
    return out


def ndvi_colors(ndvi: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Map NDVI to an 8-bit brown-to-green RGB image (nodata black)."""
    t = np.clip((ndvi + 0.2) / 1.1, 0, 1)
    low, high = np.array([140, 90, 40], np.float32), np.array([20, 140, 30], np.float32)
    rgb = (low[:, None, None] * (1 - t) + high[:, None, None] * t).astype(np.uint8)
    rgb[:, ~valid] = 0
    return rgb


def _ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    red, nir = red.astype(np.float32), nir.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nir + red != 0, (nir - red) / (nir + red), 0)


def quicklook_arrays(ds: xr.Dataset, cog_path: str | os.PathLike, *,
                     max_size: int = 1024) -> dict[str, np.ndarray]:
    """RGB and NDVI panels (input | output) as ``(3, h, 2 w)`` uint8 arrays."""
    with rasterio.open(cog_path) as src:
        scale = max(src.width, src.height) / max_size
        h, w = max(1, round(src.height / scale)), max(1, round(src.width / scale))
        out = src.read([1, 2, 3, 4], out_shape=(4, h, w), resampling=Resampling.nearest)
    valid_out = (out != OUTPUT_NODATA).all(axis=0)
    ys = np.linspace(0, ds.sizes["y"] - 1, h).round().astype(int)
    xs = np.linspace(0, ds.sizes["x"] - 1, w).round().astype(int)
    small = ds[["red", "green", "blue", "nir"]].isel(y=xr.DataArray(ys, dims="y"),
                                                     x=xr.DataArray(xs, dims="x")).compute()
    offset = {b: float(small[b].attrs.get("add_offset", 0.0)) * 1e4 for b in small.data_vars}
    inp = [small[b].values.astype(np.float32) + offset[b] for b in ("red", "green", "blue",
                                                                    "nir")]
    valid_in = (small["red"].values != small["red"].attrs.get("nodata", 0))
    rgb = np.concatenate([_rgb8(*inp[:3], valid_in), _rgb8(*out[:3], valid_out)], axis=2)
    ndvi = np.concatenate([ndvi_colors(_ndvi(inp[0], inp[3]), valid_in),
                           ndvi_colors(_ndvi(out[0], out[3]), valid_out)], axis=2)
    return {"rgb": rgb, "ndvi": ndvi}


def write_quicklooks(ds: xr.Dataset, cog_path: str | os.PathLike, *,
                     max_size: int = 1024) -> list[Path]:
    """Write ``<stem>_quicklook_rgb.png`` and ``_ndvi.png`` beside the product."""
    cog_path = Path(cog_path)
    paths = []
    for name, image in quicklook_arrays(ds, cog_path, max_size=max_size).items():
        path = cog_path.with_name(f"{cog_path.stem}_quicklook_{name}.png")
        with rasterio.open(path, "w", driver="PNG", width=image.shape[2],
                           height=image.shape[1], count=3, dtype="uint8") as dst:
            dst.write(image)
        paths.append(path)
    return paths


def plot_side_by_side(ds: xr.Dataset, cog_path: str | os.PathLike, *, kind: str = "rgb",
                      max_size: int = 1024, ax: object = None) -> object:
    """Show the input | output panel in a notebook (needs matplotlib)."""
    import matplotlib.pyplot as plt

    image = quicklook_arrays(ds, cog_path, max_size=max_size)[kind]
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 6))
    ax.imshow(np.moveaxis(image, 0, -1))
    ax.set_title(f"{kind.upper()}: input (left) | super-resolved (right)")
    ax.set_axis_off()
    return ax
