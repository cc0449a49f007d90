"""Judging a model: Wald's protocol, consistency with the input, speed, against baselines.

:func:`bench` answers "is my model better than bicubic on my scenes, and how fast is it
here?" with the field's standard figures, for a model and for baselines side by side:

- **Wald's protocol**: the scene is averaged by the model's scale (valid pixels only),
  super-resolved back through :func:`srlib.super_resolve` (the production code path,
  chunked) and compared with the original, on the pixels valid in both: PSNR, SSIM and
  RMSE per band (scikit-image's ``peak_signal_noise_ratio``, ``structural_similarity``,
  ``mean_squared_error``), SAM and ERGAS over the bands (torchmetrics'
  ``spectral_angle_mapper`` and ``error_relative_global_dimensionless_synthesis``).
- **Consistency at the native resolution**, no reference needed: a centre crop of the
  scene is super-resolved and the product averaged back onto the input grid, against
  the input (the consistency tests of opensr-test): the reflectance error per band
  (torchmetrics' ``mean_absolute_error``), the spectral angle, and the spatial shift per
  band in input pixels (scikit-image's ``phase_cross_correlation``, subpixel).
- **Speed and memory** of that run: input megapixels per second and the process's peak
  resident memory while it ran, on the device given.

Baselines: ``bicubic`` is srlib's bicubic model through :func:`srlib.super_resolve`;
``nearest`` and ``lanczos`` are GDAL's resampling (through rasterio) of the same input,
so every method gets the same input and the same comparison.

The reflectances compared are surface reflectance x 10000 (the product's encoding and
the input's, its BOA offset applied); PSNR and SSIM take 10000 as the data range.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from .errors import InputError

__all__ = ["BASELINES", "BenchResult", "bench"]

#: Baselines :func:`bench` knows
BASELINES = ("bicubic", "lanczos", "nearest")
#: Reflectance x 10000: the data range of PSNR and SSIM
DATA_RANGE = 10000.0


@dataclass
class BenchResult:
    """Figures of one method on one scene (``to_dict`` for JSON)."""

    method: str
    scene: str
    wald: dict[str, Any] = field(default_factory=dict)
    consistency: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the figures as a JSON-ready dict."""
        return {"method": self.method, "scene": self.scene, "wald": self.wald,
                "consistency": self.consistency, "speed": self.speed}


def _metrics() -> tuple[Any, Any]:
    try:
        import skimage.metrics as skm
        import torchmetrics.functional.image as tmi
    except ImportError as err:
        raise InputError(f"srlib bench needs scikit-image and torchmetrics ({err}): "
                         "pip install 'srlib[bench]'") from None
    return skm, tmi


def _degrade(ds: xr.Dataset, scale: int) -> xr.Dataset:
    """Average a scene by ``scale`` (reflectance over valid pixels, SCL by its centre)."""
    out: dict[str, xr.DataArray] = {}
    for key, var in ds.data_vars.items():
        name = str(key)
        if name == "scl":
            c = scale // 2
            sub = var.isel(y=slice(c, None, scale), x=slice(c, None, scale))
            n_y, n_x = var.sizes["y"] // scale, var.sizes["x"] // scale
            out[name] = sub.isel(y=slice(0, n_y), x=slice(0, n_x))
            continue
        valid = var.where(var != 0)
        mean = valid.coarsen(y=scale, x=scale, boundary="trim").mean()
        out[name] = mean.fillna(0).round().astype(var.dtype)
        out[name].attrs = var.attrs
    degraded = xr.Dataset({k: v.drop_vars(["y", "x"], errors="ignore") for k, v in out.items()})
    coarse = ds["red"].coarsen(y=scale, x=scale, boundary="trim").mean()
    degraded = degraded.assign_coords(y=coarse.y, x=coarse.x)
    if "spatial_ref" in ds.coords:
        degraded = degraded.assign_coords(spatial_ref=ds.spatial_ref)
    degraded.attrs = dict(ds.attrs)
    return degraded.rio.write_crs(ds.rio.crs)


def _reference(ds: xr.Dataset, bands: Sequence[str]) -> np.ndarray:
    """Return the scene's reflectance x 10000 of ``bands`` (NaN at nodata), (band, y, x)."""
    from .engine.superres import input_reflectance

    return np.stack([np.asarray(a) for a in input_reflectance(ds, tuple(bands))])


