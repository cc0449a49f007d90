"""Output path: resumable Zarr, COG conversion, QC gate, one-call pipeline."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

import srlib
from srlib.bands import OUTPUT_NODATA, Quality
from srlib.product.qc import check_quality

from .conftest import raise_if_dask_computes, synthetic_scene

ROOT = Path(__file__).resolve().parents[1]


def _chunk_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and not p.name.startswith(".z")}


def test_a_writer_killed_while_it_creates_the_store_leaves_none_and_the_rerun_writes_it(
        tmp_path, scene, monkeypatch):
    """A stop while the arrays' metadata is written (the root already naming the product)
    leaves no store that a resume would take as made: the rerun writes the whole store."""
    import xarray as xr

    sr = srlib.super_resolve(scene)
    clean = srlib.to_zarr(sr, tmp_path / "clean.zarr")
    original = xr.Dataset.to_zarr

    def torn(self, store, *args, **kwargs):
        original(self, store, *args, **kwargs)
        (Path(store) / "red" / ".zarray").unlink()  # killed before red's metadata landed
        raise srlib.Terminated("stopped by SIGTERM")

    monkeypatch.setattr(xr.Dataset, "to_zarr", torn)
    path = tmp_path / "p.zarr"
    with pytest.raises(srlib.Terminated):
        srlib.to_zarr(sr, path)
    monkeypatch.undo()
    store = srlib.to_zarr(sr, path)
    assert _chunk_files(store) == _chunk_files(clean)
    assert not list(tmp_path.glob("*.partial"))


def test_writing_a_store_raises_no_warning_of_srlib_s_own_probes(tmp_path, scene):
    """GDAL's Blosc probe opens a file without a grid: its warning is not the user's."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from srlib.product.zarr_store import gdal_reads_blosc

    gdal_reads_blosc.cache_clear()  # probed again, inside this test
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)  # the scene has a grid
        assert gdal_reads_blosc() in (True, False)
        srlib.to_zarr(srlib.super_resolve(scene), tmp_path / "p.zarr")


def test_zarr_round_trip_keeps_grid_values_and_nodata(tmp_path, scene):
    sr = srlib.super_resolve(scene)
    with raise_if_dask_computes():
        sr2 = srlib.super_resolve(scene)  # planning a write computes nothing
    assert sr2.red.chunks
    store = srlib.to_zarr(sr, tmp_path / "p.zarr")
    plain = xr.open_zarr(store)  # plain xarray + rioxarray, no srlib
    assert plain.rio.crs == sr.rio.crs
    assert plain.rio.transform() == sr.rio.transform()
    ours = srlib.open_zarr(store)
    assert list(ours.data_vars) == ["red", "green", "blue", "nir", "quality"]
    assert ours.red.dtype == np.int16 and ours.red.rio.nodata == OUTPUT_NODATA
    ref = sr.compute()
    for var in ref.data_vars:
        np.testing.assert_array_equal(ours[var].values, ref[var].values)
    assert ours.red.encoding["chunks"] == (512, 512)
    assert ours.red.encoding["preferred_chunks"] == {"y": 512, "x": 512}
    with rasterio.open(f'ZARR:"{store}":/red') as src:  # GDAL reads the store too
        assert src.crs == sr.rio.crs
        # GDAL 3.8/3.9 do not read the grid from CF attributes (README, GDAL)
        if tuple(map(int, rasterio.__gdal_version__.split(".")[:2])) >= (3, 10):
            assert src.transform == sr.rio.transform()
        np.testing.assert_array_equal(src.read(1), ref["red"].values)


def test_store_of_another_product_is_refused(tmp_path):
    a = srlib.super_resolve(synthetic_scene((20, 20), seed=1))
    b = srlib.super_resolve(synthetic_scene((20, 20), seed=2))
    store = srlib.to_zarr(a, tmp_path / "p.zarr")
    with pytest.raises(srlib.InputError, match="resume=False"):
        srlib.to_zarr(b, store)
    srlib.to_zarr(b, store, resume=False)
    np.testing.assert_array_equal(srlib.open_zarr(store).red.values, b.red.values)


def test_rewriting_a_store_with_another_codec_in_the_same_process(tmp_path):
    """Writers keep arrays open per process; a store created again is opened afresh."""
    import numcodecs

    sr = srlib.super_resolve(synthetic_scene((20, 20), seed=1))
    store = srlib.to_zarr(sr, tmp_path / "p.zarr")
    srlib.to_zarr(sr, store, resume=False, compressor=numcodecs.Zlib(level=1))
    assert json.loads((store / "red" / ".zarray").read_text())["compressor"]["id"] == "zlib"
    np.testing.assert_array_equal(srlib.open_zarr(store).red.values, sr.red.values)


