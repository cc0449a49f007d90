"""Campaign throughput: N jobs on a LocalCluster of 1 and of 2 single-threaded workers.

The bundled sample is served as it is in production (a STAC API, stac-fastapi-static, over
S3, moto's server, on loopback: the servers the integration tests use) and cut into N
AOIs of the same size, each one job ("tile") of :func:`srlib.ops.run_campaign`: load,
inference (bicubic), Zarr, COG, QC, quicklooks, STAC Item and manifest, all on the
workers. Both clusters run the same N jobs, one after the other in this run, each into a
fresh output folder; the clusters are started before the clock. Reports jobs/hour, the
speed-up from 1 to 2 workers, and, from a per-node rate (``--node-tiles-per-hour``, the
GPU-node figure of benchmarks/README.md), the projection for K nodes.

Usage: python benchmarks/campaign.py [--jobs 8] [--km 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import CREDENTIALS, loopback_sources  # noqa: E402


def boxes(n: int, km: float) -> list[list[float]]:
    """``n`` AOIs of about ``km`` x ``km`` inside the sample scene, side by side."""
    step = km / 100.0
    out = []
    for k in range(n):
        i, j = k % 4, k // 4
        lon, lat = -11.62 + i * (step + 0.005), 24.45 + j * (step + 0.005)
        out.append([round(lon, 4), round(lat, 4), round(lon + step, 4), round(lat + step, 4)])
    return out


def measure(workers: int, requests: list[dict], url: str, work: Path) -> dict:
    import dask
    from distributed import Client, LocalCluster

    from srlib.ops.campaign import run_campaign

    out = work / f"out-{workers}"
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    with cluster, Client(cluster) as client:
        # warm-up: each worker imports srlib's stack and opens the catalogue once
        run_campaign(requests[:workers], client=client, out=work / f"warm-{workers}",
                     catalog=url)
        t0 = time.perf_counter()
        outcomes = run_campaign(requests, client=client, out=out, catalog=url)
        seconds = time.perf_counter() - t0
    bad = [o.line() for o in outcomes if o.status != "done"]
    if bad:
        raise SystemExit(f"campaign on {workers} worker(s) failed: {bad}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / f"warm-{workers}", ignore_errors=True)
    return {"workers": workers, "jobs": len(requests), "seconds": round(seconds, 2),
            "jobs_per_hour": round(len(requests) * 3600 / seconds, 1),
            "job_workers": len({o.worker for o in outcomes})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--km", type=float, default=7.0, help="AOI side (km)")
    parser.add_argument("--node-tiles-per-hour", type=float, default=2.4,
                        help="one GPU node's whole-tile rate (25 min/tile measured on the "
                             "H200 node before #24: 2.4/h)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/campaign.json"))
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    os.environ["AWS_VIRTUAL_HOSTING"] = "FALSE"
    requests = [{"date": "20200219", "aoi": box} for box in boxes(args.jobs, args.km)]
    work = Path(tempfile.mkdtemp(prefix="srlib-campaign-"))
    try:
        with loopback_sources(work / "stac") as (url, endpoint, _item):
            os.environ["AWS_ENDPOINT_URL_S3"] = f"http://{endpoint}"
            rows = [measure(w, requests, url, work) for w in (1, 2)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    speedup = rows[0]["seconds"] / rows[1]["seconds"]
    result = {"rows": rows, "speedup_1_to_2": round(speedup, 2), "cpus": os.cpu_count(),
              "aoi_km": args.km,
              "projection": {f"{k}_nodes_tiles_per_hour": round(k * args.node_tiles_per_hour, 1)
                             for k in (1, 4, 8, 16)}}
    print(f"{'workers':>8} {'jobs':>5} {'seconds':>8} {'jobs/h':>8}")
    for row in rows:
        print(f"{row['workers']:>8} {row['jobs']:>5} {row['seconds']:>8.1f} "
              f"{row['jobs_per_hour']:>8.1f}")
    print(f"speed-up 1 -> 2 workers: {speedup:.2f}x")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
