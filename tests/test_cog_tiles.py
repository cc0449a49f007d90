"""srlib's tile-parallel COG writer against GDAL's COG driver: same pixels, same file.

``srlib.to_cog`` writes with :mod:`srlib.product.cog_tiles` by default; ``engine="gdal"``
is the route it replaced. Every band of every level must decode to the same values, and
everything the file declares (georeferencing, nodata, descriptions, colour
interpretation, scale/offset, statistics, quality codes, compression) must be the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (the .rio accessor the synthetic scene uses)
from rio_cogeo.cogeo import cog_validate

import srlib
from srlib.bands import Quality
from srlib.errors import IncompleteStoreError, InputError

from .conftest import synthetic_scene

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A product whose sides are no multiple of 512 and with nodata and cloud codes."""
    ds = synthetic_scene((107, 131), seed=3)
    scl = np.full((107, 131), 4, np.uint8)
    scl[:40, :50] = 9  # cloud
    scl[60:, 100:] = 3  # shadow
    ds["scl"] = (("y", "x"), scl, {"nodata": 0})
    red = ds["red"].values.copy()
    red[70:90, 10:30] = 0  # nodata: quality 0 in the store, -32768 in the COG
    ds["red"] = (("y", "x"), red, ds["red"].attrs)
    ds = ds.chunk({"y": 32, "x": 32})
    path = tmp_path_factory.mktemp("tiles") / "p.zarr"
    return srlib.to_zarr(srlib.super_resolve(ds, chunks=52), path)


def _declared(src: rasterio.DatasetReader) -> dict:
    per_band = [(src.tags(i), src.tags(i, ns="IMAGE_STRUCTURE")) for i in src.indexes]
    return {"profile": src.profile, "tags": src.tags(), "bands": per_band,
            "structure": src.tags(ns="IMAGE_STRUCTURE"), "descriptions": src.descriptions,
            "colorinterp": src.colorinterp, "scales": src.scales, "offsets": src.offsets,
            "units": src.units, "overviews": [src.overviews(i) for i in src.indexes],
            "crs": src.crs, "transform": src.transform, "nodata": src.nodatavals}


