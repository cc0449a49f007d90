"""Where the whole path's time goes, on the CPU or a GPU: read, compute, Zarr, COG, floors.

One process, one input (the bundled real sample mirrored to ``--size``), one model:

- ``read``: the input computed (decoded from the bundled files);
- ``tight loop``: the model alone over every patch of the scene once, at the pipeline's
  batch size: on the CPU as srlib runs it (one single-threaded pass per core at once),
  on CUDA one batch after another under autocast; eager, and compiled with
  ``torch.compile`` (``--compile``; its compile time apart);
- ``compute only``: ``super_resolve`` computed into a sink that keeps nothing (no
  writing), eager and (``--compile``) compiled; its ratio to the tight loop is what
  cutting, feeding and finishing patches cost on top of the model (patches run: the
  kernel's own count, which includes those recomputed at chunk borders);
- ``zarr``: ``to_zarr`` of the same product (compute + writing), and ``cog``: ``to_cog``;
  the write path's time is ``zarr - compute only + cog``, and its raw MB/s per core is
  set against the ``floor``: the output written once from memory as a tiled LZW +
  predictor GTiff on every core;
- on CUDA, the GPU's busy fraction in each stage (``nvidia-smi``, every 100 ms).

Usage: python benchmarks/split.py [--device cpu] [--size 256] [--model swin2sr-light]
[--compile] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


class _Sink:
    """A ``da.store`` target that keeps nothing."""

    def __setitem__(self, key: object, value: object) -> None:
        pass


def _patches(spec, ds) -> list:
    """Every patch of the scene once, normalised, as the kernel cuts them (run.py's)."""
    import numpy as np

    from srlib.engine import patch_grid
    from srlib.engine.superres import input_reflectance

    arrays = [a.compute() for a in input_reflectance(ds, spec.bands_in)]
    mean, std = spec.stats.input.arrays()
    p, halo = spec.patch_size, spec.halo
    scene = (np.stack(arrays).astype(np.float32) - mean) / std
    scene = np.nan_to_num(scene)
    side = scene.shape[1]
    scene = np.pad(scene, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
    if spec.blend == "feather":
        origins = patch_grid(0, side, p, p - spec.overlap)
        return [scene[:, py + halo: py + halo + p, px + halo: px + halo + p]
                for py in origins for px in origins]
    from srlib.engine.stitching import _even_tiles

    tiles = _even_tiles(side, p - 2 * halo)  # trim: the kernel's tiles of the scene
    return [scene[:, y0: y1 + 2 * halo, x0: x1 + 2 * halo] for y0, y1 in tiles
            for x0, x1 in tiles]


def _tight(spec, patches: list, device: str, precision: str) -> tuple[float, int]:
    """Seconds for the model alone over ``patches`` (the pipeline's batching)."""
    import numpy as np
    import torch

    from srlib.engine import Runner, forward_all
    from srlib.engine.batching import max_safe_batch, peak_elements
    from srlib.engine.runner import KernelConfig

    p = spec.patch_size
    cfg = KernelConfig(spec=spec, n_bands=len(spec.bands_in), has_scl=False, device=device,
                       batch_size=None, safe_batch=max_safe_batch(spec, p),
                       peak_per_pixel=peak_elements(spec, p) / p**2, precision=precision,
                       y_starts=(0,), x_starts=(0,), post="host")
    run = Runner(cfg)
    bs = run.batch_size(p)
    shapes: dict[tuple, list] = {}
    for patch in patches:  # batches of one shape each, as the kernel makes them
        shapes.setdefault(patch.shape, []).append(patch)
    batches = [group[i: i + bs] for group in shapes.values()
               for i in range(0, len(group), bs)]

    def make(batch: list) -> np.ndarray:
        return np.ascontiguousarray(np.stack(batch), dtype=np.float32)

    # one untimed pass first: every batch shape is built (and compiled) before the clock
    forward_all(run, batches, make, lambda b, r: None)
    if run.cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    forward_all(run, batches, make, lambda b, r: None)
    if run.cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, bs


def _count_patches():
    """Wrap the kernel's runner to count the patches it runs; return the counter."""
    from srlib.engine import runner

    counter = {"patches": 0}
    original = runner.Runner.__call__

    def counted(self, patches):
        counter["patches"] += int(patches.shape[0])
        return original(self, patches)

    runner.Runner.__call__ = counted
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels")
    parser.add_argument("--model", default="swin2sr-light",
                        choices=["bicubic", "swin2sr", "swin2sr-light"])
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--compile", action="store_true", help="also measure compiled")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    row = measure(args.device, args.size, args.model, precision=args.precision,
                  compiled=args.compile)
    print(json.dumps(row, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "split.json").write_text(json.dumps(row, indent=2))


def measure(device: str, size: int, model: str, *, precision: str = "bf16",
            compiled: bool = False) -> dict:
    """Measure each stage for ``model`` on a ``size``² input on ``device`` (see above)."""

    import dask.array as da
    import numpy as np
    import rasterio
    from run import make_input, model_spec

    import srlib
    from srlib.config import available_cpus
    from srlib.models import compile_seconds

    cuda = device.startswith("cuda")
    sampler = None
    if cuda:
        from gpu import BusySampler

        sampler = BusySampler()
    srlib.flush_subnormals()
    spec = model_spec(model)
    ds = make_input(size)
    t0 = time.perf_counter()
    ds.compute()
    row: dict = {"device": device, "model": model, "size": size,
                 "cpus": available_cpus(), "read_s": time.perf_counter() - t0}
    patches = _patches(spec, ds)
    counter = _count_patches()
    marks: dict[str, tuple[float, float]] = {}
    work = Path(tempfile.mkdtemp(prefix="srlib-split-"))
    variants = [False, True] if compiled else [False]
    try:
        with sampler or nullcontext():
            for compile_it in variants:
                tag = "compiled" if compile_it else "eager"
                run_spec = dataclasses.replace(spec, compile=compile_it)
                t_tight, bs = _tight(run_spec, patches, device, precision)
                row[f"tight_{tag}_s"] = t_tight
                row["batch"] = bs
                if compile_it:
                    row["compile_s"] = compile_seconds(run_spec, device) or 0.0
                sr = srlib.super_resolve(ds, run_spec, device=device,
                                         precision=precision)
                counter["patches"] = 0
                t0 = time.perf_counter()
                da.store([sr[v].data for v in sr.data_vars], [_Sink()] * len(sr.data_vars),
                         lock=False)
                t1 = time.perf_counter()
                marks[f"compute_{tag}"] = (t0, t1)
                row[f"compute_only_{tag}_s"] = t1 - t0
                row[f"patches_run_{tag}"] = counter["patches"]
                per_patch = t_tight / len(patches)
                row[f"compute_vs_tight_{tag}"] = (t1 - t0) / (per_patch * counter["patches"])
            t0 = time.perf_counter()
            store = srlib.to_zarr(srlib.super_resolve(ds, spec, device=device,
                                                      precision=precision),
                                  work / "p.zarr")
            t1 = time.perf_counter()
            srlib.to_cog(store, work / "p.tif")
            t2 = time.perf_counter()
            marks["zarr"], marks["cog"] = (t0, t1), (t1, t2)
        row.update(patches=len(patches), zarr_s=t1 - t0, cog_s=t2 - t1)
        out = srlib.open_zarr(store)
        data = np.stack([out[v].values.astype(np.int16) for v in out.data_vars])
        profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
                   "count": data.shape[0], "dtype": "int16", "tiled": True,
                   "blockxsize": 512, "blockysize": 512, "compress": "lzw", "predictor": 2,
                   "num_threads": "all_cpus"}
        t0 = time.perf_counter()
        with rasterio.open(work / "floor.tif", "w", **profile) as dst:
            dst.write(data)
        floor_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mb = data.nbytes / 1e6
    write_s = max(row["zarr_s"] - row["compute_only_eager_s"], 0.0) + row["cog_s"]
    cpus = row["cpus"]
    row.update(raw_mb=mb, floor_s=floor_s, write_s=write_s,
               floor_mb_s_per_cpu=mb / floor_s / cpus,
               write_mb_s_per_cpu=mb / write_s / cpus,
               write_of_floor=floor_s / write_s)
    if sampler is not None:
        row["gpu_busy"] = {k: sampler.busy(*v) for k, v in marks.items()}
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


if __name__ == "__main__":
    main()
