"""Super-resolve a list of AOIs read from a CSV file (columns: date, min_lon, min_lat,
max_lon, max_lat[, name]).

Run: python examples/aois_from_csv.py aois.csv [--publish s3://bucket/prefix]

A failed AOI is reported and the next one goes on; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import csv
import sys

import srlib
from srlib.ops import run_dr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--publish", default=None)
    parser.add_argument("--out", default="out")
    args = parser.parse_args()
    failed = 0
    with open(args.csv, newline="") as fh:
        for row in csv.DictReader(fh):
            aoi = tuple(float(row[k]) for k in ("min_lon", "min_lat", "max_lon", "max_lat"))
            name = row.get("name") or f"{row['date']} {aoi}"
            try:
                result = run_dr(date=row["date"], aoi=aoi, out=args.out, publish=args.publish)
                status = result.delivered if result.status == "done" else result.status
                print(name, status, result.cog, result.reason or "")
            except srlib.SrlibError as err:
                failed += 1
                print(name, "FAILED", err, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
