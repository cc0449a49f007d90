"""Done means delivered and right: identity, whole stores, manifests, refused bad input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import srlib
from srlib.models import spec_identity
from srlib.models.stats import default_s2_stats, read_stats
from srlib.ops.jobs import aoi_key, product_name
from srlib.product.manifest import manifest_path, verify_local, write_manifest

from .conftest import synthetic_scene

DAY = dt.date(2020, 2, 19)


# -- 1. product identity --------------------------------------------------------------------
def test_aoi_products_get_distinct_names_and_bad_templates_are_refused():
    keys = {aoi_key("EPSG:32629", (x, 0, x + 100, 100)) for x in range(0, 2000, 100)}
    assert len(keys) == 20  # twenty AOIs on one tile and date: twenty names
    assert aoi_key("EPSG:32629", (0, 0, 100, 100)) == aoi_key("EPSG:32629", (0, 0, 100, 100))
    name = product_name("S2x10_T{mgrs}_{date:%Y%m%d}_{aoi}_v{version}.tif", mgrs="29RKH",
                        date=DAY, version=1, aoi="ab12cd34")
    assert name == "S2x10_T29RKH_20200219_ab12cd34_v1.tif"
    refused = {
        "{foo}.tif": "unknown fields",
        "../x/{mgrs}_{aoi}.tif": "plain file name",
        "/abs/{mgrs}_{aoi}.tif": "plain file name",
        ".{mgrs}_{aoi}.tif": "plain file name",
        "{mgrs}_{aoi}.png": "ending in .tif",
        "{mgrs": "bad product name template",
        "{date:%Y%m%d}_{mgrs}.tif": "neither {aoi} nor {request}",
    }
    for template, message in refused.items():
        with pytest.raises(srlib.InputError, match=message.replace("{", r"\{")):
            product_name(template, mgrs="29RKH", date=DAY, version=1, aoi="k")
    assert product_name("{mgrs}_r{request}.tif", mgrs="29RKH", date=DAY, version=1,
                        aoi="k", request=7) == "29RKH_r7.tif"


# -- 3. identity that follows the bytes -----------------------------------------------------
def test_identity_covers_stats_geometry_and_module_code():
    base = srlib.load_model("bicubic")
    stats = default_s2_stats(srlib.S2_BANDS, srlib.OUTPUT_BANDS)
    moved = dataclasses.replace(stats, output=dataclasses.replace(
        stats.output, mean=tuple(m + 2000 for m in stats.output.mean)))
    assert spec_identity(srlib.load_model("bicubic", stats=moved)) != spec_identity(base)
    assert spec_identity(srlib.load_model("bicubic", halo=3)) != spec_identity(base)
    swin = dict(random_weights=True)
    a = srlib.load_model("swin2sr", **swin)
    b = srlib.load_model("swin2sr", stats=moved, **swin)
    assert spec_identity(a) != spec_identity(b)  # the token alone left stats out

    class Twice(torch.nn.Module):
        def forward(self, x):
            up = torch.nn.functional.interpolate(x[:, :4], scale_factor=10)
            return up * 2

    class Thrice(torch.nn.Module):
        def forward(self, x):
            up = torch.nn.functional.interpolate(x[:, :4], scale_factor=10)
            return up * 3

    two = srlib.load_model(Twice(), blend="trim", halo=2)
    three = srlib.load_model(Thrice(), blend="trim", halo=2)
    assert two.token != three.token  # equal (empty) state dicts, other code
    scene = synthetic_scene((24, 24), with_scl=False)
    out2 = srlib.super_resolve(scene, two).red.values
    out3 = srlib.super_resolve(scene, three).red.values
    assert not np.array_equal(out2, out3)  # the second did not silently run the first


def test_changed_stats_recompute_instead_of_resuming_the_old_store(tmp_path):
    scene = synthetic_scene((48, 48), with_scl=False)
    stats = default_s2_stats(srlib.S2_BANDS, srlib.OUTPUT_BANDS)
    wrong = dataclasses.replace(stats, output=dataclasses.replace(
        stats.output, mean=tuple(m - 2000 for m in stats.output.mean)))
    cog = tmp_path / "p.tif"
    loose = {"max_consistency_bias": 1e9, "max_consistency_mad": 1e9,
             "max_band_mad_ratio": 1e9, "max_band_shift_ratio": 1e9,
             "max_local_consistency_error": 1e9}
    srlib.super_resolve_to_cog(scene, cog, model=srlib.load_model("bicubic", stats=wrong),
                               thresholds=loose)
    first = srlib.open_zarr(cog.with_suffix(".zarr")).red.values.mean()
    report = srlib.super_resolve_to_cog(scene, cog, model="bicubic")
    second = srlib.open_zarr(cog.with_suffix(".zarr")).red.values.mean()
    assert second - first == pytest.approx(2000, abs=5)  # recomputed, not resumed
    assert report["consistency"].status == "pass"


# -- 4. stores that prove they are whole ----------------------------------------------------
def _store(tmp_path: Path) -> tuple[Path, object]:
    scene = synthetic_scene((160, 160), with_scl=True)
    sr = srlib.super_resolve(scene, chunks=80)
    return srlib.to_zarr(sr, tmp_path / "p.zarr"), sr


def test_a_deleted_chunk_is_refused_naming_its_region_and_resume_rewrites_it(tmp_path):
    store, sr = _store(tmp_path)
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    chunk = store / "red" / "2.1"
    chunk.unlink()
    with pytest.raises(srlib.IncompleteStoreError, match=r"regions \['1-0'\]"):
        srlib.open_zarr(store)
    with pytest.raises(srlib.IncompleteStoreError, match="missing"):
        srlib.to_cog(store, tmp_path / "p.tif")
    assert not (tmp_path / "p.tif").exists()
    (store / "overviews" / "2" / "nir" / "0.0").unlink()  # an overview chunk too
    srlib.to_zarr(sr, store)
    after = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if not k.name.startswith(".z")} == \
        {k: v for k, v in before.items() if not k.name.startswith(".z")}
    srlib.to_cog(store, tmp_path / "p.tif")


def test_to_cog_only_reads_its_store_and_removes_leftovers_of_killed_runs(tmp_path):
    store, sr = _store(tmp_path)
    (store / "red" / "0.0.deadbeef.partial").write_bytes(b"torn")
    srlib.to_zarr(sr, store)  # a rerun on a complete store cleans torn chunk files
    assert not list(store.rglob("*.partial"))
    stamp = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    target = tmp_path / "p.tif"
    leftovers = [tmp_path / ".p.tif.abc123.tmp.tif", tmp_path / ".p.tif.abc123.tmp.vrt"]
    for path in leftovers:
        path.write_bytes(b"x" * 1000)
    os.chmod(store, 0o555)
    try:
        srlib.to_cog(store, target)
    finally:
        os.chmod(store, 0o755)
    assert not any(p.exists() for p in leftovers)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*")
            if p.is_file()} == stamp  # nothing in the input store was written


# -- 2. manifests ---------------------------------------------------------------------------
def test_manifest_is_written_last_and_only_a_complete_one_is_trusted(tmp_path):
    cog = tmp_path / "p.tif"
    cog.write_bytes(b"c" * 100)
    qc = cog.with_suffix(".qc.json")
    qc.write_text("{}")
    with pytest.raises(srlib.InputError, match="failed QC"):
        write_manifest(cog, [cog, qc], identity={}, qc={"passed": False, "failed": ["values"]})
    assert verify_local(cog)[0] is None
    write_manifest(cog, [cog, qc], identity={"date": "20200219"}, qc={"passed": True})
    body, why = verify_local(cog)
    assert why == "complete" and [f["name"] for f in body["files"]] == ["p.tif", "p.qc.json"]
    cog.write_bytes(b"c" * 99)  # truncated
    assert "99 bytes" in verify_local(cog)[1]
    cog.write_bytes(b"c" * 100)
    qc.unlink()
    assert "missing" in verify_local(cog)[1]
    manifest_path(cog).write_text(json.dumps({"srlib_manifest": 1, "files": []}))
    assert "not a complete manifest" in verify_local(cog)[1]


# -- 8. bad input refused up front ----------------------------------------------------------
def _bad_inputs(tmp_path: Path) -> dict[str, tuple[type, object]]:
    scene = synthetic_scene((24, 24), with_scl=False)
    x = scene.x.values.copy()
    x[5] += 3
    y = scene.y.values.copy()
    y[3] = np.nan

    def band(dtype):
        ds = scene.copy()
        ds["red"] = ds["red"].astype(dtype)
        return ds

    def attr(value):
        ds = scene.copy()
        ds["red"] = ds["red"].copy()
        ds["red"].attrs["scale_factor"] = value
        return ds

    def stats(mean, std):
        path = tmp_path / f"stats{len(list(tmp_path.glob('stats*')))}.json"
        block = {"mean": mean, "std": std}
        path.write_text(json.dumps({"input": {**block, "bands": list(srlib.S2_BANDS)},
                                    "output": {"mean": [0.0] * 4, "std": [1.0] * 4}}))
        return lambda: read_stats(path, bands_in=srlib.S2_BANDS, bands_out=srlib.OUTPUT_BANDS)

    class Pair(torch.nn.Module):
        def forward(self, x):
            up = torch.nn.functional.interpolate(x[:, :4], scale_factor=10)
            return up, up

    class ScriptedPair(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            up = torch.nn.functional.interpolate(x[:, :4], scale_factor=10.0)
            return up, up

    scripted = torch.jit.script(ScriptedPair())
    corrupt = tmp_path / "broken.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(corrupt))
    corrupt.write_bytes(corrupt.read_bytes()[:-200])
    sr = srlib.super_resolve
    return {
        "irregular x": (srlib.InputError, lambda: sr(scene.assign_coords(x=x))),
        "NaN y": (srlib.InputError, lambda: sr(scene.assign_coords(y=y))),
        "bool band": (srlib.InputError, lambda: sr(band("bool"))),
        "complex band": (srlib.InputError, lambda: sr(band("complex64"))),
        "int8 band": (srlib.InputError, lambda: sr(band("int8"))),
        "chunks=10.5": (srlib.InputError, lambda: sr(scene, chunks=10.5)),
        "chunks={'z': 3}": (srlib.InputError, lambda: sr(scene, chunks={"z": 3})),
        "scale_factor='abc'": (srlib.InputError, lambda: sr(attr("abc"))),
        "scale_factor=nan": (srlib.InputError, lambda: sr(attr(float("nan")))),
        "device='gpu7'": (srlib.InputError, lambda: sr(scene, device="gpu7")),
        "stats with NaN": (srlib.ModelError, stats([float("nan")] * 10, [1.0] * 10)),
        "stats with inf": (srlib.ModelError, stats([1.0] * 10, [float("inf")] * 10)),
        "string std": (srlib.ModelError, stats([1.0] * 10, "1111111111")),
        "model returning a tuple": (srlib.ModelError, lambda: sr(
            scene, srlib.load_model(Pair(), blend="trim", halo=2)).red.values),
        "TorchScript returning a tuple": (srlib.ModelError, lambda: sr(
            scene, srlib.load_model(scripted, blend="trim", halo=2)).red.values),
        "corrupted TorchScript": (srlib.ModelError,
                                  lambda: srlib.load_model("swin2sr", checkpoint=corrupt)),
        "unknown model": (srlib.ModelError, lambda: srlib.load_model("foo")),
        "swin2sr without weights": (srlib.ModelError, lambda: srlib.load_model("swin2sr")),
    }


def test_every_bad_input_is_refused_with_a_clear_error(tmp_path):
    cases = _bad_inputs(tmp_path)
    refused = []
    for name, (error, call) in cases.items():
        with pytest.raises(error) as info:
            call()
        assert len(str(info.value)) > 20, name  # a sentence, not a bare value
        refused.append(name)
    assert len(refused) == len(cases) == 18


def test_a_product_that_would_not_fit_on_the_disk_is_refused_before_any_compute(tmp_path):
    import dask.array as da
    import xarray as xr

    from .conftest import raise_if_dask_computes

    n = 100_000  # a 1,000,000 px square product: about 9 TB, more than this disk holds
    ds = xr.Dataset({b: (("y", "x"), da.zeros((n, n), dtype="uint16", chunks=25_000),
                         {"nodata": 0}) for b in srlib.S2_BANDS},
                    coords={"y": 5e6 - 10 * (np.arange(n) + 0.5),
                            "x": 4e5 + 10 * (np.arange(n) + 0.5)}).rio.write_crs("EPSG:32633")
    with raise_if_dask_computes(), pytest.raises(srlib.DiskSpaceError,
                                                 match=r"needs about \d+\.\d TB in .* but "
                                                       r"\d+\.\d [kMGT]?B are free"):
        srlib.super_resolve_to_cog(ds, tmp_path / "huge.tif", chunks=25_000)
    assert not (tmp_path / "huge.zarr").exists()
