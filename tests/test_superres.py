"""super_resolve: georeferencing, chunk invariance, laziness, nodata, bad input."""

from __future__ import annotations

import os
import platform
import threading
import time

import dask
import numpy as np
import pytest
import torch
import xarray as xr
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import srlib
import srlib.engine.lanes
from srlib.bands import OUTPUT_NODATA, Quality

from .conftest import raise_if_dask_computes, synthetic_scene

SCALE = 10


def test_sample_scene_is_real_and_lazy():
    ds = srlib.sample_scene()
    assert set(srlib.S2_BANDS) | {"scl"} == set(ds.data_vars)
    assert all(v.chunks is not None for v in ds.data_vars.values())
    assert ds.rio.crs.to_epsg() == 32629
    assert ds.rio.transform().c == 199980 and ds.rio.transform().f == 2800020
    assert ds.red.dtype == np.uint16 and ds.red.rio.nodata == 0
    assert ds.red.attrs["scale_factor"] == 1e-4
    crop = ds.isel(y=slice(200, 456), x=slice(200, 456)).compute()
    # real data: neighbouring pixels correlate, NIR and red are plausible DN
    red = crop.red.values.astype(float)
    assert np.corrcoef(red[:, :-1].ravel(), red[:, 1:].ravel())[0, 1] > 0.6
    assert 100 < red.mean() < 8000
    # the 20 m band resampled to 10 m agrees with its 10 m neighbour
    assert np.corrcoef(crop.nir.values.ravel(), crop.nir08.values.ravel())[0, 1] > 0.8


@pytest.mark.parametrize("name", ["29RKH", "bigearthnet"])
@pytest.mark.parametrize("chunks", [None, 100, 333, {"y": 250}])
def test_a_sample_read_chunk_by_chunk_is_the_whole_band_read_at_once(name, chunks):
    """Every chunk reads only its window (the 20 m bands resampled by GDAL through a
    fractional window): the values of one read of the whole band, on every band."""
    import rasterio
    from rasterio.enums import Resampling

    from srlib.bands import S2_FILE_BANDS
    from srlib.scene.sample import SAMPLES, _data_dir

    ds = srlib.sample_scene(name, chunks=chunks)
    folder = _data_dir(SAMPLES[name][0])
    files = {S2_FILE_BANDS[p.stem]: p for p in folder.glob("*.tif")}
    assert set(files) == set(ds.data_vars)
    shape = (ds.sizes["y"], ds.sizes["x"])
    for band, path in files.items():
        method = Resampling.nearest if band == "scl" else Resampling.bilinear
        with rasterio.open(path) as src:
            whole = src.read(1, out_shape=shape, resampling=method)
        asked = chunks if isinstance(chunks, dict) else {"y": chunks or 512, "x": chunks or 512}
        assert [c[0] for c in ds[band].chunks] == [min(size, asked.get(dim, 512))
                                                  for dim, size in zip("yx", shape, strict=True)]
        np.testing.assert_array_equal(ds[band].values, whole, err_msg=band)


def test_a_sample_chunk_is_read_once_per_compute_and_a_rewritten_file_is_read_anew(
        tmp_path, monkeypatch):
    """Each chunk task reads its own window, once: computing a corner reads its chunks of
    every band, not whole bands; a band file rewritten in place is opened again."""
    import shutil

    import rasterio

    import srlib.scene.sample as sample

    folder = tmp_path / "scene"
    shutil.copytree(sample._data_dir(sample.SAMPLES["29RKH"][0]), folder)
    calls = []
    real = sample._read

    def counted(path, shape, resampling, y0, y1, x0, x1):
        calls.append((os.path.basename(path), y0, y1, x0, x1))
        return real(path, shape, resampling, y0, y1, x0, x1)

    monkeypatch.setattr(sample, "_read", counted)  # before the graph holds the function
    ds = srlib.scene.sample.scene_folder(folder, chunks=256)
    with dask.config.set(scheduler="synchronous"):  # one thread: its handles kept
        corner = ds.isel(y=slice(0, 300), x=slice(0, 200)).compute()
    monkeypatch.undo()
    # rows 0-255 and 256-511, columns 0-255: 2 chunks of each of the 11 band files
    assert sorted(set(calls)) == sorted(calls) and len(calls) == 2 * len(ds.data_vars)
    assert {(c[1], c[3]) for c in calls} == {(0, 0), (256, 0)}
    before = corner.red.values.copy()
    with rasterio.open(folder / "B04.tif", "r+") as dst:
        dst.write(np.full((1, *before.shape), 7, np.uint16), window=((0, 300), (0, 200)))
    with dask.config.set(scheduler="synchronous"):  # the same thread, a handle open
        after = srlib.scene.sample.scene_folder(folder, chunks=256).red[:300, :200].values
    assert (after == 7).all() and not (before == 7).all()


