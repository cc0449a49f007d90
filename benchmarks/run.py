"""srlib benchmarks: one command, figures side by side with the legacy approach and floors.

Usage::

    python benchmarks/run.py                      # DEFAULT_PLAN: ~45 min on 2 cores
    python benchmarks/run.py --sizes 512 --models bicubic swin2sr
    python benchmarks/run.py --repeat 3           # each measurement 3 times (default 2)

Each measurement runs in its own subprocess (so peak RSS is per measurement) on an input
made from the bundled real sample, mirrored to size, ``--repeat`` times interleaved; the
fastest run of each counts (on a shared 2-core VM one process can run 30% slower than the
next with the same code). Results go to
``benchmarks/results/results.json`` and ``benchmarks/results/results.md``.

Measured per input size and model:
- ``srlib``: super_resolve -> to_zarr (inference + Zarr write) -> to_cog, wall time of
  each stage, input ha/min, output Mpx/s, Zarr and COG MB/s of raw output, peak RSS;
- ``legacy``: the replaced pipeline, same input and model: patches accumulated into a
  numpy memmap, then 512 x 512 blocks written one by one from one process into an LZW
  GeoTIFF, then overviews;
- ``kernel floor``: the bare model over the same patches in a tight loop with torch's
  default threads, no I/O; and the ``lanes floor``: the same forward passes run the way
  srlib's kernel runs them (single-threaded, one per core at once), nothing else;
- ``compression floor``: GDAL writing the same in-memory output once as a tiled LZW
  (predictor 2) GeoTIFF with all cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# make bench: bicubic and Swin2SR small at every size; the lightweight config at 512
DEFAULT_PLAN = [("bicubic", [512, 1024, 2048]), ("swin2sr", [512, 1024, 2048]),
                ("swin2sr-light", [512])]
SCALE = 10
LR_CHUNK = 256


def make_input(size: int):
    """The real sample mirrored (numpy 'symmetric') to ``size`` x ``size`` pixels, lazily.

    Dask-backed and read from the bundled files block by block, as ``srlib.load_s2``
    reads its scenes: the input is never held in memory whole.
    """
    import dask.array as da
    import numpy as np
    import xarray as xr
    from affine import Affine

    import srlib

    src = srlib.sample_scene()
    t = src.rio.transform()
    variables = {}
    for name, var in src.data_vars.items():
        arr = var.data[:size, :size]
        while arr.shape != (size, size):  # mirror in steps: a pad may not exceed the size
            pad = ((0, min(size - arr.shape[0], arr.shape[0])),
                   (0, min(size - arr.shape[1], arr.shape[1])))
            arr = da.pad(arr, pad, mode="symmetric")
        variables[name] = xr.DataArray(arr.rechunk(512), dims=("y", "x"), attrs=var.attrs)
    ds = xr.Dataset(variables, coords={
        "y": t.f + (np.arange(size) + 0.5) * t.e, "x": t.c + (np.arange(size) + 0.5) * t.a})
    return ds.rio.write_crs(src.rio.crs).rio.write_transform(Affine(t.a, 0, t.c, 0, t.e, t.f))


def model_spec(name: str):
    import srlib
    from srlib.models import SWIN2SR_LIGHT

    if name == "bicubic":
        return srlib.load_model("bicubic")
    if name == "swin2sr-light":  # the paper's lightweight configuration
        return srlib.load_model("swin2sr", random_weights=True, **SWIN2SR_LIGHT)
    return srlib.load_model("swin2sr", random_weights=True)  # srlib.models.SWIN2SR_SMALL


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm(model: str):
    """The model spec, with the one-off start-up of a process done before any clock.

    Every kind alike: the module is built and loaded, and the batch planner's meta-device
    pass (2-3 s once per process, most of it importing ``torch._dynamo``) has run.
    """
    from srlib.engine.batching import max_safe_batch
    from srlib.models import loaded_module

    spec = model_spec(model)
    max_safe_batch(spec, spec.patch_size)
    loaded_module(spec, "cpu")
    return spec


def run_srlib(size: int, model: str, workdir: Path) -> dict:
    import srlib

    ds = make_input(size)
    spec = _warm(model)
    t0 = time.perf_counter()
    sr = srlib.super_resolve(ds, spec)  # default chunks
    store = srlib.to_zarr(sr, workdir / "p.zarr")
    t1 = time.perf_counter()
    cog = srlib.to_cog(store, workdir / "p.tif")
    t2 = time.perf_counter()
    return {"zarr_s": t1 - t0, "cog_s": t2 - t1, "total_s": t2 - t0,
            "cog_bytes": cog.stat().st_size, "peak_rss_mb": _peak_rss_mb()}


def _du(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_tile(size: int, model: str, workdir: Path) -> dict:
    """The whole path of a job, as ``srlib dr`` runs it: Zarr, overviews, COG, default QC.

    Stage times come from the job's own progress display (:func:`srlib.job_progress`,
    here in log mode: its lines go to stderr, as in a SLURM log).
    """
    import srlib
    from srlib.progress import job_stages

    ds = make_input(size)
    spec = _warm(model)
    cog = workdir / "tile.tif"
    t0 = time.perf_counter()
    with srlib.job_progress(job_stages(model=spec.name), mode="log") as progress:
        report = srlib.super_resolve_to_cog(ds, cog, model=spec)
    total = time.perf_counter() - t0
    zarr_bytes, cog_bytes = _du(cog.with_suffix(".zarr")), _du(cog)
    return {"total_s": total, **{f"{k}_s": v for k, v in progress.durations().items()},
            "qc_passed": report.passed, "qc_thresholds": report.thresholds,
            "qc_timing": next(c.value for c in report.checks if c.name == "timing"),
            "zarr_bytes": zarr_bytes, "cog_bytes": cog_bytes,
            "disk_bytes": zarr_bytes + cog_bytes, "peak_rss_mb": _peak_rss_mb(),
            "progress_lines": progress.lines}


def tile_rows(size: int, model: str, reference: int, cores: list[int]) -> list[dict]:
    """The tile row and the ``reference`` px row of the same path, measured in one run."""
    rows = []
    for px in (reference, size):
        root = Path(tempfile.mkdtemp(prefix=f"srlib-tile-{px}-"))
        try:
            m = measure("tile", px, model, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        raw_mb = (px * SCALE) ** 2 * 5 * 2 / 1e6
        cpus = os.cpu_count() or 1
        full_mb = (10980 * SCALE) ** 2 * 5 * 2 / 1e6
        # per-core rate of the whole path; a full tile is (10980 / px)**2 times the work
        per_core_mb_s = raw_mb / m["total_s"] / cpus
        rows.append({"size": px, "model": model, "raw_output_mb": raw_mb, **{
            k: v for k, v in m.items() if k != "progress_lines"},
            "raw_mb_s": raw_mb / m["total_s"], "per_core_raw_mb_s": per_core_mb_s,
            "full_tile_h": {n: full_mb / (per_core_mb_s * n) / 3600 for n in cores},
            "progress_lines": m["progress_lines"]})
    rows[1]["rss_vs_reference"] = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    return rows


def tile_markdown(rows: list[dict], meta: dict) -> str:
    cores = list(rows[0]["full_tile_h"])
    stages = ["inference_s", "overviews_s", "cog_s", "qc_s"]
    head = (["input px", "model", "total s", *[s[:-2] + " s" for s in stages],
             "raw MB/s", "peak RSS MB", "disk GB", "QC"]
            + [f"full tile h on {n} cores" for n in cores])
    lines = [f"Machine: {meta['machine']}, {meta['cpus']} CPUs, torch {meta['torch']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["size"]), r["model"], f"{r['total_s']:.0f}",
                 *[f"{r.get(s, 0):.0f}" for s in stages], f"{r['raw_mb_s']:.1f}",
                 f"{r['peak_rss_mb']:.0f}", f"{r['disk_bytes'] / 1e9:.1f}",
                 "passed" if r["qc_passed"] else "FAILED",
                 *[f"{r['full_tile_h'][n]:.2f}" for n in cores]]
        lines.append("| " + " | ".join(cells) + " |")
    ratio = rows[-1].get("rss_vs_reference")
    if ratio is not None:
        lines += ["", f"Peak RSS {rows[-1]['size']} px / {rows[0]['size']} px: {ratio:.2f}"]
    return "\n".join(lines) + "\n"


def _blocks(size: int, halo: int):
    for y0 in range(0, size, LR_CHUNK):
        for x0 in range(0, size, LR_CHUNK):
            yield y0, x0, min(LR_CHUNK, size - y0), min(LR_CHUNK, size - x0)


def _prepared(size: int, model: str):
    """Input stack (float32 reflectance x 1e4, reflect-padded by the halo) and config."""
    import numpy as np

    import srlib
    from srlib.engine import KernelConfig, input_reflectance

    spec = _warm(model)
    ds = make_input(size)
    bands = input_reflectance(ds, spec.bands_in)
    scl = ds["scl"].data.astype(np.float32)
    stack = np.stack([np.asarray(b) for b in [*bands, scl]])
    h = spec.halo
    padded = np.pad(stack, ((0, 0), (h, h), (h, h)), mode="symmetric")
    from srlib.engine.batching import max_safe_batch, peak_elements

    cfg = KernelConfig(spec=spec, n_bands=len(bands), has_scl=True, device="cpu",
                       batch_size=None, safe_batch=max_safe_batch(spec, spec.patch_size),
                       peak_per_pixel=peak_elements(spec, spec.patch_size) / spec.patch_size**2,
                       precision="fp32", y_starts=(0,), x_starts=(0,))
    return spec, padded, cfg, srlib


def _block(padded, y0, x0, bh, bw, halo):
    return padded[:, y0 : y0 + bh + 2 * halo, x0 : x0 + bw + 2 * halo]


def _gtiff_profile(out: int, **options) -> dict:
    """Tiled LZW (predictor 2) GeoTIFF of the 5-band int16 output, ``out`` px a side."""
    from rasterio.transform import from_origin

    return dict(driver="GTiff", width=out, height=out, count=5, dtype="int16",
                crs="EPSG:32629", transform=from_origin(0, 0, 10, 10), nodata=-32768,
                tiled=True, blockxsize=512, blockysize=512, compress="lzw", predictor=2,
                BIGTIFF="IF_SAFER", **options)


def run_legacy(size: int, model: str, workdir: Path) -> dict:
    from dataclasses import replace

    import numpy as np
    import rasterio
    from rasterio.enums import Resampling

    from srlib.engine import sr_block

    spec, padded, cfg, _ = _prepared(size, model)
    # the legacy ran its batches one after another with torch's own (intra-op) threads,
    # not in srlib's parallel lanes: the same kernel otherwise
    cfg = replace(cfg, lanes=0)
    halo, out = spec.halo, size * SCALE
    t0 = time.perf_counter()
    mm = np.memmap(workdir / "legacy.dat", dtype=np.int16, mode="w+", shape=(5, out, out))
    for y0, x0, bh, bw in _blocks(size, halo):  # the legacy's 256 px tiles
        info = {None: {"chunk-location": (0, 0, 0)}}
        block_cfg = replace(cfg, y_starts=(y0,), x_starts=(x0,))
        res = sr_block(_block(padded, y0, x0, bh, bw, halo), info, cfg=block_cfg)
        mm[:, y0 * SCALE : (y0 + bh) * SCALE, x0 * SCALE : (x0 + bw) * SCALE] = res
    mm.flush()
    t1 = time.perf_counter()
    profile = _gtiff_profile(out)
    path = workdir / "legacy.tif"
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, out, 512):
            for x in range(0, out, 512):
                win = ((y, min(y + 512, out)), (x, min(x + 512, out)))
                dst.write(np.asarray(mm[:, win[0][0]:win[0][1], win[1][0]:win[1][1]]),
                          window=rasterio.windows.Window.from_slices(*win))
        t2 = time.perf_counter()
        levels, n = [], out
        while n > 512:
            levels.append(2 ** (len(levels) + 1))
            n = -(-n // 2)
        dst.build_overviews(levels, Resampling.average)
    t3 = time.perf_counter()
    return {"inference_s": t1 - t0, "write_s": t2 - t1, "overviews_s": t3 - t2,
            "total_s": t3 - t0, "peak_rss_mb": _peak_rss_mb()}


def run_floors(size: int, model: str, workdir: Path) -> dict:
    import numpy as np
    import rasterio
    import torch

    from srlib.models import loaded_module

    spec, padded, cfg, _ = _prepared(size, model)
    module = loaded_module(spec, "cpu")
    mean, std = spec.stats.input.arrays()
    p, halo = spec.patch_size, spec.halo
    # the floor: every patch of the scene once (trim: the blocks; feather: the scene's
    # patch grid, as if the scene were one chunk)
    patches = []
    if spec.blend == "trim":
        for y0, x0, bh, bw in _blocks(size, halo):
            patches.append((_block(padded, y0, x0, bh, bw, halo)[: len(spec.bands_in)]
                            - mean) / std)
    else:
        from srlib.engine import patch_grid

        origins = patch_grid(0, size, p, p - spec.overlap)
        scene = (padded[: len(spec.bands_in)] - mean) / std  # padded by halo = patch
        for py in origins:
            for px in origins:
                patches.append(scene[:, py + halo : py + halo + p, px + halo : px + halo + p])
    # the pipeline's batch size (trim: one block per call, as the pipeline)
    from srlib.engine import Runner, forward_all

    run = Runner(cfg)
    step = 1 if spec.blend == "trim" else run.batch_size(p)
    batches = [patches[i : i + step] for i in range(0, len(patches), step)]

    def make(batch):
        return np.ascontiguousarray(np.stack(batch), dtype=np.float32)

    # plain: a tight loop with torch's defaults (intra-op threads over every core)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            module(torch.from_numpy(make(batch)))
    t_plain = time.perf_counter() - t0
    # lanes: the same forward passes run as srlib's kernel runs them (one single-threaded
    # pass per core at once, srlib.engine.forward_all), nothing else
    t0 = time.perf_counter()
    forward_all(run, batches, make, lambda batch, result: None)
    t1 = time.perf_counter()
    out = size * SCALE
    data = _output_in_memory(workdir.parent / "srlib" / "p.zarr", out)
    real = data is not None
    if data is None:
        data = _synthetic(out)
    profile = _gtiff_profile(out, num_threads="all_cpus")
    t2 = time.perf_counter()
    with rasterio.open(workdir / "floor.tif", "w", **profile) as dst:
        dst.write(data)
    t3 = time.perf_counter()
    return {"kernel_s": t_plain, "kernel_lanes_s": t1 - t0, "patches": len(patches),
            "compression_s": t3 - t2,
            "real_output": real, "peak_rss_mb": _peak_rss_mb()}


def _output_in_memory(store: Path, out: int):
    """srlib's output (5 bands int16) read into one array, band by band; None if absent.

    Preallocated and filled in place: the 2048 px output is 4.2 GB, and a stack of
    per-band copies would need three times that.
    """
    import numpy as np

    import srlib

    if not store.exists():
        return None
    ds = srlib.open_zarr(store)
    data = np.empty((len(ds.data_vars), out, out), dtype=np.int16)
    for i, name in enumerate(ds.data_vars):
        data[i] = ds[name].values  # quality is uint8 in the store: cast on assignment
    return data


def _synthetic(out: int):
    """Smooth-ish int16 of the output's size, when no srlib output is there (``--one``)."""
    import numpy as np

    data = np.empty((5, out, out), dtype=np.int16)
    rng = np.random.default_rng(0)
    for band in data:
        band[:] = rng.normal(2500, 5, size=(out, out)).astype(np.float32)
    return data


