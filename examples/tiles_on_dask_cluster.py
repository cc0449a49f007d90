"""Super-resolve several MGRS tiles of one date on a Dask cluster.

Run: python examples/tiles_on_dask_cluster.py 20250731 24MWV 24MVV [--publish s3://b/p]

Each tile is one `srlib.jobs.run_dr` job; the cluster (a LocalCluster here; a
dask_jobqueue.SLURMCluster on HPC) executes the dask graphs of every job, and the model
is loaded once per worker.
"""

from __future__ import annotations

import argparse

from distributed import Client, LocalCluster

from srlib.jobs import run_dr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("date")
    parser.add_argument("tiles", nargs="+")
    parser.add_argument("--publish", default=None)
    parser.add_argument("--out", default="out")
    args = parser.parse_args()
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster):
        for tile in args.tiles:
            result = run_dr(date=args.date, mgrs=tile, out=args.out, publish=args.publish)
            print(tile, result.status, result.cog, *result.published)


if __name__ == "__main__":
    main()