def test_output_grid_is_exactly_scale_times_finer(scene):
    sr = srlib.super_resolve(scene)
    assert sr.sizes == {"y": 96 * SCALE, "x": 96 * SCALE}
    assert sr.rio.crs == scene.rio.crs
    assert sr.rio.bounds() == pytest.approx(scene.rio.bounds(), abs=1e-6)
    t_in, t_out = scene.rio.transform(), sr.rio.transform()
    assert (t_out.a, t_out.e) == (t_in.a / SCALE, t_in.e / SCALE)
    assert (t_out.c, t_out.f) == (t_in.c, t_in.f)
    # coordinates are pixel centres of that transform
    assert sr.x.values[0] == pytest.approx(t_out.c + t_out.a / 2)
    assert sr.y.values[-1] == pytest.approx(t_out.f + t_out.e * (sr.sizes["y"] - 0.5))
    assert sr.rio.transform(recalc=True) == t_out
    assert [str(v) for v in sr.data_vars] == ["red", "green", "blue", "nir", "quality"]
    assert all(sr[b].dtype == np.int16 for b in srlib.OUTPUT_BANDS)
    assert sr.quality.dtype == np.uint8
    assert sr.red.rio.nodata == OUTPUT_NODATA


def test_ground_point_lands_in_the_right_output_pixel():
    ds = synthetic_scene((30, 30), with_scl=False)
    for band in srlib.S2_BANDS:
        ds[band] = ds[band] * 0 + np.uint16(1000)
    ds["red"][17, 11] = np.uint16(9000)  # a bright target at one input pixel
    x_map, y_map = float(ds.x[11]), float(ds.y[17])
    sr = srlib.super_resolve(ds).red.compute()
    iy, ix = np.unravel_index(np.argmax(sr.values), sr.shape)
    # the brightest output pixel lies within the input pixel's footprint ...
    assert abs(float(sr.x[ix]) - x_map) < 5 and abs(float(sr.y[iy]) - y_map) < 5
    # ... and the bright area is centred on the target's map coordinates
    bright = sr.where(sr > 5000, drop=True)
    assert float(bright.x.mean()) == pytest.approx(x_map, abs=0.01)
    assert float(bright.y.mean()) == pytest.approx(y_map, abs=0.01)
    col, row = (~sr.rio.transform()) * (x_map, y_map)
    assert (int(row), int(col)) == (17 * SCALE + SCALE // 2, 11 * SCALE + SCALE // 2)
    assert sr.values[int(row), int(col)] == sr.values.max()


def test_nothing_computes_until_asked(scene, tiny_swin):
    with raise_if_dask_computes():
        sr = srlib.super_resolve(scene, chunks=32)
        sr2 = srlib.super_resolve(scene, tiny_swin, chunks=32)
        _ = sr.red + 1, sr2.quality == 1  # arithmetic stays lazy too
    assert sr.red.chunks and sr2.red.chunks


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cy=st.integers(5, 96), cx=st.integers(5, 96))
def test_bicubic_is_identical_for_any_chunking(scene, cy, cx):
    ref = _reference_bicubic(scene)
    got = srlib.super_resolve(scene, chunks=(cy, cx)).compute()
    for var in ref.data_vars:
        np.testing.assert_array_equal(got[var].values, ref[var].values)


_REF: dict = {}


def _reference_bicubic(scene):
    if "bicubic" not in _REF:
        _REF["bicubic"] = srlib.super_resolve(scene, chunks=96).compute()
    return _REF["bicubic"]


