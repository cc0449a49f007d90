"""Train the demonstration Swin2SR that ships with srlib, and compare it with bicubic.

What it is: a small Swin2SR (weights stored in float16, under 0.5 MB) trained for a few
minutes on a CPU, on the bundled 29RKH sample, which is itself decimated to 100 m. It
demonstrates the model card format and a learned model running end to end (``srlib demo --model
s2-swin2sr-demo``); it is not a production model, and it has never seen 10 m data.

How (Wald's protocol): the 100 m sample is averaged 10 x 10 to 1 km; the model learns to
map the 1 km scene (10 bands) back to the 100 m red, green, blue and nir. The right
quarter of the scene is held out. The comparison super-resolves the held-out 1 km
pixels with srlib (the card, and bicubic) and compares both with the true 100 m bands.

Run from the repository root (seeded; the result is what ships)::

    python examples/train_demo_model.py --steps 6000
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from affine import Affine

import srlib
from srlib.engine import input_reflectance
from srlib.models import Swin2SR, Swin2SRConfig, load_model, write_model_card

NAME = "s2-swin2sr-demo"
OUT = Path(__file__).resolve().parents[1] / "srlib" / "data" / "models" / NAME
CONFIG = Swin2SRConfig(img_size=16, window_size=8, embed_dim=24, depths=(2, 2),
                       num_heads=(2, 2), mlp_ratio=2.0, upsampler="pixelshuffledirect")
SCALE, PATCH, HOLD_OUT = 10, 16, 82  # LR columns from HOLD_OUT on are never trained on


def degrade(hr: np.ndarray, f: int = SCALE) -> np.ndarray:
    """Mean of the valid values of each f x f block (NaN where none)."""
    b, h, w = hr.shape
    blocks = hr[:, : h // f * f, : w // f * f].reshape(b, h // f, f, w // f, f)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        return np.nanmean(blocks, axis=(2, 4)).astype(np.float32)


def scene_arrays() -> tuple[xr.Dataset, np.ndarray, np.ndarray]:
    """The sample, its 1 km degradation (10 bands) and its 100 m truth (4 bands)."""
    ds = srlib.sample_scene()
    bands = np.stack([np.asarray(b) for b in input_reflectance(ds, srlib.S2_BANDS)])
    lr = degrade(bands)
    idx = [srlib.S2_BANDS.index(b) for b in srlib.OUTPUT_BANDS]
    hr = bands[idx][:, : lr.shape[1] * SCALE, : lr.shape[2] * SCALE]
    return ds, lr, hr


def lr_dataset(ds: xr.Dataset, lr: np.ndarray) -> xr.Dataset:
    """The 1 km scene as a dataset srlib takes (float reflectance x 10000, NaN nodata)."""
    t = ds.rio.transform()
    t1 = Affine(t.a * SCALE, 0, t.c, 0, t.e * SCALE, t.f)
    ny, nx = lr.shape[1:]
    coords = {"y": t1.f + (np.arange(ny) + 0.5) * t1.e,
              "x": t1.c + (np.arange(nx) + 0.5) * t1.a}
    out = xr.Dataset({b: (("y", "x"), lr[i]) for i, b in enumerate(srlib.S2_BANDS)},
                     coords=coords)
    return out.rio.write_crs(ds.rio.crs)


def train(lr: np.ndarray, hr: np.ndarray, steps: int, seed: int = 0) -> tuple[dict, dict]:
    """Train on the left of HOLD_OUT; return the state dict and the statistics."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lr_t, hr_t = lr[:, :, :HOLD_OUT], hr[:, :, : HOLD_OUT * SCALE]
    stats = {"input": {"bands": list(srlib.S2_BANDS),
                       "mean": np.nanmean(lr_t, axis=(1, 2)).round(2).tolist(),
                       "std": np.nanstd(lr_t, axis=(1, 2)).round(2).tolist()},
             "output": {"bands": list(srlib.OUTPUT_BANDS),
                        "mean": np.nanmean(hr_t, axis=(1, 2)).round(2).tolist(),
                        "std": np.nanstd(hr_t, axis=(1, 2)).round(2).tolist()}}
    mi, si = (np.array(stats["input"][k], np.float32)[:, None, None] for k in ("mean", "std"))
    mo, so = (np.array(stats["output"][k], np.float32)[:, None, None] for k in ("mean", "std"))
    x = np.nan_to_num((lr_t - mi) / si)
    y = (hr_t - mo) / so
    model = Swin2SR(**CONFIG.network(10, 4, SCALE))
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    t0, losses = time.monotonic(), []
    for step in range(1, steps + 1):
        ys = rng.integers(0, x.shape[1] - PATCH, 8)
        xs = rng.integers(0, x.shape[2] - PATCH, 8)
        xb = torch.from_numpy(np.stack([x[:, a:a + PATCH, b:b + PATCH]
                                        for a, b in zip(ys, xs, strict=True)]))
        yb = torch.from_numpy(np.stack([y[:, a * SCALE:(a + PATCH) * SCALE,
                                          b * SCALE:(b + PATCH) * SCALE]
                                        for a, b in zip(ys, xs, strict=True)]))
        valid = torch.isfinite(yb)
        loss = (model(xb) - torch.nan_to_num(yb)).abs()[valid].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if step % 500 == 0:
            print(f"step {step}: L1 {np.mean(losses[-500:]):.4f}", flush=True)
    print(f"{steps} steps in {(time.monotonic() - t0) / 60:.1f} min")
    return model.state_dict(), stats


def compare(ds: xr.Dataset, lr: np.ndarray, hr: np.ndarray, card: Path) -> dict:
    """RMSE and PSNR of srlib with the card and with bicubic, on the held-out pixels."""
    scene = lr_dataset(ds, lr)
    truth = hr[:, :, HOLD_OUT * SCALE:]
    out = {}
    for name, model in (("bicubic", "bicubic"), (NAME, str(card))):
        sr = srlib.super_resolve(scene, model).compute()
        pred = np.stack([sr[b].values for b in srlib.OUTPUT_BANDS]).astype(np.float64)
        pred = pred[:, : truth.shape[1], HOLD_OUT * SCALE:]
        ok = np.isfinite(truth) & (pred != srlib.OUTPUT_NODATA)
        err = pred[ok] - truth[ok]
        rmse = float(np.sqrt(np.mean(err**2)))
        out[name] = {"rmse": round(rmse, 1), "mae": round(float(np.abs(err).mean()), 1),
                     "psnr_db": round(20 * np.log10(10000 / rmse), 2),
                     "pixels": int(ok.sum())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000,
                        help="training steps of 8 patches (about 6 min on 2 cores)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ds, lr, hr = scene_arrays()
    state, stats = train(lr, hr, args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "weights.pth"
    # float16 halves the file (about 0.4 MB); loading casts back to float32
    torch.save({"params": {k: v.half() if v.is_floating_point() else v
                           for k, v in state.items()}}, weights)
    spec = load_model("swin2sr", checkpoint=weights, stats=stats, patch_size=PATCH,
                      **{k: v for k, v in CONFIG.__dict__.items()})
    spec = type(spec)(**{**spec.__dict__, "name": NAME, "version": "1"})
    card = write_model_card(spec, args.out / "card.json", description=(
        "Demonstration only: a small Swin2SR trained for a few minutes on a CPU on the "
        "bundled 29RKH sample (itself 100 m data), by Wald's protocol (1 km -> 100 m). "
        "See examples/train_demo_model.py."))
    result = compare(ds, lr, hr, card)
    (args.out / "wald.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
