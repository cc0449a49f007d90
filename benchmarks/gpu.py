"""GPU benchmark: patches/s, achieved TFLOP/s, GPU busy fraction, projected full tile.

Runs in under 5 minutes on one GPU at the default sizes; writes ``gpu.json`` to ``$OUT``
(or ``benchmarks/results``). On a machine without CUDA it says so and exits 0. Then, for
each ``--split`` size, :func:`split.measure` on CUDA with the light config, eager and
compiled: read, tight loop, compute only (and its ratio to the tight loop), Zarr, COG,
write MB/s per core against the LZW floor, and the GPU's busy fraction in each stage
(``--split 2048 5490`` adds a quarter tile).

Usage::

    python benchmarks/gpu.py [--size 2048] [--seconds 20] [--split 2048 5490]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))



class BusySampler:
    """Samples GPU utilisation with nvidia-smi every 100 ms while running."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (perf_counter, busy fraction)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        exe = shutil.which("nvidia-smi")
        while exe and not self._stop.is_set():
            out = subprocess.run([exe, "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, check=False).stdout.strip()
            if out.replace(".", "").isdigit():
                self.samples.append((time.perf_counter(), float(out) / 100))
            time.sleep(0.1)

    def __enter__(self) -> BusySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def busy(self, start: float, end: float) -> float | None:
        """Mean utilisation of the samples taken between two ``perf_counter`` times."""
        inside = [b for t, b in self.samples if start <= t <= end]
        return sum(inside) / len(inside) if inside else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="input side in pixels")
    parser.add_argument("--seconds", type=float, default=20.0, help="tight-loop duration")
    parser.add_argument("--split", type=int, nargs="*", default=[2048],
                        help="input sides for the stage split (split.py)")
    args = parser.parse_args()
    out_dir = Path(os.environ.get("OUT", HERE / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return

    from run import make_input

    import srlib
    from srlib.engine.batching import plan_batch_size
    from srlib.models import SWIN2SR_LIGHT, loaded_module

    result: dict = {"device": torch.cuda.get_device_name(0), "config": SWIN2SR_LIGHT}
    spec = srlib.load_model("swin2sr", random_weights=True, **SWIN2SR_LIGHT)
    module = loaded_module(spec, "cuda")
    p = spec.patch_size
    peak = srlib.engine.batching.peak_elements(spec, p)
    safe = srlib.engine.batching.max_safe_batch(spec, p)
    batch = plan_batch_size(peak, torch.device("cuda"), safe=safe)
    x = torch.randn(batch, len(spec.bands_in), p, p, device="cuda")
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(x[:1])
    flops_per_patch = counter.get_total_flops()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            module(x)
        torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            module(x)
            n += batch
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    result.update(batch=batch, safe_batch=safe, patches_per_s=n / dt,
                  tflops=flops_per_patch * n / dt / 1e12, flops_per_patch=flops_per_patch)

    ds = make_input(args.size)
    work = Path(tempfile.mkdtemp(prefix="srlib-gpu-"))
    try:
        with BusySampler() as sampler:
            t0 = time.perf_counter()
            sr = srlib.super_resolve(ds, spec, device="cuda")
            srlib.to_zarr(sr, work / "p.zarr")
            t1 = time.perf_counter()
            srlib.to_cog(work / "p.zarr", work / "p.tif")
            t2 = time.perf_counter()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tile_factor = (10980 / args.size) ** 2
    result.update(size=args.size, zarr_s=t1 - t0, cog_s=t2 - t1, total_s=t2 - t0,
                  gpu_busy_fraction=sampler.busy(t0, t2),
                  gpu_busy_fraction_zarr_stage=sampler.busy(t0, t1),
                  projected_full_tile_s=(t2 - t0) * tile_factor)
    (out_dir / "gpu.json").write_text(json.dumps(result, indent=2))
    from split import measure

    for side in args.split:
        row = measure("cuda", side, "swin2sr-light", compiled=True)
        row["projected_full_tile_s"] = (row["zarr_s"] + row["cog_s"]) * (10980 / side) ** 2
        result.setdefault("split", []).append(row)
        (out_dir / "gpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
