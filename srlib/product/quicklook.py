"""Quicklooks that show the point: the whole product, and a zoomed input | output crop.

Each quicklook is one titled figure of three panels: the whole product (at most
``max_size`` px, from its overviews) with the zoomed window outlined; that window of the
input (about ``crop`` input pixels, drawn with nearest neighbour); and the same window of
the output at full resolution (``scale`` times as many pixels). The window is the most
textured fully valid one among a grid of candidates, where super-resolution shows.

- RGB: one linear stretch for every panel, the 2nd to 98th percentile of the output;
- NDVI: a diverging colour map on a range fitted to the data (2nd to 98th percentile,
  symmetric about zero when it spans it), with a colour bar.

Nodata is drawn black (RGB) or grey (NDVI). Figures are made with matplotlib's object
API (no pyplot, no backend change), so they never touch a notebook's plotting state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..bands import OUTPUT_NODATA
from ..files import replacing

__all__ = ["QUICKLOOKS", "quicklook_figure", "quicklook_path", "write_quicklooks", "zoom_window"]

#: The quicklooks of a product, in the order they are written.
QUICKLOOKS = ("rgb", "ndvi")


def quicklook_path(cog_path: str | os.PathLike, kind: str) -> Path:
    """Return where the ``kind`` quicklook of a product goes (beside the COG)."""
    cog_path = Path(cog_path)
    return cog_path.with_name(f"{cog_path.stem}_quicklook_{kind}.png")


@dataclass(frozen=True)
class Zoom:
    """The zoomed window in input pixels (row, col, size) and the scale to the output."""

    row: int
    col: int
    size: int
    scale: int


def _ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    red, nir = red.astype(np.float32), nir.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nir + red != 0, (nir - red) / (nir + red), np.nan)


def zoom_window(src: rasterio.DatasetReader, shape: tuple[int, int], *, crop: int = 100,
                grid: int = 4) -> Zoom:
    """Pick the most textured fully valid window of about ``crop`` input pixels.

    Candidates form a ``grid`` x ``grid`` lattice over the input of ``shape``; each is
    scored on a small read of the output (the red band's standard deviation).
    """
    h, w = shape
    scale = max(1, round(src.height / h))
    size = max(1, min(crop, h, w))
    best, best_score = Zoom((h - size) // 2, (w - size) // 2, size, scale), -1.0
    for i in range(grid):
        for j in range(grid):
            row = round((h - size) * (i + 0.5) / grid)
            col = round((w - size) * (j + 0.5) / grid)
            red = src.read(1, window=Window(col * scale, row * scale, size * scale,
                                            size * scale), out_shape=(64, 64),
                           resampling=Resampling.nearest)
            if (red == OUTPUT_NODATA).any():
                continue
            score = float(red.std())
            if score > best_score:
                best, best_score = Zoom(row, col, size, scale), score
    return best


def _panels(ds: xr.Dataset, src: rasterio.DatasetReader, zoom: Zoom, max_size: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the three panels' red, green, blue and nir reflectance x 10000.

    Float, NaN at nodata: the whole output, the input window, the output window.
    """
    factor = max(src.width, src.height) / max_size
    h, w = max(1, round(src.height / factor)), max(1, round(src.width / factor))
    whole = src.read([1, 2, 3, 4], out_shape=(4, h, w), resampling=Resampling.nearest)
    s = zoom.scale
    out = src.read([1, 2, 3, 4], window=Window(zoom.col * s, zoom.row * s, zoom.size * s,
                                               zoom.size * s))
    window = ds[["red", "green", "blue", "nir"]].isel(
        y=slice(zoom.row, zoom.row + zoom.size), x=slice(zoom.col, zoom.col + zoom.size)
    ).compute()
    inp = []
    for band in ("red", "green", "blue", "nir"):
        arr = window[band]
        values = arr.values.astype(np.float32)
        nodata = arr.attrs.get("nodata", arr.rio.nodata)
        bad = ~np.isfinite(values) if nodata is None else (values == nodata) | ~np.isfinite(
            values)
        values = values * float(arr.attrs.get("scale_factor", 1e-4)) * 1e4 \
            + float(arr.attrs.get("add_offset", 0.0)) * 1e4
        values[bad] = np.nan
        inp.append(values)

    def masked(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a[:, (a == OUTPUT_NODATA).any(axis=0)] = np.nan
        return a

    return masked(whole), np.stack(inp), masked(out)


def _rgb(bands: np.ndarray, low: float, high: float) -> np.ndarray:
    rgb = np.clip((bands[:3] - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.nan_to_num(rgb, nan=0.0)  # nodata black
    return np.moveaxis(rgb, 0, -1)


def quicklook_figure(ds: xr.Dataset, cog_path: str | os.PathLike, *, kind: str = "rgb",
                     max_size: int = 1024, crop: int = 100) -> Any:
    """Return the quicklook as a matplotlib Figure (shown inline by notebooks).

    Parameters
    ----------
    ds : xarray.Dataset
        The input scene (red, green, blue, nir with their ``scale_factor``/``nodata``).
    cog_path : path
        The product.
    kind : {"rgb", "ndvi"}
        Natural colour, or NDVI with a colour bar.
    max_size : int
        Side of the whole-product panel in pixels.
    crop : int
        Side of the zoomed window in input pixels.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if kind not in ("rgb", "ndvi"):
        raise ValueError(f"kind must be 'rgb' or 'ndvi', got {kind!r}")
    with rasterio.open(cog_path) as src:
        zoom = zoom_window(src, (ds.sizes["y"], ds.sizes["x"]), crop=crop)
        whole, inp, out = _panels(ds, src, zoom, max_size)
    fig = Figure(figsize=(15, 5.6), dpi=max(72, max_size / 5), layout="constrained")
    axes = fig.subplots(1, 3)
    name = Path(cog_path).stem
    res = abs(float(ds.rio.resolution()[0]))
    side = zoom.size * zoom.scale
    titles = [f"{name}: whole product", f"input, {zoom.size} x {zoom.size} px ({res:g} m)",
              f"super-resolved, {side} x {side} px ({res / zoom.scale:g} m)"]
    if kind == "rgb":
        valid = out[:3][np.isfinite(out[:3])]
        low, high = np.percentile(valid, [2, 98]) if valid.size else (0.0, 3000.0)
        for ax, panel in zip(axes, (whole, inp, out), strict=True):
            ax.imshow(_rgb(panel, low, high), interpolation="nearest")
        fig.suptitle("Natural colour (red, green, blue), one stretch for all panels: "
                     f"reflectance {low / 1e4:.3f} to {high / 1e4:.3f}")
    else:
        import matplotlib as mpl

        ndvis = [_ndvi(p[0], p[3]) for p in (whole, inp, out)]
        valid = ndvis[0][np.isfinite(ndvis[0])]
        low, high = np.percentile(valid, [2, 98]) if valid.size else (-1.0, 1.0)
        if low < 0 < high:
            low, high = -max(-low, high), max(-low, high)
        cmap = mpl.colormaps["RdYlGn"].with_extremes(bad="0.5")
        for ax, ndvi in zip(axes, ndvis, strict=True):
            image = ax.imshow(ndvi, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="NDVI")
        fig.suptitle(f"NDVI, colour range {low:.2f} to {high:.2f} (2nd-98th percentile)")
    factor = whole.shape[1] / ds.sizes["y"]
    axes[0].add_patch(Rectangle((zoom.col * factor - 0.5, zoom.row * factor - 0.5),
                                zoom.size * factor, zoom.size * factor, fill=False,
                                edgecolor="magenta", linewidth=1.5))
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    return fig


def write_quicklooks(ds: xr.Dataset, cog_path: str | os.PathLike, *,
                     max_size: int = 1024, crop: int = 100) -> list[Path]:
    """Write ``<stem>_quicklook_rgb.png`` and ``_ndvi.png`` beside the product."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    paths = []
    for kind in QUICKLOOKS:
        fig = quicklook_figure(ds, cog_path, kind=kind, max_size=max_size, crop=crop)
        FigureCanvasAgg(fig)
        path = quicklook_path(cog_path, kind)
        with replacing(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        paths.append(path)
    return paths
