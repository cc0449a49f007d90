"""Super-resolve the bundled sample with the library API and write a checked COG.

Run: python examples/super_resolve_sample.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import srlib


def main(out_dir: Path) -> None:
    ds = srlib.sample_scene()  # lazy, dask-backed, real S2 L2A (decimated 10x)
    sr = srlib.super_resolve(ds, chunks=256)  # lazy: nothing computed yet
    print(sr)
    store = srlib.to_zarr(sr, out_dir / "sample.zarr")  # streams block by block, resumable
    cog = srlib.to_cog(store, out_dir / "sample.tif")  # validated COG, atomic rename
    report = srlib.check_quality(cog)
    print(report.to_table())
    report.raise_for_failures()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out"))
