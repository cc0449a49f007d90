"""Where the COG stage's time goes, on 1 CPU and on all the CPUs this process may use.

For the demo product's Zarr store (the bundled sample, bicubic), each measurement in a
fresh process pinned with ``taskset`` (what SLURM's ``--cpus-per-task`` gives):

- ``to_cog``: the whole stage (VRT over the store, GDAL's COG driver, validation);
- ``read``: every full-resolution block of every band read through GDAL's Zarr driver;
- ``compress``: the decoded full resolution written as a tiled LZW + predictor GTiff
  with ``NUM_THREADS`` (the compression floor, without overviews or the COG layout).

Usage: python benchmarks/cog_split.py [--cpus 1,2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _measure(store: str, work: str) -> dict[str, float]:
    import rasterio

    import srlib

    cpus = len(os.sched_getaffinity(0))
    cog = os.path.join(work, f"cog-{cpus}.tif")
    t0 = time.perf_counter()
    srlib.to_cog(store, cog, threads=str(cpus))
    to_cog = time.perf_counter() - t0
    t0, raw = time.perf_counter(), 0
    for band in ("red", "green", "blue", "nir", "quality"):
        with rasterio.Env(GDAL_NUM_THREADS=str(cpus)), \
                rasterio.open(f'ZARR:"{store}":/{band}') as src:
            for _, window in src.block_windows(1):
                raw += src.read(1, window=window).nbytes
    read = time.perf_counter() - t0
    with rasterio.open(cog) as src:
        data = src.read()
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": "int16", "tiled": True, "blockxsize": 512,
               "blockysize": 512, "compress": "lzw", "predictor": 2, "num_threads": str(cpus)}
    t0 = time.perf_counter()
    with rasterio.open(os.path.join(work, f"plain-{cpus}.tif"), "w", **profile) as dst:
        dst.write(data)
    compress = time.perf_counter() - t0
    return {"cpus": cpus, "raw_mb": round(raw / 1e6, 1), "to_cog_s": round(to_cog, 2),
            "read_s": round(read, 2), "compress_s": round(compress, 2),
            "to_cog_mb_s_per_cpu": round(raw / 1e6 / to_cog / cpus, 1),
            "compress_mb_s_per_cpu": round(raw / 1e6 / compress / cpus, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", default=f"1,{len(os.sched_getaffinity(0))}")
    parser.add_argument("--out", default=None, help="Write the rows as JSON here.")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child: one pinned measurement
        print(json.dumps(_measure(*args.measure)))
        return
    work = tempfile.mkdtemp(prefix="srlib-cog-split-")
    store = os.path.join(work, "demo.zarr")
    code = ("import srlib; srlib.to_zarr(srlib.super_resolve(srlib.sample_scene()), "
            f"{store!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    allowed = sorted(os.sched_getaffinity(0))
    rows = []
    for n in (int(c) for c in args.cpus.split(",")):
        cpus = ",".join(str(c) for c in allowed[:n])
        out = subprocess.run(["taskset", "-c", cpus, sys.executable, __file__, "--measure",
                              store, work], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print("| CPUs | to_cog s | read s | compress s | to_cog MB/s/CPU | compress MB/s/CPU |"
          " to_cog speed-up |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['cpus']} | {row['to_cog_s']} | {row['read_s']} | {row['compress_s']} |"
              f" {row['to_cog_mb_s_per_cpu']} | {row['compress_mb_s_per_cpu']} |"
              f" {base['to_cog_s'] / row['to_cog_s']:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