def _product(sr: xr.Dataset, bands: Sequence[str]) -> np.ndarray:
    """Return a product's reflectance x 10000 (NaN at nodata), (band, y, x)."""
    out = []
    for b in bands:
        var = sr[b]
        values = np.asarray(var.values, dtype=np.float32)
        nodata = var.attrs.get("nodata", var.attrs.get("_FillValue"))
        if nodata is not None:
            values[values == nodata] = np.nan
        out.append(values)
    return np.stack(out)


def _resampled(ds: xr.Dataset, bands: Sequence[str], scale: int, kind: str) -> np.ndarray:
    """GDAL's ``kind`` resampling of the bands onto the grid ``scale`` times finer."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    ref = _reference(ds, bands)
    transform = ds.rio.transform()
    # ``transform * Affine.scale(1 / scale)`` spelled out (affine 3 warns on ``*``)
    k = 1 / scale
    fine = type(transform)(transform.a * k, transform.b * k, transform.c,
                           transform.d * k, transform.e * k, transform.f)
    out = np.full((len(bands), ref.shape[1] * scale, ref.shape[2] * scale), np.nan,
                  np.float32)
    for i in range(len(bands)):
        reproject(ref[i], out[i], src_transform=transform, dst_transform=fine,
                  src_crs=ds.rio.crs, dst_crs=ds.rio.crs, src_nodata=np.nan,
                  dst_nodata=np.nan, resampling=getattr(Resampling, kind))
    return out


@contextmanager
def _peak_rss() -> Iterator[dict[str, float]]:
    """Sample this process's resident memory while the block runs; peak in MB."""
    page = os.sysconf("SC_PAGE_SIZE")
    found = {"peak_mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while True:
            with open("/proc/self/statm") as fh:
                rss = int(fh.read().split()[1]) * page / 2**20
            found["peak_mb"] = max(found["peak_mb"], rss)
            if stop.wait(0.02):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join()


def _run(method: str, spec: Any, ds: xr.Dataset, bands: Sequence[str], scale: int,
         device: str | None) -> np.ndarray:
    """Super-resolve ``ds`` with ``method`` (a model spec, or a GDAL baseline)."""
    if method in ("nearest", "lanczos"):
        return _resampled(ds, bands, scale, method)
    from .engine.superres import super_resolve

    return _product(super_resolve(ds, spec, device=device).compute(), bands)


def _valid(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.isfinite(pred).all(axis=0) & np.isfinite(ref).all(axis=0)


def _wald(pred: np.ndarray, ref: np.ndarray, bands: Sequence[str], scale: int
          ) -> dict[str, Any]:
    import torch

    skm, tmi = _metrics()
    ok = _valid(pred, ref)
    if ok.sum() < 64:
        raise InputError(f"Wald's protocol found only {int(ok.sum())} valid pixels; give a "
                         "scene with more valid data")
    per_band = {}
    for i, band in enumerate(bands):
        p, r = pred[i][ok], ref[i][ok]
        filled = np.where(ok, pred[i], np.nan_to_num(ref[i]))  # SSIM needs the 2-D image
        per_band[band] = {
            "psnr": round(float(skm.peak_signal_noise_ratio(r, p, data_range=DATA_RANGE)), 3),
            "ssim": round(float(skm.structural_similarity(
                np.nan_to_num(ref[i]), filled, data_range=DATA_RANGE)), 4),
            "rmse": round(float(np.sqrt(skm.mean_squared_error(r, p))), 2)}
    p = torch.from_numpy(np.ascontiguousarray(pred[:, ok]))[None, :, :, None]
    r = torch.from_numpy(np.ascontiguousarray(ref[:, ok]))[None, :, :, None]
    sam = float(tmi.spectral_angle_mapper(p.clamp(min=1e-3), r.clamp(min=1e-3)))
    # torchmetrics takes the low/high resolution ratio: 100 / ratio, as Wald defined it
    ergas = float(tmi.error_relative_global_dimensionless_synthesis(p, r, ratio=scale))
    return {"bands": per_band, "psnr": round(float(np.mean(
        [b["psnr"] for b in per_band.values()])), 3), "sam_deg": round(np.degrees(sam), 3),
        "ergas": round(ergas, 4), "pixels": int(ok.sum())}


def _consistency(pred: np.ndarray, lr: np.ndarray, bands: Sequence[str], scale: int
                 ) -> dict[str, Any]:
    import torch
    from skimage.registration import phase_cross_correlation

    _skm, tmi = _metrics()
    b, h, w = pred.shape
    back = np.nanmean(pred[:, : h // scale * scale, : w // scale * scale].reshape(
        b, h // scale, scale, w // scale, scale), axis=(2, 4))
    lr = lr[:, : back.shape[1], : back.shape[2]]
    ok = _valid(back, lr)
    per_band = {}
    for i, band in enumerate(bands):
        mae = _mae(torch.from_numpy(back[i][ok]), torch.from_numpy(lr[i][ok]))
        shift, _err, _phase = phase_cross_correlation(
            np.nan_to_num(lr[i]), np.nan_to_num(back[i]), upsample_factor=20)
        per_band[band] = {"reflectance_mae": round(mae, 2),
                          "shift_px": round(float(np.hypot(*shift)), 3)}
    p = torch.from_numpy(np.ascontiguousarray(back[:, ok]))[None, :, :, None]
    r = torch.from_numpy(np.ascontiguousarray(lr[:, ok]))[None, :, :, None]
    sam = float(tmi.spectral_angle_mapper(p.clamp(min=1e-3), r.clamp(min=1e-3)))
    return {"bands": per_band, "sam_deg": round(np.degrees(sam), 3),
            "reflectance_mae": round(float(np.mean(
                [v["reflectance_mae"] for v in per_band.values()])), 2)}


def _mae(pred: Any, target: Any) -> float:
    """Return torchmetrics' mean absolute error of two tensors."""
    from torchmetrics.functional import mean_absolute_error

    return float(mean_absolute_error(pred, target))


def _scene(scene: str | os.PathLike | xr.Dataset) -> tuple[str, xr.Dataset]:
    """Return a scene's name and lazy Dataset (all ten bands, reflectance DN)."""
    from pathlib import Path

    from .scene.sample import SAMPLES, sample_scene, scene_folder

    if isinstance(scene, xr.Dataset):
        return str(scene.attrs.get("id", "dataset")), scene
    text = str(scene)
    if text in SAMPLES:
        return text, sample_scene(text)
    path = Path(text)
    if text.endswith(".json"):
        import pystac

        from .scene.sources import load_items

        return path.stem, load_items([pystac.Item.from_file(text)])
    if path.suffix == ".zarr" and path.is_dir():
        ds = xr.open_zarr(path, decode_coords="all", mask_and_scale=False)  # DN, as stored
        if ds.rio.crs is None:
            raise InputError(f"{path} has no CRS (a spatial_ref coordinate); write the scene "
                             "with rioxarray (ds.rio.write_crs) before saving it")
        return path.stem, ds
    if path.suffix in (".tif", ".tiff") and path.is_file():
        import rioxarray

        # chunks as a dict: chunks=True made rioxarray pass a tuple, which xarray warns of
        stack = rioxarray.open_rasterio(path, chunks={"y": 2048, "x": 2048},
                                        band_as_variable=True)
        if not isinstance(stack, xr.Dataset):  # several subdatasets
            raise InputError(f"{path} holds several subdatasets; give one GeoTIFF of bands")
        names = [stack[v].attrs.get("long_name") or stack[v].attrs.get("description")
                 for v in stack.data_vars]
        if not all(names):
            raise InputError(f"{path}: name each band (GDAL band descriptions: blue, green, "
                             "red, ...) so that srlib knows which is which")
        ds = stack.rename(dict(zip(list(stack.data_vars), names, strict=True)))
        return path.stem, ds
    if path.is_dir():
        return path.name, scene_folder(path)
    raise InputError(f"scene {text!r} is neither a bundled sample ({', '.join(SAMPLES)}), a "
                     "STAC Item (.json), a scene folder (B02.tif ...), a Zarr store nor a "
                     "GeoTIFF with named bands")


def bench(model: Any = "bicubic", *,
          scenes: Sequence[str | os.PathLike | xr.Dataset] = ("29RKH",),
          baselines: Sequence[str] = BASELINES, device: str | None = None,
          crop: int = 256) -> list[BenchResult]:
    """Measure a model and baselines on scenes: Wald, consistency, speed, memory.

    Parameters
    ----------
    model : str or ModelSpec
        A model card (.json), ``bicubic``, or a spec (:func:`srlib.load_model`).
    scenes : sequence
        Bundled samples (``29RKH``, ``bigearthnet``), STAC Items (.json), scene folders
        (one GeoTIFF per band: ``B02.tif`` ...), Zarr stores or GeoTIFFs with named bands
        of a scene (all ten bands, reflectance DN, nodata 0), or Datasets.
    baselines : sequence of str
        Of :data:`BASELINES`; the model itself is always first.
    device : str, optional
        Where the model runs (baselines that are srlib models too).
    crop : int
        Side of the centre crop (input pixels) for the consistency and speed run.

    Returns
    -------
    list of BenchResult
        For each scene, the model then each baseline.
    """
    from .models import load_model

    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise InputError(f"unknown baselines {unknown}; srlib bench knows {list(BASELINES)}")
    _metrics()  # fail before any work when the metric libraries are missing
    spec = load_model(model)
    scale = spec.scale
    bands = list(spec.bands_out)
    methods: list[tuple[str, Any]] = [(spec.name, spec)]
    methods += [(b, load_model("bicubic", scale=scale) if b == "bicubic" else None)
                for b in baselines if b != spec.name]
    results = []
    for scene in scenes:
        name, ds = _scene(scene)
        small = _degrade(ds, scale)
        h = small.sizes["y"] * scale
        w = small.sizes["x"] * scale
        reference = _reference(ds, bands)[:, :h, :w]
        cy, cx = max(0, (ds.sizes["y"] - crop) // 2), max(0, (ds.sizes["x"] - crop) // 2)
        part = ds.isel(y=slice(cy, cy + crop), x=slice(cx, cx + crop))
        low = _reference(part, bands)
        for method, method_spec in methods:
            wald = _run(method, method_spec, small, bands, scale, device)[:, :h, :w]
            with _peak_rss() as memory:
                t0 = time.perf_counter()
                native = _run(method, method_spec, part, bands, scale, device)
                seconds = time.perf_counter() - t0
            mpx = part.sizes["y"] * part.sizes["x"] / 1e6
            results.append(BenchResult(
                method, name, wald=_wald(wald, reference, bands, scale),
                consistency=_consistency(native, low, bands, scale),
                speed={"input_mpx_per_s": round(mpx / seconds, 3),
                       "seconds": round(seconds, 3), "peak_rss_mb": round(memory["peak_mb"]),
                       "device": device or "auto", "input_px": [part.sizes["y"],
                                                                part.sizes["x"]]}))
    return results


def table(results: Sequence[BenchResult]) -> str:
    """Return the figures as a terminal table: one row per scene and method."""
    bands = list(results[0].wald["bands"]) if results else []
    head = (f"{'scene':<12} {'method':<22} " + " ".join(f"{'PSNR ' + b:>10}" for b in bands)
            + f" {'SSIM':>6} {'SAM°':>6} {'ERGAS':>7} {'cons.MAE':>9} {'shift':>6}"
            f" {'Mpx/s':>7} {'RSS MB':>7}")
    rows = [head, "-" * len(head)]
    for r in results:
        ssim = np.mean([v["ssim"] for v in r.wald["bands"].values()])
        shift = max(v["shift_px"] for v in r.consistency["bands"].values())
        rows.append(f"{r.scene:<12} {r.method:<22} "
                    + " ".join(f"{r.wald['bands'][b]['psnr']:>10.2f}" for b in bands)
                    + f" {ssim:>6.3f} {r.wald['sam_deg']:>6.2f} {r.wald['ergas']:>7.3f}"
                    f" {r.consistency['reflectance_mae']:>9.1f} {shift:>6.2f}"
                    f" {r.speed['input_mpx_per_s']:>7.3f} {r.speed['peak_rss_mb']:>7}")
    return "\n".join(rows)


def to_json(results: Sequence[BenchResult]) -> str:
    """Return the figures as JSON (with srlib's version)."""
    from importlib.metadata import version

    return json.dumps({"srlib": version("srlib"), "results": [r.to_dict() for r in results]},
                      indent=2)
