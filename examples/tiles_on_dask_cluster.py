"""Super-resolve several MGRS tiles of one date on a Dask cluster.

Run: python examples/tiles_on_dask_cluster.py 20250731 24MWV 24MVV [--publish s3://b/p]
     [--slurm-profile poznan --jobs 4]

The tiles are one campaign (`srlib.ops.run_campaign`): each tile's whole `run_dr` job
(inference, Zarr, COG, QC, STAC Item, publishing) runs as one task on a worker of the
cluster (a LocalCluster, or with --slurm-profile a dask_jobqueue.SLURMCluster whose jobs
each hold one GPU), one job per worker at a time; the client only
submits and collects. A failing tile is reported and the others finish. --out must be on
storage that every node sees.
"""

from __future__ import annotations

import argparse

import dask
from distributed import Client, LocalCluster

from srlib.ops import dask_cluster, load_profile, run_campaign


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("date")
    parser.add_argument("tiles", nargs="+")
    parser.add_argument("--publish", default=None)
    parser.add_argument("--out", default="out")
    parser.add_argument("--slurm-profile", default=None,
                        help="poznan, betzy, saga or a profile JSON: run on SLURM jobs")
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs (one GPU each)")
    args = parser.parse_args()
    if args.slurm_profile:
        cluster = dask_cluster(load_profile(args.slurm_profile), log_directory="logs")
        cluster.scale(jobs=args.jobs)
    else:
        # keep malloc's defaults in the workers, as dask_cluster's jobs do (the nanny's
        # MALLOC_TRIM_THRESHOLD_ made srlib's CPU path 1.4-1.5x slower; examples/HPC.md)
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
        cluster = LocalCluster(n_workers=2, threads_per_worker=1)
    with cluster, Client(cluster) as client:
        outcomes = run_campaign([{"date": args.date, "mgrs": t} for t in args.tiles],
                                client=client, out=args.out, publish=args.publish,
                                on_outcome=lambda o: print(o.line()))
    if any(o.status == "failed" for o in outcomes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
