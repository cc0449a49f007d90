"""Time a STAC search + lazy odc-stac load + compute of a 1024 x 1024 crop, end to end,
through the loopback servers the integration tests use (moto S3, stac-fastapi-static).

Usage: python benchmarks/sources_timing.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import CREDENTIALS, loopback_sources  # noqa: E402


def main() -> None:
    os.environ.update(CREDENTIALS)
    import srlib

    with loopback_sources(Path(tempfile.mkdtemp())) as (url, endpoint, _item):
        s3 = srlib.S3Options(endpoint=endpoint, https=False, virtual_hosting=False)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            ds = srlib.load_s2(date="20200219", mgrs="29RKH", catalog=url, s3=s3,
                               chunks={"x": 512, "y": 512})
            t1 = time.perf_counter()
            crop = ds.isel(y=slice(0, 1024), x=slice(0, 1024)).compute()
            t2 = time.perf_counter()
            runs.append((t1 - t0, t2 - t1, t2 - t0))
        assert crop.red.shape == (1024, 1024)
    for search, compute, total in runs:
        print(f"search+lazy load {search:.2f} s, compute 11 bands 1024x1024 {compute:.2f} s, "
              f"total {total:.2f} s")


if __name__ == "__main__":
    main()