def _assert_same_file(a: Path, b: Path) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert _declared(x) == _declared(y)
        for factor in (1, *x.overviews(1)):
            shape = (-(-x.height // factor), -(-x.width // factor))
            for i in x.indexes:  # every band of every level, not their mean
                np.testing.assert_array_equal(x.read(i, out_shape=shape),
                                              y.read(i, out_shape=shape),
                                              err_msg=f"band {i}, overview x{factor}")


@pytest.mark.parametrize("bigtiff", ["IF_SAFER", "YES"])
def test_srlib_writer_gives_gdal_drivers_file(store, tmp_path, bigtiff):
    ours = srlib.to_cog(store, tmp_path / "srlib.tif", engine="srlib", bigtiff=bigtiff,
                        threads=2)
    gdal = srlib.to_cog(store, tmp_path / "gdal.tif", engine="gdal", bigtiff=bigtiff)
    assert cog_validate(str(ours), strict=True, quiet=True) == (True, [], [])
    _assert_same_file(ours, gdal)
    with open(ours, "rb") as fh:
        head = fh.read(16)
    assert head[:4] == (b"II+\x00" if bigtiff == "YES" else b"II*\x00")
    with rasterio.open(ours) as src:
        assert src.overviews(1) == [2, 4]  # 1310 px: down to <= 512
        q = src.read(5)
        assert {int(Quality.CLOUD), int(Quality.CLOUD_SHADOW), -32768} <= set(np.unique(q))
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


def test_the_tiles_match_the_store_pixel_for_pixel(store, tmp_path):
    cog = srlib.to_cog(store, tmp_path / "p.tif", threads=3)
    ds = srlib.open_zarr(store)
    with rasterio.open(cog) as src:
        for i, band in enumerate(ds.data_vars, start=1):
            expect = ds[band].values.astype(np.int16)
            if band == "quality":
                expect = np.where(expect == 0, -32768, expect)
            np.testing.assert_array_equal(src.read(i), expect, err_msg=band)


def test_thread_counts_give_identical_bytes(store, tmp_path):
    one = srlib.to_cog(store, tmp_path / "one.tif", threads=1).read_bytes()
    many = srlib.to_cog(store, tmp_path / "many.tif", threads=5).read_bytes()
    assert one == many


def test_all_cpus_means_the_cpus_this_process_may_use(tmp_path):
    """Under ``taskset`` (what SLURM's --cpus-per-task gives) ALL_CPUS is the pinned count."""
    code = "from srlib.product.cog import _threads; print(_threads('ALL_CPUS'))"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert int(out.stdout) == len(os.sched_getaffinity(0))


def test_options_the_writer_does_not_take_go_to_gdal_or_are_refused(store, tmp_path):
    cog = srlib.to_cog(store, tmp_path / "z.tif", compress="zstd")  # auto: GDAL's driver
    with rasterio.open(cog) as src:
        assert src.compression.name.lower() == "zstd"
    with pytest.raises(InputError, match="engine='gdal'"):
        srlib.to_cog(store, tmp_path / "x.tif", engine="srlib", compress="zstd")
    with pytest.raises(InputError, match="engine='gdal'"):
        srlib.to_cog(store, tmp_path / "x.tif", engine="srlib", overview_resampling="mode")
    with pytest.raises(InputError, match="engine="):
        srlib.to_cog(store, tmp_path / "x.tif", engine="fast")
    for bad in (0, -2, "many"):
        with pytest.raises(InputError, match="positive number or 'ALL_CPUS'"):
            srlib.to_cog(store, tmp_path / "x.tif", threads=bad)
    assert not (tmp_path / "x.tif").exists()


def test_a_chunk_lost_after_the_check_fails_the_conversion_and_leaves_nothing(store, tmp_path,
                                                                              monkeypatch):
    from srlib.product import cog_tiles

    original = cog_tiles.StoreArray._chunk
    calls = []

    def lose_one(self, iy, ix):
        calls.append(1)
        if len(calls) == 7:
            raise IncompleteStoreError(f"{self.path}/{iy}.{ix} is missing: rerun to_zarr")
        return original(self, iy, ix)

    monkeypatch.setattr(cog_tiles.StoreArray, "_chunk", lose_one)
    with pytest.raises(IncompleteStoreError, match="rerun"):
        srlib.to_cog(store, tmp_path / "p.tif", threads=2)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file


def test_a_missing_chunk_file_is_named(tmp_path):
    from srlib.product.cog_tiles import StoreArray

    sr = srlib.super_resolve(synthetic_scene((60, 60)))
    path = srlib.to_zarr(sr, tmp_path / "p.zarr")
    (path / "red" / "0.1").unlink()
    with pytest.raises(IncompleteStoreError, match=r"red/0\.1 is missing.*rerun srlib.to_zarr"):
        StoreArray(path / "red").read(0, 10, 500, 520)


def test_tiles_compressed_while_the_store_is_written_give_the_same_file(tmp_path,
                                                                         monkeypatch):
    """to_zarr(cog_tiles=True) compresses the COG's full resolution meanwhile; to_cog
    copies those tiles, and the file is byte for byte the one made from the store."""
    from srlib.product import cog_tiles
    from srlib.product.zarr_store import spill_dir

    sr = srlib.super_resolve(synthetic_scene((107, 131), seed=5), chunks=52)
    plain = srlib.to_zarr(sr, tmp_path / "plain.zarr")
    ahead = srlib.to_zarr(sr, tmp_path / "ahead.zarr", cog_tiles=True)
    assert not spill_dir(plain).exists()
    indexes = sorted(spill_dir(ahead).glob("*.json"))
    assert len(indexes) == 9  # 1070 x 1310 px in regions of 512 px: 3 x 3
    reads = []
    original = cog_tiles.StoreArray.read
    monkeypatch.setattr(cog_tiles.StoreArray, "read",
                        lambda self, *a: reads.append(self.path) or original(self, *a))
    expect = srlib.to_cog(plain, tmp_path / "plain.tif").read_bytes()
    full_res = {plain / b for b in ("red", "green", "blue", "nir", "quality")}
    assert full_res <= set(reads)
    reads.clear()
    assert srlib.to_cog(ahead, tmp_path / "ahead.tif").read_bytes() == expect
    assert not [r for r in reads if r.parent == ahead]  # no full-resolution tile re-made
    # tiles of another store (or torn) are never taken: those tiles are made again
    meta = json.loads(indexes[0].read_text())
    indexes[0].write_text(json.dumps({**meta, "store_id": "another"}))
    indexes[1].write_text("{torn")
    reads.clear()
    assert srlib.to_cog(ahead, tmp_path / "again.tif").read_bytes() == expect
    assert {r for r in reads if r.parent == ahead} == {ahead / b for b in
                                                      ("red", "green", "blue", "nir",
                                                       "quality")}


def test_the_pipeline_overlaps_the_cog_and_cleans_up(tmp_path, monkeypatch):
    from srlib.product.zarr_store import spill_dir

    made = []
    original = srlib.product.zarr_store._spill_tiles
    monkeypatch.setattr(srlib.product.zarr_store, "_spill_tiles",
                        lambda *a: made.append(a[2]) or original(*a))
    report = srlib.super_resolve_to_cog(synthetic_scene((60, 60)), tmp_path / "p.tif",
                                        cog_tiles=True)
    assert report.passed and made
    store = tmp_path / "p.zarr"
    assert store.exists() and not spill_dir(store).exists()  # copied, then removed
    made.clear()  # on the CPU the default is off: compression would compete with the model
    srlib.super_resolve_to_cog(synthetic_scene((60, 60), seed=1), tmp_path / "q.tif")
    assert made == []
    srlib.product.pipeline.remove_product(tmp_path / "p.tif")
    assert not store.exists()