@pytest.mark.parametrize("chunks", [(16, 16), (24, 40), (70, 33), (96, 96)])
def test_swin2sr_chunk_borders_within_tolerance(scene, tiny_swin, chunks):
    ref = srlib.super_resolve(scene, tiny_swin, chunks=48).compute()
    got = srlib.super_resolve(scene, tiny_swin, chunks=chunks).compute()
    for var in srlib.OUTPUT_BANDS:
        diff = np.abs(got[var].values.astype(np.int32) - ref[var].values)
        # documented tolerance: 1 DN (reflectance 1e-4); measured 0 on CPU
        assert diff.max() <= 1, (var, chunks, diff.max())
    np.testing.assert_array_equal(got.quality.values, ref.quality.values)


def test_bicubic_matches_interpolation_of_a_linear_ramp():
    ds = synthetic_scene((24, 24), with_scl=False)
    ramp = (1000 + 50 * np.arange(24))[None, :].repeat(24, axis=0).astype(np.uint16)
    for band in srlib.S2_BANDS:
        ds[band] = (("y", "x"), ramp)
        ds[band].attrs.update(nodata=0)
    sr = srlib.super_resolve(ds).red.compute().values
    # a linear ramp is reproduced exactly away from the edges (cubic kernels are exact on
    # linear functions): value at output column j is the input ramp at (j + 0.5)/10 - 0.5
    cols = np.arange(30, 200)
    expected = 1000 + 50 * ((cols + 0.5) / SCALE - 0.5)
    np.testing.assert_allclose(sr[100, cols], np.rint(expected), atol=1)


@pytest.mark.parametrize("kind", ["nodata", "nan"])
def test_nodata_in_gives_nodata_out_without_poisoning_neighbours(kind, tiny_swin):
    ds = synthetic_scene((40, 40), with_scl=False)
    clean_bi = srlib.super_resolve(ds).compute()
    clean_sw = srlib.super_resolve(ds, tiny_swin).compute()
    holed = ds.copy()
    if kind == "nan":
        holed["nir"] = holed["nir"].astype(np.float32).where(
            ~((holed.y == holed.y[20]) & (holed.x == holed.x[21])))
    else:
        holed["nir"] = holed["nir"].where(
            ~((holed.y == holed.y[20]) & (holed.x == holed.x[21])), 0).astype(np.uint16)
        holed["nir"].attrs.update(nodata=0)
    for sr in (srlib.super_resolve(holed).compute(),
               srlib.super_resolve(holed, tiny_swin).compute()):
        foot = (slice(200, 210), slice(210, 220))
        for band in srlib.OUTPUT_BANDS:
            assert (sr[band].values[foot] == OUTPUT_NODATA).all()
        assert (sr.quality.values[foot] == Quality.NODATA).all()
        mask = np.ones(sr.quality.shape, bool)
        mask[foot] = False
        assert (sr.quality.values[mask] == Quality.CLEAR).all()
        for band in srlib.OUTPUT_BANDS:
            assert (sr[band].values[mask] != OUTPUT_NODATA).all()
    # bicubic: pixels more than 2 input pixels away are untouched
    sr = srlib.super_resolve(holed).compute()
    far = np.ones(sr.quality.shape, bool)
    far[170:240, 180:250] = False
    np.testing.assert_array_equal(sr.nir.values[far], clean_bi.nir.values[far])
    assert (sr.nir.values[mask] > 0).all()
    # swin2sr: only the patches (16 px, stride 12) that contain the hole see the fill value
    sr = srlib.super_resolve(holed, tiny_swin).compute()
    far = np.ones(sr.quality.shape, bool)
    far[120:280, 120:280] = False
    np.testing.assert_array_equal(sr.nir.values[far], clean_sw.nir.values[far])


