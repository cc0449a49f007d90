"""Where the write path's time goes, on 1 CPU and on all the CPUs this process may use.

For the demo product (the bundled sample, bicubic), each measurement in a fresh process
pinned with ``taskset`` (what SLURM's ``--cpus-per-task`` gives):

- ``to_zarr``: the lazy product computed and streamed into a new Zarr store (overview
  levels included);
- ``to_cog``: srlib's tile-parallel COG writer (``engine="srlib"``, the default) and
  GDAL's COG driver over a VRT of the store (``engine="gdal"``, the route before it),
  side by side, each with validation;
- ``read``: every tile of every level read and decoded from the store, as the writer
  reads it;
- ``compress``: the full resolution written from memory as a tiled LZW + predictor GTiff
  with ``NUM_THREADS`` (the compression floor: no reading, overviews or COG layout).

MB/s per CPU counts raw (decoded) bytes: every level's for ``to_cog``, the full
resolution's for ``compress``; their ratio is the fraction of the floor the COG stage
reaches. The parent then checks that both engines' COGs decode to the same pixels, band
by band and level by level.

Usage: python benchmarks/write_split.py [--cpus 1,2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BANDS = ("red", "green", "blue", "nir", "quality")


def _timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def _measure(store: str, work: str) -> dict[str, float]:
    import rasterio

    import srlib
    from srlib.config import available_cpus
    from srlib.product.cog import _levels, _store_levels
    from srlib.product.cog_tiles import _tile_count

    cpus = available_cpus()
    # the process's one-off start-up (imports, the lanes, GDAL's codec probe) before any
    # clock, as in run.py: it does not grow with the data, the stages do
    small = srlib.sample_scene().isel(y=slice(0, 64), x=slice(0, 64))
    warm = os.path.join(work, f"warm-{cpus}")
    srlib.to_cog(srlib.to_zarr(srlib.super_resolve(small), warm + ".zarr"), warm + ".tif")
    to_zarr = _timed(srlib.to_zarr, srlib.super_resolve(srlib.sample_scene()),
                     os.path.join(work, f"zarr-{cpus}.zarr"))
    cogs = {engine: os.path.join(work, f"cog-{engine}-{cpus}.tif")
            for engine in ("srlib", "gdal")}
    to_cog = {engine: _timed(srlib.to_cog, store, path, engine=engine, threads=cpus)
              for engine, path in cogs.items()}
    ds = srlib.open_zarr(store)
    levels = _levels(Path(store), ds, list(BANDS), _store_levels(Path(store), ds))
    t0, raw = time.perf_counter(), 0
    for level in levels:
        rows, cols = _tile_count(level.shape, 512)
        for array in level.arrays:
            for ty in range(rows):
                for tx in range(cols):
                    y0, x0 = ty * 512, tx * 512
                    raw += array.read(y0, min(y0 + 512, level.shape[0]),
                                      x0, min(x0 + 512, level.shape[1])).size * 2
    read = time.perf_counter() - t0
    with rasterio.open(cogs["srlib"]) as src:
        data = src.read()
    full = data.nbytes
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": "int16", "tiled": True, "blockxsize": 512,
               "blockysize": 512, "compress": "lzw", "predictor": 2, "num_threads": str(cpus)}
    t0 = time.perf_counter()
    with rasterio.open(os.path.join(work, f"plain-{cpus}.tif"), "w", **profile) as dst:
        dst.write(data)
    compress = time.perf_counter() - t0
    floor = full / 1e6 / compress / cpus
    row = {"cpus": cpus, "raw_mb": round(raw / 1e6, 1), "full_mb": round(full / 1e6, 1),
           "to_zarr_s": round(to_zarr, 2), "read_s": round(read, 2),
           "compress_s": round(compress, 2), "floor_mb_s_per_cpu": round(floor, 1)}
    for engine, seconds in to_cog.items():
        rate = raw / 1e6 / seconds / cpus
        row[f"to_cog_{engine}_s"] = round(seconds, 2)
        row[f"to_cog_{engine}_mb_s_per_cpu"] = round(rate, 1)
        row[f"to_cog_{engine}_of_floor"] = round(rate / floor, 2)
    return row


def _same_pixels(a: str, b: str) -> bool:
    """Whether two COGs decode to the same values, every band, every overview level."""
    import numpy as np
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        if x.overviews(1) != y.overviews(1) or x.shape != y.shape:
            return False
        for factor in (1, *x.overviews(1)):
            shape = (x.count, -(-x.height // factor), -(-x.width // factor))
            for i in range(1, x.count + 1):
                if not np.array_equal(x.read(i, out_shape=shape[1:]),
                                      y.read(i, out_shape=shape[1:])):
                    return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", default=f"1,{len(os.sched_getaffinity(0))}")
    parser.add_argument("--out", default=None, help="Write the rows as JSON here.")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child: one pinned measurement
        print(json.dumps(_measure(*args.measure)))
        return
    work = tempfile.mkdtemp(prefix="srlib-write-split-")
    store = os.path.join(work, "demo.zarr")
    code = ("import srlib; srlib.to_zarr(srlib.super_resolve(srlib.sample_scene()), "
            f"{store!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    allowed = sorted(os.sched_getaffinity(0))
    rows = []
    try:
        for n in (int(c) for c in args.cpus.split(",")):
            cpus = ",".join(str(c) for c in allowed[:n])
            out = subprocess.run(["taskset", "-c", cpus, sys.executable, __file__,
                                  "--measure", store, work], check=True, capture_output=True,
                                 text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["same_pixels"] = _same_pixels(
                os.path.join(work, f"cog-srlib-{row['cpus']}.tif"),
                os.path.join(work, f"cog-gdal-{row['cpus']}.tif"))
            rows.append(row)
            for path in Path(work).iterdir():  # ~4 GB a row: keep only the shared store
                if path.name != "demo.zarr":
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]
    print(f"raw: {base['full_mb']} MB at full resolution, {base['raw_mb']} MB with overviews")
    print("| CPUs | to_zarr s | to_cog srlib s | to_cog gdal s | read s | floor s |"
          " srlib MB/s/CPU (of floor) | gdal MB/s/CPU (of floor) | floor MB/s/CPU |"
          " same pixels |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['cpus']} | {row['to_zarr_s']} | {row['to_cog_srlib_s']} |"
              f" {row['to_cog_gdal_s']} | {row['read_s']} | {row['compress_s']} |"
              f" {row['to_cog_srlib_mb_s_per_cpu']} ({row['to_cog_srlib_of_floor']}) |"
              f" {row['to_cog_gdal_mb_s_per_cpu']} ({row['to_cog_gdal_of_floor']}) |"
              f" {row['floor_mb_s_per_cpu']} | {row['same_pixels']} |")
    for row in rows[1:]:
        print(f"speed-up {base['cpus']} -> {row['cpus']} CPUs: to_zarr "
              f"{base['to_zarr_s'] / row['to_zarr_s']:.2f}x, to_cog srlib "
              f"{base['to_cog_srlib_s'] / row['to_cog_srlib_s']:.2f}x, to_cog gdal "
              f"{base['to_cog_gdal_s'] / row['to_cog_gdal_s']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