def test_each_model_block_is_computed_once_when_written_as_several_regions(tmp_path,
                                                                          monkeypatch, scene):
    """A model block larger than a write region is never cut across two compute waves."""
    import srlib.engine.superres

    _waves_of_two_regions_per_thread(monkeypatch)  # 36 regions: several waves
    calls = []
    kernel = srlib.engine.superres.sr_block
    monkeypatch.setattr(srlib.engine.superres, "sr_block",
                        lambda *a, **k: calls.append(1) or kernel(*a, **k))
    sr = srlib.super_resolve(scene, chunks=48)  # 2 x 2 model blocks of 480 px
    store = srlib.to_zarr(sr, tmp_path / "p.zarr", chunks=32)  # 160 px regions: 9 a block
    assert len(calls) == 4
    np.testing.assert_array_equal(srlib.open_zarr(store).red.values,
                                  sr.red.compute().values)


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import dask
    import srlib
    from tests.conftest import synthetic_scene
    from tests.slow_model import spec
    sr = srlib.super_resolve(synthetic_scene((160, 160)), spec(), chunks=52)
    with dask.config.set(scheduler="synchronous"):
        srlib.to_zarr(sr, sys.argv[1])
""")


def test_writer_killed_mid_write_resumes_to_identical_bytes(tmp_path, monkeypatch):
    from tests.slow_model import spec

    store = tmp_path / "killed.zarr"
    progress = store.with_name(store.name + ".progress")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(root=str(ROOT)),
                             str(store)])
    deadline = time.time() + 120
    while time.time() < deadline and not (progress.exists() and len(list(progress.iterdir())) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(progress.iterdir()))
    assert 3 <= done_before < 16, "the writer was not killed mid-way"
    with pytest.raises(srlib.IncompleteStoreError, match="resume"):
        srlib.open_zarr(store)
    with pytest.raises(srlib.IncompleteStoreError):
        srlib.to_cog(store, tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()

    # what a kill inside a write leaves (srlib.files' temporaries) is swept on resume
    torn = [store / "red" / ".0.0.123-456.partial", progress / ".r.json.123-456.partial"]
    for t in torn:
        t.write_bytes(b"torn")
    written = []
    original = srlib.product.zarr_store._write_region
    monkeypatch.setattr(srlib.product.zarr_store, "_write_region",
                        lambda *a, **k: written.append(a[1]) or original(*a, **k))
    sr = srlib.super_resolve(synthetic_scene((160, 160)), spec(), chunks=52)
    srlib.to_zarr(sr, store)
    assert len(written) == 16 - done_before  # only the missing regions were computed
    clean = srlib.to_zarr(sr, tmp_path / "clean.zarr")
    assert _chunk_files(store) == _chunk_files(clean)
    assert not progress.exists() and not list(store.rglob("*.partial"))


def test_cog_is_valid_tiled_and_equal_to_the_zarr(tmp_path, scene):
    sr = srlib.super_resolve(scene)
    store = srlib.to_zarr(sr, tmp_path / "p.zarr")
    cog = srlib.to_cog(store, tmp_path / "p.tif")
    assert cog_validate(str(cog), quiet=True)[0]
    zarr_ds = srlib.open_zarr(store)
    with rasterio.open(cog) as src:
        assert src.count == 5 and set(src.dtypes) == {"int16"}
        assert src.block_shapes == [(512, 512)] * 5
        assert src.compression.name.lower() == "lzw"
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert src.nodata == OUTPUT_NODATA
        assert src.descriptions == ("red", "green", "blue", "nir", "quality")
        assert src.overviews(1) == [2]  # 960 px: one halving reaches <= 512
        assert src.crs == sr.rio.crs and src.transform == sr.rio.transform()
        for i, band in enumerate(["red", "green", "blue", "nir"], start=1):
            np.testing.assert_array_equal(src.read(i), zarr_ds[band].values)
        q = zarr_ds.quality.values.astype(np.int16)
        np.testing.assert_array_equal(src.read(5), np.where(q == 0, OUTPUT_NODATA, q))
    from rio_tiler.io import Reader

    with Reader(str(cog)) as r:
        assert r.crs == sr.rio.crs and r.dataset.nodata == OUTPUT_NODATA
        img = r.read(indexes=(1,))
        assert img.bounds == pytest.approx(sr.rio.bounds())
        np.testing.assert_array_equal(img.data[0], zarr_ds.red.values)
        point = r.point(float(sr.x[100]), float(sr.y[200]), coord_crs=sr.rio.crs)
        assert point.data[0] == zarr_ds.red.values[200, 100]


def test_overviews_average_reflectance_and_keep_quality_codes(tmp_path):
    ds = synthetic_scene((104, 104))  # 1040 px output: overview levels 2 and 4
    scl = np.full((104, 104), 4, np.uint8)
    scl[:52, :52] = 9  # a cloudy quarter
    ds["scl"] = (("y", "x"), scl)
    sr = srlib.super_resolve(ds)
    store = srlib.to_zarr(sr, tmp_path / "p.zarr")
    cog = srlib.to_cog(store, tmp_path / "p.tif")
    full = srlib.open_zarr(store)
    with rasterio.open(cog, overview_level=0) as ovr:
        q = ovr.read(5)
        red = ovr.read(1)
    assert set(np.unique(q)) == {Quality.CLEAR, Quality.CLOUD}  # codes, never averages
    assert (q[:250, :250] == Quality.CLOUD).all() and (q[-250:, -250:] == Quality.CLEAR).all()
    expect = full.red.values.reshape(520, 2, 520, 2).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(red, np.floor(expect + 0.5).astype(np.int16))


def test_overview_kernels():
    from srlib.product.pyramid import mean2x2, mode2x2

    nd = OUTPUT_NODATA
    q = np.array([[2, 2, nd, nd, 3], [1, nd, nd, nd, 1]], np.int16)
    # majority; nodata only if all nodata; ties (3 vs 1) go to the higher code; odd edge
    assert mode2x2(q, nd).tolist() == [[Quality.CLOUD, nd, Quality.CLOUD_SHADOW]]
    r = np.array([[10, 11, nd, nd, 7], [nd, 13, nd, nd, nd]], np.int16)
    assert mean2x2(r, nd).tolist() == [[11, nd, 7]]  # (10+11+13)/3 = 11.33 -> 11


@pytest.mark.parametrize("seed", range(6))
def test_mean2x2_of_valid_blocks_is_the_mean_rounded_half_up(seed):
    """The all-valid path (row pairs, then column pairs, then a shift) gives every pixel
    floor(mean + 0.5), at any parity of shape and over the whole int16 range."""
    from srlib.product.pyramid import mean2x2

    rng = np.random.default_rng(seed)
    h, w = 2 * rng.integers(1, 20, 2) + (seed >= 4) * np.array([1, seed % 2])  # 0-3: even
    low = OUTPUT_NODATA + 1 if seed % 2 else -3
    block = rng.integers(low, 32768 if seed % 2 else 4, (h, w)).astype(np.int16)
    block[0, 0] = 32767 if seed % 3 else OUTPUT_NODATA + 1  # an extreme in every case
    even = np.pad(block.astype(np.float64), ((0, h % 2), (0, w % 2)), mode="constant",
                  constant_values=np.nan)  # an odd edge: the mean of its valid pixels
    quads = even.reshape(even.shape[0] // 2, 2, even.shape[1] // 2, 2)
    expect = np.floor(np.nanmean(quads, axis=(1, 3)) + 0.5)
    got = mean2x2(block)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, expect.astype(np.int16))


def test_crash_during_cog_leaves_no_file_at_the_final_path(tmp_path):
    sr = srlib.super_resolve(synthetic_scene((320, 320)))
    store = srlib.to_zarr(sr, tmp_path / "p.zarr")
    target = tmp_path / "final.tif"
    script = f"import srlib; srlib.to_cog({str(store)!r}, {str(target)!r})"
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".final.tif.*.tmp.tif")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".final.tif.*")), "the converter was not caught mid-write"
    assert not target.exists()
    srlib.to_cog(store, target)  # a rerun succeeds
    assert cog_validate(str(target), quiet=True)[0]


# ---------------------------------------------------------------- QC checks


def _write(path, data, *, tiled=True, block=512, compress="lzw", overviews=(), nodata=-32768):
    count, h, w = data.shape
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype,
                   crs="EPSG:32633", transform=from_origin(400000, 5000000, 1, 1),
                   nodata=nodata, tiled=tiled, compress=compress)
    if tiled:
        profile.update(blockxsize=block, blockysize=block)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if overviews:
            dst.build_overviews(list(overviews), rasterio.enums.Resampling.average)
    return path


def _good(h=1024, w=1024, count=5, dtype=np.int16, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(500, 4000, size=(count, h, w)).astype(dtype)
    if count == 5:
        data[4] = 1
    return data


def _cog(tmp_path, name, data, **kw):
    plain = _write(tmp_path / f"{name}.plain.tif", data, **kw)
    out = tmp_path / f"{name}.tif"
    rasterio.shutil.copy(plain, out, driver="COG", COMPRESS=kw.get("compress", "LZW"),
                         BLOCKSIZE=512, OVERVIEWS="AUTO" if kw.get("ovr", True) else "NONE")
    return out


GOOD_TIMINGS = {"cpu_s": 10.0, "total_s": 20.0}


@pytest.fixture(scope="module")
def good_cog(tmp_path_factory):
    return _cog(tmp_path_factory.mktemp("qc"), "good", _good())


def test_qc_passes_a_good_product(good_cog):
    report = check_quality(good_cog, timings=GOOD_TIMINGS)
    assert report.passed, report.to_table()
    assert [c.name for c in report.checks] == ["tiling", "overviews", "values", "bands",
                                               "visual", "timing", "deploy", "consistency",
                                               "coverage"]
    assert all(c.status == "pass" for c in report.checks
               if c.name not in ("consistency", "coverage"))
    assert report["coverage"].status == "warn"  # nothing to compare with: not checked
    assert report["consistency"].status == "warn"  # no input given
    assert '"passed": true' in report.to_json()
    report.raise_for_failures()


def test_qc_overviews_need_four_levels_on_large_images(tmp_path):
    wide = _good(h=520, w=8300)
    ok = _cog(tmp_path, "wide", wide)
    assert check_quality(ok)["overviews"].status == "pass"
    bad = _write(tmp_path / "noovr.tif", wide, overviews=(2, 4))
    result = check_quality(bad)["overviews"]
    assert result.status == "fail" and result.value == 2 and result.threshold == ">= 4"


@pytest.mark.parametrize(
    ("check", "make", "timings"),
    [
        ("tiling", lambda p: _write(p, _good(), block=256), None),
        ("tiling", lambda p: _write(p, _good(), tiled=False), None),
        ("overviews", lambda p: _write(p, _good()), None),
        ("values", lambda p: _write(p, np.full((5, 1024, 1024), -32768, np.int16)), None),
        ("values", lambda p: _write(p, np.zeros((5, 1024, 1024), np.int16), nodata=-32768), None),
        ("values", lambda p: _write(p, np.full((5, 1024, 1024), 20000, np.int16)), None),
        ("bands", lambda p: _write(p, _good(count=4)), None),
        ("bands", lambda p: _write(p, _good(dtype=np.uint16), nodata=0), None),
        ("visual", lambda p: _write(p, np.full((5, 1024, 1024), 700, np.int16)), None),
        ("timing", None, {"gpu_s": 7201.0, "total_s": 7300.0}),
        ("timing", None, {"cpu_s": 3601.0, "total_s": 3700.0}),
        ("timing", None, {"cpu_s": 10.0, "total_s": 10801.0}),
        ("deploy", lambda p: _write(p, _good(), compress=None), None),
        ("deploy", None, {"cpu_s": 10.0, "total_s": 1e9}),
    ],
)
def test_each_qc_check_fails_when_it_should(tmp_path, good_cog, check, make, timings):
    path = make(tmp_path / "bad.tif") if make else good_cog
    report = check_quality(path, timings=timings or GOOD_TIMINGS)
    assert report[check].status == "fail", report.to_table()
    assert check in report.failed
    with pytest.raises(srlib.QCFailed, match=check):
        report.raise_for_failures()


def test_qc_thresholds_are_configurable_and_missing_timings_warn(good_cog):
    report = check_quality(good_cog)
    assert report["timing"].status == "warn" and report["deploy"].status == "warn"
    assert report.passed  # a warning is not a failure
    report = check_quality(good_cog, thresholds={"mean_range": (5000, 6000)})
    assert report["values"].status == "fail" and not report.passed
    with pytest.raises(srlib.InputError, match="unknown QC thresholds"):
        check_quality(good_cog, thresholds={"mean": 1})


# ---------------------------------------------------------------- pipeline


def test_super_resolve_to_cog_writes_a_checked_product(tmp_path):
    cog = tmp_path / "out" / "S2x10_test.tif"
    report = srlib.super_resolve_to_cog(synthetic_scene((64, 64)), cog)
    assert report.passed and cog.exists()
    assert {"cpu_s", "zarr_s", "cog_s", "qc_s", "total_s"} <= set(report.timings)
    assert cog.with_suffix(".qc.json").exists() and cog.with_suffix(".zarr").exists()
    assert not list(cog.parent.glob(".*"))  # no staging or temporary files left


def test_all_nodata_input_fails_qc_and_leaves_no_product(tmp_path):
    ds = synthetic_scene((64, 64))
    for band in srlib.S2_BANDS:  # zeros, still declared nodata (older xarray drops attrs)
        ds[band] = (ds[band] * 0).assign_attrs(ds[band].attrs)
    cog = tmp_path / "S2x10_empty.tif"
    with pytest.raises(srlib.QCFailed, match="values") as err:
        srlib.super_resolve_to_cog(ds, cog)
    assert not err.value.report.passed
    assert not cog.exists() and not list(tmp_path.glob(".*.tif"))
    assert cog.with_suffix(".zarr").exists()  # kept for inspection
    assert '"passed": false' in cog.with_suffix(".qc.json").read_text()


def test_cli_demo_and_qc(tmp_path):
    from click.testing import CliRunner

    from srlib.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["demo", "--out", str(tmp_path), "--sample", "bigearthnet"])
    assert result.exit_code == 0, result.output
    cog = tmp_path / "S2x10_bigearthnet.tif"
    assert "QC PASSED" in result.output and cog.exists()
    again = runner.invoke(main, ["demo", "--out", str(tmp_path), "--sample", "bigearthnet"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert runner.invoke(main, ["qc", str(cog)]).exit_code == 0
    bad = _write(tmp_path / "bad.tif", _good(count=4))
    failed = runner.invoke(main, ["qc", str(bad)])
    assert failed.exit_code == 1 and "FAILED: overviews, bands" in failed.output
    for cmd in ([], ["demo"], ["qc"], ["cog"]):
        assert runner.invoke(main, [*cmd, "--help"]).exit_code == 0


def test_the_store_follows_cf_and_opens_as_a_multiscale_tree(tmp_path):
    ds = srlib.sample_scene().isel(x=slice(0, 160), y=slice(0, 160))
    store = srlib.to_zarr(srlib.super_resolve(ds), tmp_path / "p.zarr")
    opened = srlib.open_zarr(store)  # the stored dtypes, values as stored
    assert {v: str(opened[v].dtype) for v in opened.data_vars} == {
        "red": "int16", "green": "int16", "blue": "int16", "nir": "int16", "quality": "uint8"}
    red = opened["red"].attrs
    assert red["scale_factor"] == 1e-4 and red["add_offset"] == 0.0 and red["units"] == "1"
    assert red["grid_mapping"] == "spatial_ref" and "reflectance_scale" not in red
    assert opened["red"].attrs["_FillValue"] == -32768  # from the store, as stored
    assert opened.attrs["Conventions"].startswith("CF-")
    plain = xr.open_zarr(store)  # any CF reader: reflectance, nodata masked
    assert float(plain["red"][0, 0]) == pytest.approx(int(opened["red"][0, 0]) * 1e-4)
    assert plain.rio.crs == opened.rio.crs
    tree = xr.open_datatree(store, engine="zarr")
    levels = opened.attrs["multiscales"][0]["datasets"]
    assert [d["path"] for d in levels] == [".", "overviews/1", "overviews/2"]
    level = tree["overviews/2"].to_dataset(inherit=False)
    assert level["red"].shape == (400, 400) and level["red"].encoding["scale_factor"] == 1e-4
    quality = level["quality"]  # the COG's encoding: -32768 is nodata, 0 is no code
    assert quality.attrs["flag_meanings"].split()[0] == "clear" and 0 not in quality.attrs[
        "flag_values"]
    transform = level.rio.set_spatial_dims(x_dim="x_2", y_dim="y_2").rio.transform()
    assert transform.a == 4 * opened.rio.transform().a  # georeferenced at its own size
    assert (transform.c, transform.f) == (opened.rio.transform().c, opened.rio.transform().f)


@pytest.mark.parametrize("dtype, fill, codec", [
    ("int16", -32768, "blosc"), ("uint8", 0, "zlib"), ("float32", float("nan"), "blosc"),
    ("float32", float("-inf"), None), ("float64", None, None), ("bool", False, "zlib")])
def test_store_metadata_is_the_documents_zarr_python_writes(tmp_path, dtype, fill, codec):
    """srlib writes format-2 metadata itself (no event loop per call): zarr's own files."""
    import numcodecs
    import zarr

    from srlib.product import zarr_v2

    compressor = {"blosc": numcodecs.Blosc(cname="lz4", shuffle=2),
                  "zlib": numcodecs.Zlib(level=1), None: None}[codec]
    attrs = {"_ARRAY_DIMENSIONS": ["y", "x"], "long_name": "red", "flag_values": [1, 2]}
    ref = zarr.open_group(str(tmp_path / "ref"), mode="w", zarr_format=2)
    ref.attrs["srlib_complete"] = False
    arr = ref.create_array("a", shape=(7, 5), chunks=(4, 4), dtype=dtype, fill_value=fill,
                           compressor=compressor)
    arr.attrs.update(attrs)
    ref.attrs.update(levels=3)
    line = ref.create_array("c", shape=(5,), chunks=(5,), dtype="float64", fill_value=None,
                            compressor=None)
    line[:] = np.arange(5) * 0.5
    ours = tmp_path / "ours"
    zarr_v2.create_group(ours, {"srlib_complete": False})
    zarr_v2.create_array(ours / "a", shape=(7, 5), chunks=(4, 4), dtype=dtype,
                         fill_value=fill, compressor=compressor, attrs={"long_name": "x"})
    zarr_v2.update_attrs(ours / "a", attrs)
    zarr_v2.update_attrs(ours, {"levels": 3})
    zarr_v2.create_array(ours / "c", shape=(5,), chunks=(5,), dtype="<f8", fill_value=None,
                         compressor=None)
    zarr_v2.write_chunk(ours / "c", "0", np.arange(5) * 0.5)
    files = sorted(str(p.relative_to(tmp_path / "ref")) for p in (tmp_path / "ref").rglob("*"))
    assert files == sorted(str(p.relative_to(ours)) for p in ours.rglob("*"))
    for name in files:
        if (ours / name).is_file():
            mine, theirs = (ours / name).read_bytes(), (tmp_path / "ref" / name).read_bytes()
            if name.endswith((".zarray", ".zattrs", ".zgroup")):
                assert json.loads(mine) == json.loads(theirs), name
            else:
                assert mine == theirs, name
    opened = zarr.open_group(str(ours), mode="r", zarr_format=2)
    assert dict(opened["a"].attrs) == attrs
    np.testing.assert_array_equal(opened["a"].fill_value, arr.fill_value)  # NaN == NaN here
    np.testing.assert_array_equal(opened["c"][:], np.arange(5) * 0.5)