def test_scl_feeds_quality_codes():
    ds = synthetic_scene((20, 20))
    scl = np.full((20, 20), 4, np.uint8)
    scl[0, 0], scl[0, 1], scl[0, 2], scl[0, 3], scl[0, 4], scl[0, 5] = 9, 3, 11, 6, 0, 10
    ds["scl"] = (("y", "x"), scl)
    q = srlib.super_resolve(ds).quality.compute().values[::SCALE, ::SCALE]
    assert list(q[0, :7]) == [Quality.CLOUD, Quality.CLOUD_SHADOW, Quality.SNOW, Quality.WATER,
                              Quality.NODATA, Quality.CLOUD, Quality.CLEAR]
    red = srlib.super_resolve(ds).red.compute().values
    assert (red[:SCALE, 4 * SCALE: 5 * SCALE] == OUTPUT_NODATA).all()


def test_accepts_time_dim_and_band_dataarray(scene):
    ref = srlib.super_resolve(scene).red.compute()
    with_time = scene.expand_dims(time=[np.datetime64("2020-02-19")])
    got = srlib.super_resolve(with_time).red.compute()
    np.testing.assert_array_equal(got.values, ref.values)
    assert got.rio.transform() == ref.rio.transform()
    assert got.rio.transform().a == scene.rio.transform().a / SCALE
    assert got["time"].values == np.datetime64("2020-02-19")
    stacked = scene[list(srlib.S2_BANDS)].to_dataarray("band").rio.write_crs(scene.rio.crs)
    stacked.attrs.update(nodata=0, scale_factor=1e-4, add_offset=0.0)
    np.testing.assert_array_equal(srlib.super_resolve(stacked).red.values, ref.values)


def test_add_offset_is_applied_once():
    ds = synthetic_scene((16, 16), with_scl=False)
    shifted = ds.copy()
    for band in srlib.S2_BANDS:
        shifted[band] = (ds[band] + 1000).astype(np.uint16)
        shifted[band].attrs.update(nodata=0, scale_factor=1e-4, add_offset=-0.1)
    a = srlib.super_resolve(ds).red.values
    b = srlib.super_resolve(shifted).red.values
    np.testing.assert_array_equal(a, b)