RUNNERS = {"srlib": run_srlib, "legacy": run_legacy, "floors": run_floors, "tile": run_tile}


def one(kind: str, size: int, model: str, workdir: Path) -> None:
    import srlib

    srlib.flush_subnormals()  # as the srlib command does; for every kind alike
    workdir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(RUNNERS[kind](size, model, workdir)))


def measure(kind: str, size: int, model: str, root: Path) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, str(size), model, str(root / kind)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{kind} {size} {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    """Fastest time of each stage over repeated runs, and the largest peak RSS."""
    out = dict(runs[0])
    for key in out:
        if key.endswith("_s"):
            out[key] = min(r[key] for r in runs)
        elif key == "peak_rss_mb":
            out[key] = max(r[key] for r in runs)
    return out


def summarise(size: int, model: str, m: dict) -> dict:
    out_px = (size * SCALE) ** 2
    raw_mb = out_px * 5 * 2 / 1e6
    area_ha = size * size * 100 * 100 / 1e4  # sample grid: 100 m pixels
    s, leg, fl = m["srlib"], m["legacy"], m["floors"]
    return {
        "size": size, "model": model, "output_px": out_px, "raw_output_mb": raw_mb,
        "srlib_total_s": s["total_s"], "srlib_zarr_s": s["zarr_s"], "srlib_cog_s": s["cog_s"],
        "zarr_mb_s": raw_mb / s["zarr_s"], "cog_mb_s": raw_mb / s["cog_s"],
        "input_ha_per_min": area_ha / (s["total_s"] / 60),
        "output_mpx_s": out_px / 1e6 / s["total_s"],
        "srlib_peak_rss_mb": s["peak_rss_mb"],
        "legacy_total_s": leg["total_s"], "legacy_write_s": leg["write_s"] + leg["overviews_s"],
        "legacy_peak_rss_mb": leg["peak_rss_mb"],
        "speedup_vs_legacy": leg["total_s"] / s["total_s"],
        "kernel_floor_s": fl["kernel_s"], "overhead_vs_kernel": s["total_s"] / fl["kernel_s"],
        "kernel_lanes_floor_s": fl["kernel_lanes_s"],
        "overhead_vs_lanes": s["total_s"] / fl["kernel_lanes_s"],
        "compression_floor_s": fl["compression_s"],
        "cog_vs_compression_floor": s["cog_s"] / fl["compression_s"],
    }


def markdown(rows: list[dict], meta: dict) -> str:
    cols = [("size", "input px"), ("model", "model"), ("srlib_total_s", "srlib s"),
            ("zarr_mb_s", "Zarr MB/s"), ("cog_mb_s", "COG MB/s"),
            ("input_ha_per_min", "ha/min"), ("output_mpx_s", "out Mpx/s"),
            ("srlib_peak_rss_mb", "srlib RSS MB"), ("legacy_total_s", "legacy s"),
            ("legacy_peak_rss_mb", "legacy RSS MB"), ("speedup_vs_legacy", "x legacy"),
            ("overhead_vs_kernel", "/ kernel floor"), ("overhead_vs_lanes", "/ lanes floor"),
            ("cog_vs_compression_floor", "COG / compression floor")]
    lines = [f"Machine: {meta['machine']}, {meta['cpus']} CPUs, torch {meta['torch']}", "",
             "| " + " | ".join(c[1] for c in cols) + " |",
             "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _check_disk(size: int) -> None:
    """Refuse a size whose files do not fit: a full disk kills the legacy's memmap."""
    need = 4 * 5 * 2 * (size * SCALE) ** 2  # srlib Zarr + COG, legacy memmap + GeoTIFF
    tmp = tempfile.gettempdir()
    free = shutil.disk_usage(tmp).free
    if free < need:
        raise SystemExit(f"{size} px needs about {need / 1e9:.0f} GB free in {tmp}, which has "
                         f"{free / 1e9:.0f} GB: free some space or point TMPDIR at a larger disk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="input sizes (default: the plan in DEFAULT_PLAN)")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--one", nargs=4, metavar=("KIND", "SIZE", "MODEL", "DIR"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tile", type=int, nargs="?", const=5490, default=None,
                        metavar="PX", help="the whole path with default QC at PX input px "
                        "(default 5490: a quarter tile) beside the 2048 px row; projects a "
                        "full tile")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each measurement; the fastest counts (noise only adds)")
    args = parser.parse_args()
    if args.one:
        kind, size, model, workdir = args.one
        one(kind, int(size), model, Path(workdir))
        return
    import torch

    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.tile:
        model = (args.models or ["bicubic"])[0]
        reference = 2048 if args.tile > 2048 else args.tile // 2  # (small: a smoke test)
        rows = tile_rows(args.tile, model, reference, [2, 16, 64])
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"tile-{args.tile}-{model}"
        (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                          indent=2))
        (args.out / f"{name}.md").write_text(tile_markdown(rows, meta))
        print(tile_markdown(rows, meta))
        return
    if args.models or args.sizes:
        plan = [(m, args.sizes or [512, 1024, 2048]) for m in args.models or ["bicubic"]]
    else:
        plan = DEFAULT_PLAN
    for size in {size for _, sizes in plan for size in sizes}:
        _check_disk(size)
    rows = []
    for model, sizes in plan:
        for size in sizes:
            runs: dict[str, list[dict]] = {"srlib": [], "legacy": [], "floors": []}
            for _ in range(args.repeat):  # interleaved, so drift hits every kind alike
                root = Path(tempfile.mkdtemp(prefix=f"srlib-bench-{size}-"))
                try:
                    for kind, done in runs.items():
                        done.append(measure(kind, size, model, root))
                finally:
                    shutil.rmtree(root, ignore_errors=True)
            measured = {kind: best(done) for kind, done in runs.items()}
            rows.append(summarise(size, model, measured) | {"raw": measured, "runs": runs})
            print(markdown(rows[-1:], meta), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / "results.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