@pytest.mark.parametrize("stage, target", [("creating the pyramid", "create_array"),
                                           ("describing the pyramid", "update_attrs")])
def test_a_writer_stopped_while_it_writes_metadata_resumes_to_the_same_store(
        tmp_path, monkeypatch, stage, target):
    """A stop between two metadata files leaves nothing a resumed run takes as made."""
    from srlib.product import zarr_v2

    ds = srlib.sample_scene().isel(x=slice(0, 160), y=slice(0, 160))
    sr = srlib.super_resolve(ds, chunks=64)  # 640 px regions: local overview levels
    clean = srlib.to_zarr(sr, tmp_path / "clean.zarr")
    original, calls = getattr(zarr_v2, target), []

    def stops(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt(stage)
        return original(*args, **kwargs)

    monkeypatch.setattr(zarr_v2, target, stops)
    store = tmp_path / "stopped.zarr"
    with pytest.raises(KeyboardInterrupt):
        srlib.to_zarr(sr, store)
    assert not srlib.product.zarr_store.is_complete(store)
    if target == "create_array":  # the half-made pyramid is not in place
        assert not (store / "overviews").exists()
        assert list(store.glob("overviews.*.partial"))
    monkeypatch.setattr(zarr_v2, target, original)
    srlib.to_zarr(sr, store)
    assert not list(store.rglob("*.partial"))
    assert _chunk_files(store) == _chunk_files(clean)

    def metadata(root: Path) -> dict[str, object]:
        docs = {str(p.relative_to(root)): json.loads(p.read_text())
                for p in sorted(root.rglob(".z*")) if p.name != ".zmetadata"}
        docs[".zattrs"].pop("srlib_store_id")  # type: ignore[union-attr]
        return docs

    assert metadata(store) == metadata(clean)
    levels = xr.open_datatree(store, engine="zarr")["overviews/1"].to_dataset(inherit=False)
    assert levels["red"].dims == ("y_1", "x_1") and levels["x_1"].size == 800


def test_a_small_remainder_of_regions_joins_the_last_wave():
    from srlib.product.waves import plan_waves as _waves

    groups = [[f"r{i}"] for i in range(25)]  # the demo: 25 regions, one block each
    waves = _waves(groups, 4)  # 2 threads
    assert [len(w) for w in waves] == [4, 4, 4, 4, 4, 5]  # not a 7th wave of one region
    assert [r for w in waves for r in w] == [r for g in groups for r in g]
    assert [len(w) for w in _waves(groups[:7], 4)] == [4, 3]  # enough to fill the threads
    big = [[f"b{i}-{j}" for j in range(9)] for i in range(3)]  # 9 regions a block
    assert [len(w) for w in _waves(big, 4)] == [18, 9]  # a block never joins: its memory
    assert _waves([["a"]], 4) == [["a"]]


def test_full_collections_skip_the_heap_while_a_store_is_written():
    """The heap is frozen for the write (no 0.2 s pauses) and given back, nothing lost."""
    import gc
    import weakref

    from srlib.engine.memory import frozen_heap

    class Node:
        pass

    before = gc.get_freeze_count()
    cycle = Node()
    cycle.self = cycle  # type: ignore[attr-defined]
    alive = weakref.ref(cycle)
    del cycle
    with frozen_heap():
        assert gc.get_freeze_count() > before
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > before  # the outer use still holds it
        gc.collect()
        assert alive() is not None  # frozen: not collected now ...
    assert gc.get_freeze_count() == before
    gc.collect()
    assert alive() is None  # ... but afterwards


def _slow_region(monkeypatch, name: str, *, fail: bool = False) -> dict[str, float]:
    """Make region ``name`` (``"iy-ix"``) take a second (then fail); note when each ends."""
    from srlib.product import zarr_store

    ends: dict[str, float] = {}
    original = zarr_store._write_region_now

    def write(path, store_id, region, marker, *args):  # type: ignore[no-untyped-def]
        if Path(marker).name == name:
            time.sleep(1.0)
            if fail:
                raise OSError(28, "No space left on device")
        out = original(path, store_id, region, marker, *args)
        ends[Path(marker).name] = time.perf_counter()
        return out

    monkeypatch.setattr(zarr_store, "_write_region_now", write)
    return ends


def _waves_of_two_regions_per_thread(monkeypatch) -> None:
    """Waves of 4 regions on 2 threads: 16 regions make 4 waves (the tests' layout)."""
    from srlib.product import waves

    monkeypatch.setattr(waves, "REGIONS_PER_THREAD", 2)


def test_larger_waves_read_each_input_chunk_fewer_times(tmp_path, monkeypatch):
    """Nothing is kept between waves: a chunk that feeds blocks of n waves is read n
    times. Waves of 8 regions per thread read the scene's one chunk once, 2 per thread
    once per wave; the stores are the same."""
    import dask

    from srlib.product import waves

    reads = []

    def counted(block):
        reads.append(block.shape)
        return block

    scene = synthetic_scene((64, 64)).chunk({"y": 64, "x": 64})  # one chunk, 16 blocks
    scene["red"] = scene.red.copy(data=scene.red.data.map_blocks(counted,
                                                                 dtype=scene.red.dtype))
    sr = srlib.super_resolve(scene, chunks=16)
    counts, stores = {}, {}
    for per_thread in (2, 8):
        monkeypatch.setattr(waves, "REGIONS_PER_THREAD", per_thread)
        reads.clear()
        with dask.config.set(num_workers=2):
            stores[per_thread] = srlib.to_zarr(sr, tmp_path / f"{per_thread}.zarr", chunks=32)
        counts[per_thread] = len(reads)
    assert counts[8] == 1 and counts[2] == 4  # 16 regions: one wave, or four
    assert _chunk_files(stores[8]) == _chunk_files(stores[2])


def test_a_wave_holds_a_share_of_the_available_memory(monkeypatch):
    import srlib.config
    from srlib.product.waves import REGIONS_PER_THREAD, WAVE_MEMORY, wave_regions

    region = 50 << 20  # 50 MB of output a region
    monkeypatch.setattr(srlib.config, "available_memory", lambda: 64 << 30)
    assert wave_regions(2, region) == REGIONS_PER_THREAD * 2  # plenty: the per-thread cap
    assert wave_regions(16, region) == int((64 << 30) * WAVE_MEMORY) // region  # 81 < 128
    monkeypatch.setattr(srlib.config, "available_memory", lambda: 1 << 30)
    assert wave_regions(4, region) == 8  # short: never fewer than two a thread
    monkeypatch.setattr(srlib.config, "available_memory", lambda: None)
    assert wave_regions(3, region) == REGIONS_PER_THREAD * 3  # unknown: the cap


def test_available_memory_is_the_least_of_the_machine_and_the_cgroup(tmp_path):
    from srlib.config import available_memory

    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:    8000000 kB\n")
    (proc / "self" / "cgroup").write_text("0::/job_7/step_0\n")
    assert available_memory(proc=proc, cgroup=cgroup) == 8_000_000 * 1024  # no cgroup files
    job = cgroup / "job_7" / "step_0"
    job.mkdir(parents=True)
    (job / "memory.max").write_text("4000000000\n")
    (job / "memory.current").write_text("1000000000\n")
    assert available_memory(proc=proc, cgroup=cgroup) == 3_000_000_000  # SLURM's --mem
    (job / "memory.max").write_text("max\n")
    assert available_memory(proc=proc, cgroup=cgroup) == 8_000_000 * 1024
    (proc / "self" / "cgroup").write_text("4:memory:/slurm/uid_0/job_9\n3:cpu:/\n")
    v1 = cgroup / "memory" / "slurm" / "uid_0" / "job_9"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("2000000000\n")
    (v1 / "memory.usage_in_bytes").write_text("500000000\n")
    assert available_memory(proc=proc, cgroup=cgroup) == 1_500_000_000
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert available_memory(proc=proc, cgroup=cgroup) == 8_000_000 * 1024
    (proc / "meminfo").unlink()
    assert available_memory(proc=proc, cgroup=cgroup) is None


def test_the_next_wave_starts_while_a_wave_writes_its_last_region(tmp_path, monkeypatch):
    """No thread idles at a wave's end: the next wave runs beside its last region."""
    import dask

    _waves_of_two_regions_per_thread(monkeypatch)

    sr = srlib.super_resolve(synthetic_scene((64, 64)), chunks=16)  # 4 x 4 blocks
    with dask.config.set(scheduler="synchronous"):
        clean = srlib.to_zarr(sr, tmp_path / "clean.zarr", chunks=32)
    ends = _slow_region(monkeypatch, "0-0")  # the first wave: 0-0 .. 0-3 (2 threads)
    with dask.config.set(num_workers=2):
        store = srlib.to_zarr(sr, tmp_path / "p.zarr", chunks=32)
    assert len(ends) == 16
    assert min(ends[f"1-{ix}"] for ix in range(4)) < ends["0-0"]  # overlapped
    assert _chunk_files(store) == _chunk_files(clean)


def test_a_failed_wave_stops_the_one_beside_it_and_the_store_resumes(tmp_path, monkeypatch):
    import dask

    _waves_of_two_regions_per_thread(monkeypatch)

    from srlib.product.zarr_store import wait_for_writers

    sr = srlib.super_resolve(synthetic_scene((64, 64)), chunks=16)
    clean = srlib.to_zarr(sr, tmp_path / "clean.zarr", chunks=32)
    ends = _slow_region(monkeypatch, "0-0", fail=True)
    store = tmp_path / "p.zarr"
    progress = store.with_name(store.name + ".progress")
    with dask.config.set(num_workers=2), pytest.raises(OSError, match="No space left"):
        srlib.to_zarr(sr, store, chunks=32)
    assert wait_for_writers(store, timeout=30)
    written = sorted(p.name for p in progress.iterdir())
    time.sleep(0.5)
    assert sorted(p.name for p in progress.iterdir()) == written  # nothing after the error
    assert "0-0" not in written and len(written) < 16 and len(ends) == len(written)
    monkeypatch.undo()
    srlib.to_zarr(sr, store, chunks=32)
    assert _chunk_files(store) == _chunk_files(clean)


def test_a_stop_does_not_wait_for_the_wave_beside_it(tmp_path, monkeypatch):
    """A stop unwinds at once (a SLURM grace is short); the threads finish what they hold."""
    import dask

    _waves_of_two_regions_per_thread(monkeypatch)

    from srlib.product import zarr_store

    sr = srlib.super_resolve(synthetic_scene((64, 64)), chunks=16)
    original = zarr_store._write_region_now

    def write(path, store_id, region, marker, *args):  # type: ignore[no-untyped-def]
        name = Path(marker).name
        if name == "0-0":
            time.sleep(0.5)
            raise srlib.Terminated("stopped by SIGTERM")
        if name == "1-0":
            time.sleep(6.0)  # the next wave, in flight when the stop comes
        return original(path, store_id, region, marker, *args)

    monkeypatch.setattr(zarr_store, "_write_region_now", write)
    store = tmp_path / "p.zarr"
    t0 = time.perf_counter()
    with dask.config.set(num_workers=2), pytest.raises(srlib.Terminated):
        srlib.to_zarr(sr, store, chunks=32)
    assert time.perf_counter() - t0 < 5.0  # did not wait for region 1-0
    assert zarr_store.wait_for_writers(store, timeout=30)