def test_tiny_input_smaller_than_the_halo(tiny_swin):
    ds = synthetic_scene((7, 5))
    sr = srlib.super_resolve(ds, tiny_swin).compute()
    assert sr.sizes == {"y": 70, "x": 50}
    assert (sr.quality.values == Quality.CLEAR).all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ds: ds.drop_vars(["nir", "swir22"]), "lacks bands ['nir', 'swir22']"),
        (lambda ds: xr.concat([ds, ds], dim="time"), "isel(time=0)"),
        (lambda ds: ds.rio.write_crs("EPSG:4326"), "not projected"),
        (lambda ds: ds.isel(y=slice(0, 0)), "empty"),
        (lambda ds: ds.drop_vars("spatial_ref"), "no CRS"),
        (lambda ds: ds.isel(x=slice(3, 4)), "1 pixel along x"),
        (lambda ds: ds.isel(x=slice(3, 4), y=slice(0, 1)), "1 pixel along x and y"),
    ],
)
def test_bad_input_raises_a_clear_error(mutate, message):
    ds = synthetic_scene((16, 16))
    with pytest.raises(srlib.InputError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        srlib.super_resolve(mutate(ds))


def test_a_one_pixel_strip_with_its_transform_written_keeps_its_georeferencing():
    sample = srlib.sample_scene()
    strip = sample.isel(x=slice(3, 4), y=slice(5, 40))  # the sample writes its transform
    sr = srlib.super_resolve(strip)
    assert sr.sizes == {"y": 350, "x": 10}
    t = strip.rio.transform()
    assert sr.rio.transform() == Affine(t.a / 10, 0, t.c, 0, t.e / 10, t.f)


def _declared(ds: xr.Dataset, factor: float, scale_factor: float) -> xr.Dataset:
    out = ds.copy()
    for band in srlib.S2_BANDS:
        out[band] = (ds[band].astype("float32") * factor).assign_attrs(
            nodata=0, scale_factor=scale_factor, add_offset=0.0)
    return out


@pytest.mark.parametrize(("factor", "scale_factor", "says"), [
    (1e-4, 1e-4, "hold reflectance .0-1., set their attrs\\['scale_factor'\\] = 1.0"),
    (1.0, 1.0, "hold DN, set their attrs\\['scale_factor'\\] = 1e-4"),
])
def test_a_scene_whose_scale_is_misdeclared_fails_naming_the_fix(factor, scale_factor, says):
    """Reflectance (0-1) that still says DN (``ds.astype('float32') / 1e4`` keeps the
    attributes) made an all-zero product with every pixel marked clear; DN that says
    reflectance, one saturated at 32767. Both now fail at the first block."""
    ds = synthetic_scene((32, 32))
    good = srlib.super_resolve(ds).compute()
    with pytest.raises(srlib.InputError, match=f"median is .*; if the bands {says}"):
        srlib.super_resolve(_declared(ds, factor, scale_factor)).compute()
    # declared right, the same scene gives the same product
    right = srlib.super_resolve(_declared(ds, factor, 1e-4 / factor)).compute()
    np.testing.assert_array_equal(right.quality.values, good.quality.values)
    for band in ("red", "green", "blue", "nir"):  # float32 reflectance: off by 1 at most
        np.testing.assert_allclose(right[band].values, good[band].values, atol=1, rtol=0)


def test_zeros_not_declared_nodata_fail_naming_nodata_and_a_few_are_kept():
    """Zeros with no nodata attribute (older xarray drops attributes in arithmetic) were
    super-resolved as reflectance 0, every pixel "clear"."""
    ds = synthetic_scene((32, 32), with_scl=False)
    bare = ds.copy()
    for band in srlib.S2_BANDS:
        bare[band] = xr.DataArray(np.zeros(ds[band].shape, "uint16"), coords=ds[band].coords,
                                  dims=ds[band].dims, attrs={"scale_factor": 1e-4})
    with pytest.raises(srlib.InputError, match=r"exactly 0, and 0 is not its nodata value.*"
                                               r"rio.write_nodata\(0\)"):
        srlib.super_resolve(bare).compute()
    # a third of the pixels 0 (a dark corner, say) is data like any other
    some = ds.copy()
    for band in srlib.S2_BANDS:
        some[band] = ds[band].where(ds.y < ds.y[9], 0).astype(ds[band].dtype)
        some[band].attrs = {"scale_factor": 1e-4}
    out = srlib.super_resolve(some).compute()
    assert int((out.quality == 1).sum()) == out.quality.size


def test_bad_arguments_raise_clear_errors(scene):
    with pytest.raises(srlib.InputError, match="pass scale=10"):
        srlib.super_resolve(scene, srlib.load_model("bicubic", scale=10), scale=4)
    with pytest.raises(srlib.ModelError, match="unknown model"):
        srlib.super_resolve(scene, "esrgan")
    with pytest.raises(srlib.ModelError, match="random_weights=True"):
        srlib.super_resolve(scene, "swin2sr")
    with pytest.raises(srlib.InputError, match="use 'cpu'"):
        srlib.super_resolve(scene, device="cuda")
    with pytest.raises(srlib.InputError, match="Dataset"):
        srlib.super_resolve(np.zeros((3, 3)))


def test_flush_subnormals_zeroes_subnormal_floats_in_a_fresh_process():
    import subprocess
    import sys

    code = ("import srlib, torch; x = torch.tensor([1e-39]); before = (x * 1.0).item(); "
            "ok = srlib.flush_subnormals(); print(before, ok, (x * 1.0).item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert float(out[0]) > 0  # off by default: the library never sets it on import
    if out[1] == "True":  # x86 and most ARM CPUs support it
        assert float(out[2]) == 0.0


def test_cpu_output_is_identical_whatever_the_number_of_lanes(scene, tiny_swin, monkeypatch):
    """Forward passes run single-threaded in parallel lanes: same bytes with 1, 2 or 3."""
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)  # read when the process's lanes start
            srlib.engine.lanes.reset_process_lanes()
            results.append(srlib.super_resolve(scene, tiny_swin, chunks=48)
                           .compute(scheduler="sync"))
            lanes = srlib.engine.lanes.current_lanes()
            assert lanes.lanes == min(n, len(os.sched_getaffinity(0)))
            assert lanes.free == lanes.lanes  # every lane came back
            assert torch.get_num_threads() == n  # the lanes never change the caller's
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for var in results[0].data_vars:
            np.testing.assert_array_equal(other[var].values, results[0][var].values)


def test_lanes_leave_the_thread_count_of_new_threads_alone(scene, tiny_swin, monkeypatch):
    """torch gives a new thread the count last set anywhere; the lanes set theirs to 1.

    Unrestored, dask's second thread started its blocks with one lane (measured: half
    the blocks of a Swin2SR scene ran on one core of two).
    """
    srlib.engine.lanes.reset_process_lanes()
    expected = torch.get_num_threads()
    srlib.super_resolve(scene, tiny_swin, chunks=48).compute(scheduler="sync")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [expected]

    def lane_threads() -> int:  # a parallel operator inside a lane runs on one thread
        x = torch.ones(1 << 20)
        return torch.get_num_threads() if bool((x + x).sum() > 0) else -1

    lanes = srlib.engine.lanes.current_lanes()
    counts = [lanes.pool.submit(lane_threads).result() for _ in range(4)]
    assert counts == [1] * 4


class _Constant(torch.nn.Module):
    """Every output pixel the same normalised value, whatever the patch."""

    def forward(self, x):
        n, _, h, w = x.shape
        return torch.full((n, 4, h * SCALE, w * SCALE), 0.3125)


def test_feather_weights_sum_to_one_everywhere(scene):
    """The blend is a plain weighted sum: a constant model must come out constant."""
    spec = srlib.load_model(_Constant(), patch_size=16, overlap=8, halo=16)
    sr = srlib.super_resolve(scene, spec, chunks=24).compute()
    mean, std = spec.stats.output.arrays()
    expected = np.rint(0.3125 * std[:, 0, 0] + mean[:, 0, 0]).astype(np.int16)
    valid = sr.quality.values != Quality.NODATA
    for i, band in enumerate(spec.bands_out):
        assert (sr[band].values[valid] == expected[i]).all()


def test_feather_overlap_beyond_half_a_patch_is_refused():
    with pytest.raises(srlib.ModelError, match="patch_size // 2"):
        srlib.load_model(_Constant(), patch_size=16, overlap=9, halo=16)


class _FailsOnThirdCall(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = srlib.load_model("bicubic").build()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("boom on the third batch")
        return self.inner(x)


def test_a_failing_forward_pass_stops_every_lane_and_surfaces(scene):
    module = _FailsOnThirdCall()
    spec = srlib.load_model(module, blend="trim", halo=2, patch_size=8)  # many batches
    sr = srlib.super_resolve(scene, spec, chunks=96, batch_size=1)
    with pytest.raises(RuntimeError, match="boom on the third batch"):
        sr.compute(scheduler="sync")
    total = len(range(0, 96, 4)) ** 2  # 8 px patches with a 2 px halo: 4 px cores
    assert module.calls < total / 2  # the other lanes stopped instead of finishing


class _CountsConcurrentPasses(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = srlib.load_model("bicubic").build()
        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def forward(self, x):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return self.inner(x)


def test_cpu_forward_passes_never_outnumber_the_cores(scene):
    """More dask threads than cores, each with its lanes: still one pass per core at once."""
    module = _CountsConcurrentPasses()
    spec = srlib.load_model(module, blend="trim", halo=2, patch_size=12)
    sr = srlib.super_resolve(scene, spec, chunks=24, batch_size=1)  # 16 blocks
    cores = len(os.sched_getaffinity(0))
    with dask.config.set(scheduler="threads", num_workers=cores + 2):
        sr.compute()
    assert 1 < module.most <= cores or cores == 1


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_blocks_give_free_heap_memory_back_when_much_is_free(monkeypatch):
    """After a block, glibc's free heap memory goes back to the OS once it passes the budget."""
    import srlib.engine.memory as memory

    assert memory._MALLOC_TRIM is not None and memory._MALLINFO2 is not None  # real calls
    assert memory._free_heap_bytes() >= 0
    calls, free = [], iter([0, 2 << 30, memory.KEEP_FREE // 2, 3 << 30])  # bytes free
    monkeypatch.setattr(memory, "_MALLOC_TRIM", lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(memory, "_free_heap_bytes", lambda: next(free))
    ds = synthetic_scene((40, 40), with_scl=False)
    srlib.super_resolve(ds, chunks=20).compute(scheduler="synchronous")  # 2 x 2 blocks
    assert calls == [0, 0]  # the second and the fourth block: over the budget
    monkeypatch.setattr(memory, "_free_heap_bytes", lambda: None)  # glibc < 2.33
    srlib.super_resolve(ds, chunks=20).compute(scheduler="synchronous")
    assert calls == [0] * 6  # cannot tell: every block trims, as before


def test_the_free_heap_kept_is_an_eighth_of_the_memory_left_at_most(monkeypatch, tmp_path):
    """The budget follows the memory this process may still take, a cgroup's included."""
    import srlib.engine.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda: 800 << 20)  # SLURM --mem room
    assert memory._keep_free() == 100 << 20
    monkeypatch.setattr(memory, "available_memory", lambda: 64 << 30)
    assert memory._keep_free() == memory.KEEP_FREE
    monkeypatch.setattr(memory, "available_memory", lambda: None)  # cannot tell
    assert memory._keep_free() == memory.KEEP_FREE
    # and the real figures: a cgroup v2 limit with 400 MB left, the page cache counted
    (tmp_path / "self").mkdir()
    (tmp_path / "meminfo").write_text("MemFree: 1000 kB\nMemAvailable: 16000000 kB\n")
    (tmp_path / "self" / "cgroup").write_text("0::/job\n")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "memory.max").write_text(str(2000 << 20))
    (tmp_path / "job" / "memory.current").write_text(str(1600 << 20))
    real = srlib.config.available_memory
    monkeypatch.setattr(memory, "available_memory",
                        lambda: real(proc=tmp_path, cgroup=tmp_path))
    assert memory._keep_free() == (400 << 20) // 8


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_is_tuned_once_per_process_unless_turned_off(monkeypatch):
    import srlib.engine.memory as memory

    calls = []
    monkeypatch.setattr(memory, "_MALLOPT", lambda param, value: calls.append((param, value)))
    monkeypatch.setattr(memory, "_tuned", False)
    monkeypatch.setenv("SRLIB_TUNE_MALLOC", "0")
    assert not memory.tune_malloc() and calls == []
    monkeypatch.delenv("SRLIB_TUNE_MALLOC")
    ds = synthetic_scene((40, 40), with_scl=False)
    srlib.super_resolve(ds, chunks=20).compute(scheduler="threads")  # 4 blocks, 1 tuning
    assert calls == [(-3, 32 << 20), (-1, 2**31 - 1), (-8, 1)]  # mmap, trim, arenas
    assert not memory.tune_malloc()


@pytest.mark.parametrize("model", ["bicubic", "swin"])
@pytest.mark.parametrize("lanes", [None, 0])
def test_post_processing_on_the_device_matches_the_host(tiny_swin, model, lanes, monkeypatch):
    """The GPU's torch path (blend, de-normalise, quantise; int16 back), run on the CPU.

    ``lanes=0`` is the GPU's schedule: one batch after another, the next one prepared by
    the prefetch thread.
    """
    import dataclasses

    from srlib.engine import kernel

    spec = tiny_swin if model == "swin" else "bicubic"
    ds = synthetic_scene((70, 90))
    ds["red"][5:9, 7:12] = 0  # nodata: flagged the same on both paths
    calls = []
    block = kernel.sr_block

    def counted(*args, cfg, **kwargs):
        calls.append(cfg.post)
        return block(*args, cfg=dataclasses.replace(cfg, lanes=lanes), **kwargs)

    monkeypatch.setattr(srlib.engine.superres, "sr_block", counted)
    host = srlib.super_resolve(ds, spec, chunks=40, postprocess="host").compute()
    device = srlib.super_resolve(ds, spec, chunks=40, postprocess="device").compute()
    assert set(calls) == {"host", "device"}
    for var in host.data_vars:
        diff = np.abs(host[var].values.astype(np.int32) - device[var].values.astype(np.int32))
        assert diff.max() <= 1, var  # the bound; on the CPU the same bytes
        np.testing.assert_array_equal(host[var].values, device[var].values)
    assert (host["quality"].values == 0).any()
    with pytest.raises(srlib.InputError, match="postprocess must be"):
        srlib.super_resolve(ds, postprocess="gpu")
