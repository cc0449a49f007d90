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
by band and level by level. Each row also times three probes of the machine itself
(scalar integer code, vector float code in cache, memory copies), the same work per
thread on every CPU: how far the machine lets each kind of work scale, beside what the
stages reach.

Usage: python benchmarks/write_split.py [--cpus 1,2] [--repeat 3] [--dir DIR] [--out FILE]
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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BANDS = ("red", "green", "blue", "nir", "quality")


def _machine_ticks() -> tuple[int, int]:
    """Busy and stolen clock ticks of the whole machine, every CPU (``/proc/stat``)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait
    return sum(values[:8]) - values[3] - values[4], values[7]


def _timed(fn, *args, usage: dict | None = None, **kwargs) -> float:
    """Seconds ``fn`` took; with ``usage``, also where the CPU time went.

    ``cpu_s``: this process's CPU seconds; ``others_s``: the rest of the machine's busy
    seconds meanwhile (the kernel's writeback threads and interrupts, on any CPU: a
    process pinned to one CPU still gets the other's help there); ``steal_s``: seconds
    the hypervisor gave to other guests (a noisy neighbour, not srlib).
    """
    os.sync()  # the previous stage's dirty pages are written back before the clock
    tick = os.sysconf("SC_CLK_TCK")
    busy0, steal0 = _machine_ticks()
    cpu0 = os.times()
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    cpu1 = os.times()
    busy1, steal1 = _machine_ticks()
    if usage is not None:
        cpu = cpu1.user - cpu0.user + cpu1.system - cpu0.system
        usage.update(cpu_s=round(cpu, 2), others_s=round(max(0.0, (busy1 - busy0) / tick
                                                              - cpu), 2),
                     steal_s=round((steal1 - steal0) / tick, 2))
    return seconds


def _probe(reps: int = 3) -> dict[str, float]:
    """The machine's own scaling: the same work per thread, one thread per CPU.

    Seconds for three kinds of work the stages are made of: ``scalar`` (zlib, integer
    code in cache, as LZW), ``simd`` (float multiply/add/round on 256 KB arrays, in
    cache, as numpy's and torch's element-wise passes) and ``memory`` (copying 64 MB
    arrays: bandwidth, as every pass over a block). Where a kind takes as long with
    every CPU doing it as with one, the CPUs share what it needs (a memory bus, the
    vector units of one physical core) and no code scales past that.
    """
    import threading
    import zlib

    import numpy as np

    cpus = len(os.sched_getaffinity(0))
    rng = np.random.default_rng(0)

    def scalar(data: bytes, _unused: None) -> None:
        for _ in range(8 * reps):
            zlib.compress(data, 6)

    def simd(a: np.ndarray, b: np.ndarray) -> None:
        for _ in range(12000 * reps):
            np.multiply(a, 1.0001, out=b)
            np.add(b, a, out=b)
            np.rint(b, out=b)

    def memory(a: np.ndarray, b: np.ndarray) -> None:
        for _ in range(20 * reps):
            np.copyto(b, a)

    def arrays(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        return np.full(shape, 1.5, np.float32), np.full(shape, 0.5, np.float32)  # touched

    kinds: dict[str, tuple[Callable[..., None], Callable[[], tuple]]] = {
        "scalar": (scalar, lambda: (rng.integers(0, 300, 1 << 20, np.int16).tobytes(), None)),
        "simd": (simd, lambda: arrays((256, 256))),
        "memory": (memory, lambda: arrays((16, 1024, 1024))),
    }
    out = {}
    for kind, (fn, make) in kinds.items():
        inputs = [make() for _ in range(cpus)]
        threads = [threading.Thread(target=fn, args=x) for x in inputs]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        out[f"probe_{kind}_s"] = round(time.perf_counter() - t0, 3)
    return out


def _measure(store: str, work: str, tag: str) -> dict[str, float]:
    import rasterio

    import srlib
    from srlib.config import available_cpus
    from srlib.product.cog import _levels, _store_levels
    from srlib.product.cog_tiles import _tile_count

    cpus = available_cpus()
    srlib.to_cog(_warm_up(work, tag), os.path.join(work, f"warm-{tag}.tif"))
    usage: dict[str, dict] = {"to_zarr": {}, "to_cog_srlib": {}, "to_cog_gdal": {}}
    to_zarr = _timed(srlib.to_zarr, srlib.super_resolve(srlib.sample_scene()),
                     os.path.join(work, f"zarr-{tag}.zarr"), usage=usage["to_zarr"])
    cogs = {engine: os.path.join(work, f"cog-{engine}-{tag}.tif")
            for engine in ("srlib", "gdal")}
    to_cog = {engine: _timed(srlib.to_cog, store, path, engine=engine, threads=cpus,
                             usage=usage[f"to_cog_{engine}"])
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
        grid = {"crs": src.crs, "transform": src.transform}
    full = data.nbytes
    profile = {**grid, "driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": "int16", "tiled": True, "blockxsize": 512,
               "blockysize": 512, "compress": "lzw", "predictor": 2, "num_threads": str(cpus)}
    os.sync()
    t0 = time.perf_counter()
    with rasterio.open(os.path.join(work, f"plain-{tag}.tif"), "w", **profile) as dst:
        dst.write(data)
    compress = time.perf_counter() - t0
    floor = full / 1e6 / compress / cpus
    row = {"cpus": cpus, "raw_mb": round(raw / 1e6, 1), "full_mb": round(full / 1e6, 1),
           "to_zarr_s": round(to_zarr, 2), "read_s": round(read, 2),
           "compress_s": round(compress, 2), "floor_mb_s_per_cpu": round(floor, 1)}
    row.update(_probe())
    for stage, used in usage.items():
        row.update({f"{stage}_{k}": v for k, v in used.items()})
    for engine, seconds in to_cog.items():
        rate = raw / 1e6 / seconds / cpus
        row[f"to_cog_{engine}_s"] = round(seconds, 2)
        row[f"to_cog_{engine}_mb_s_per_cpu"] = round(rate, 1)
        row[f"to_cog_{engine}_of_floor"] = round(rate / floor, 2)
    return row


def _warm_up(work: str, tag: str) -> Path:
    """Run the process's one-off start-up (imports, the lanes, GDAL's codec probe) before
    any clock, as in run.py: it does not grow with the data, the stages do."""
    import srlib

    small = srlib.sample_scene().isel(y=slice(0, 64), x=slice(0, 64))
    return srlib.to_zarr(srlib.super_resolve(small), os.path.join(work, f"warm-{tag}.zarr"))


def _measure_zarr(work: str, tag: str) -> dict[str, float]:
    """``to_zarr`` alone, after the same warm-up (a side-by-side child)."""
    import srlib

    _warm_up(work, tag)
    seconds = _timed(srlib.to_zarr, srlib.super_resolve(srlib.sample_scene()),
                     os.path.join(work, f"zarr-{tag}.zarr"))
    return {"to_zarr_s": round(seconds, 2)}


def _side_by_side(work: str, allowed: list[int], rnd: int) -> list[float]:
    """Seconds of N independent 1-CPU ``to_zarr`` runs started together, one per CPU."""
    procs = [subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, __file__,
                               "--measure-zarr", work, f"side-{cpu}-{rnd}"],
                              stdout=subprocess.PIPE, text=True) for cpu in allowed]
    out = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a side-by-side to_zarr failed")
    for cpu in allowed:
        for name in (f"zarr-side-{cpu}-{rnd}.zarr", f"warm-side-{cpu}-{rnd}.zarr"):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    return [json.loads(o.strip().splitlines()[-1])["to_zarr_s"] for o in out]


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


def _same_store(a: str, b: str) -> bool:
    """Whether two Zarr stores hold the same chunk files, byte for byte (metadata aside)."""
    def chunks(root: str) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
                if p.is_file() and not p.name.startswith(".z")}
    return chunks(a) == chunks(b)


_PROBES = ("probe_scalar_s", "probe_simd_s", "probe_memory_s")
_COLUMNS = ("to_zarr_s", "to_cog_srlib_s", "to_cog_gdal_s", "read_s", "compress_s",
            "to_cog_srlib_mb_s_per_cpu", "to_cog_srlib_of_floor", "to_cog_gdal_mb_s_per_cpu",
            "to_cog_gdal_of_floor", "floor_mb_s_per_cpu", *_PROBES)


def _median_rows(rows: list[dict]) -> list[dict]:
    import statistics

    out = []
    for cpus in sorted({r["cpus"] for r in rows}):
        mine = [r for r in rows if r["cpus"] == cpus]
        row = {"cpus": cpus, "round": "median", **{
            c: round(statistics.median(r[c] for r in mine), 2) for c in _COLUMNS},
            "same_pixels": all(r["same_pixels"] for r in mine),
            "same_store": all(r["same_store"] for r in mine)}
        out.append(row)
    return out


def main() -> None:
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", default=f"1,{len(os.sched_getaffinity(0))}")
    parser.add_argument("--repeat", type=int, default=3,
                        help="Rounds, the CPU counts interleaved in each (default 3); the "
                             "medians decide.")
    parser.add_argument("--out", default=None, help="Write the rows as JSON here.")
    parser.add_argument("--dir", default=None,
                        help="Where the stores and COGs go (default $TMPDIR); /dev/shm "
                             "takes the disk out and leaves the CPUs.")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--measure-zarr", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child: one pinned measurement
        print(json.dumps(_measure(*args.measure)))
        return
    if args.measure_zarr:  # a side-by-side child
        print(json.dumps(_measure_zarr(*args.measure_zarr)))
        return
    work = tempfile.mkdtemp(prefix="srlib-write-split-", dir=args.dir)
    store = os.path.join(work, "demo.zarr")
    code = ("import srlib; srlib.to_zarr(srlib.super_resolve(srlib.sample_scene()), "
            f"{store!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    allowed = sorted(os.sched_getaffinity(0))
    most = max(int(c) for c in args.cpus.split(","))
    rows, side = [], []
    try:
        for rnd in range(args.repeat):
            for n in (int(c) for c in args.cpus.split(",")):
                cpus = ",".join(str(c) for c in allowed[:n])
                tag = f"{n}-{rnd}"
                out = subprocess.run(["taskset", "-c", cpus, sys.executable, __file__,
                                      "--measure", store, work, tag], check=True,
                                     capture_output=True, text=True)
                row = {"round": rnd, **json.loads(out.stdout.strip().splitlines()[-1])}
                row["same_pixels"] = _same_pixels(os.path.join(work, f"cog-srlib-{tag}.tif"),
                                                  os.path.join(work, f"cog-gdal-{tag}.tif"))
                row["same_store"] = _same_store(os.path.join(work, f"zarr-{tag}.zarr"), store)
                rows.append(row)
                print(json.dumps(row), flush=True)
                # the single files (~3 GB a row) go now; the rows' stores (3,000 files
                # each) at the end: on ext4 without a journal (this VM's disk) every new
                # file is checked against the inodes deleted in the last minutes, and the
                # next row's chunks, written right after deleting a store, took up to
                # 0.6 ms each to create (and its to_zarr a quarter longer)
                for path in Path(work).iterdir():
                    if path.is_file():
                        path.unlink()
            if most > 1:
                side.append(_side_by_side(work, allowed[:most], rnd))
                print(json.dumps({"round": rnd, "side_by_side_to_zarr_s": side[-1]}),
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = _median_rows(rows)
    base = rows[0]
    print(f"raw: {base['full_mb']} MB at full resolution, {base['raw_mb']} MB with overviews")
    print("| CPUs | round | to_zarr s | to_cog srlib s | to_cog gdal s | read s | floor s |"
          " srlib MB/s/CPU (of floor) | gdal MB/s/CPU (of floor) | floor MB/s/CPU |"
          " same pixels | same store |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r["cpus"], r["round"])) + medians:
        print(f"| {row['cpus']} | {row['round']} | {row['to_zarr_s']} |"
              f" {row['to_cog_srlib_s']} | {row['to_cog_gdal_s']} | {row['read_s']} |"
              f" {row['compress_s']} |"
              f" {row['to_cog_srlib_mb_s_per_cpu']} ({row['to_cog_srlib_of_floor']}) |"
              f" {row['to_cog_gdal_mb_s_per_cpu']} ({row['to_cog_gdal_of_floor']}) |"
              f" {row['floor_mb_s_per_cpu']} | {row['same_pixels']} | {row['same_store']} |")
    print("\nCPU seconds per stage: this process / the rest of the machine meanwhile / "
          "stolen by the hypervisor")
    print("| CPUs | round | to_zarr | to_cog srlib | to_cog gdal |")
    print("|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r["cpus"], r["round"])):
        cells = [f"{row[f'{st}_cpu_s']} / {row[f'{st}_others_s']} / {row[f'{st}_steal_s']}"
                 for st in ("to_zarr", "to_cog_srlib", "to_cog_gdal")]
        print(f"| {row['cpus']} | {row['round']} | " + " | ".join(cells) + " |")
    one = medians[0]
    for row in medians[1:]:
        print(f"speed-up of the medians, {one['cpus']} -> {row['cpus']} CPUs: to_zarr "
              f"{one['to_zarr_s'] / row['to_zarr_s']:.2f}x, to_cog srlib "
              f"{one['to_cog_srlib_s'] / row['to_cog_srlib_s']:.2f}x, to_cog gdal "
              f"{one['to_cog_gdal_s'] / row['to_cog_gdal_s']:.2f}x, compression floor "
              f"{one['compress_s'] / row['compress_s']:.2f}x")
        # the machine's own ceiling: N threads do N times one thread's work
        n = row["cpus"] / one["cpus"]
        print("the machine's scaling for the same work per CPU (probes): " + ", ".join(
            f"{k[6:-2]} {n * one[k] / row[k]:.2f}x" for k in _PROBES))
        if side and row["cpus"] == most:
            each = statistics.median(t for times in side for t in times)
            print(f"to_zarr as {most} independent 1-CPU processes side by side: "
                  f"{each:.2f} s each (median), so the machine allows "
                  f"{most * one['to_zarr_s'] / each:.2f}x for this work; one process on "
                  f"{most} CPUs reaches {one['to_zarr_s'] / row['to_zarr_s']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "medians": medians,
                                              "side_by_side_to_zarr_s": side}, indent=2))


if __name__ == "__main__":
    main()
