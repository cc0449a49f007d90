"""`srlib dr` end to end against loopback servers: STAC API, S3 (moto), a webhook."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from srlib.cli import main

from .servers import CREDENTIALS

pytestmark = pytest.mark.integration

AOI = ["-11.5", "24.5", "-11.45", "24.55"]


def _keys(client, prefix):
    listing = client.list_objects_v2(Bucket="products", Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_dr_aoi_publishes_a_checked_product_and_a_rerun_skips(env, tmp_path):
    from srlib.ops.db import MetadataDB

    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    args = ["dr", "--date", "20200219", "--aoi", *AOI, "--catalog", env["url"],
            "--out", str(tmp_path), "--publish", "s3://products/sr", "--db", url]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (cog,) = tmp_path.glob("S2x10_T29RKH_20200219_*_v1.tif")  # the AOI's key in the name
    name = cog.stem
    derived = [f"sr/{name}_{d}.tif" for d in ("EVI", "NDVI", "NIR", "RGB")]
    quicklooks = [f"sr/{name}_quicklook_{k}.png" for k in ("ndvi", "rgb")]
    assert _keys(env["client"], "sr/") == sorted([*derived, *quicklooks, f"sr/{name}.qc.json",
                                                  f"sr/{name}.stac.json", f"sr/{name}.tif",
                                                  f"sr/{name}.manifest.json"])
    manifest = json.loads(env["client"].get_object(
        Bucket="products", Key=f"sr/{name}.manifest.json")["Body"].read())
    assert len(manifest["files"]) == 9 and manifest["qc"]["passed"] is True
    assert manifest["identity"]["aoi"] == name.split("_")[3]
    item = json.loads((tmp_path / f"{name}.stac.json").read_text())
    assert item["assets"]["data"]["href"] == f"s3://products/sr/{name}.tif"
    assert item["assets"]["ndvi"]["href"] == f"s3://products/sr/{name}_NDVI.tif"
    assert item["properties"]["srlib:source_items"] == ["S2A_29RKH_20200219_0_L2A"]
    assert item["properties"]["datetime"].startswith("2020-02-19T11:34:25")
    with rasterio.open(tmp_path / f"{name}_RGB.tif") as rgb:
        assert rgb.count == 3 and rgb.dtypes[0] == "uint8" and rgb.nodata == 0
    with rasterio.open(tmp_path / f"{name}_NDVI.tif") as ndvi, \
            rasterio.open(tmp_path / f"{name}.tif") as product:
        red, nir = product.read(1).astype(float), product.read(4).astype(float)
        expect = np.rint((nir - red) / (nir + red) * 10000)
        np.testing.assert_allclose(ndvi.read(1), expect, atol=1)  # float32 maths
        assert ndvi.transform == product.transform
    db = MetadataDB(url)
    run = db.run(1)
    assert run["status"] == "done" and run["qc_passed"] is True
    assert f"s3://products/sr/{name}.tif" in run["outputs"] and '"srlib"' in run["versions"]
    # staging left by a publish that was ended after its manifest went up (the watchdog's
    # exit): the rerun finds the product whole, skips it, and removes that staging
    stale = [f"sr/.incoming/{name}.dead/{name}.tif", f"sr/.incoming/{name}.dead/x.json"]
    for key in stale:
        env["client"].put_object(Bucket="products", Key=key, Body=b"left")
    env["client"].put_object(Bucket="products", Key="sr/.incoming/other.dead/x", Body=b"x")
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and again.stdout.startswith("skipped")
    assert db.run(2)["status"] == "skipped"
    assert [k for k in _keys(env["client"], "sr/.incoming/")] == ["sr/.incoming/other.dead/x"]
    # remade for an existing product, the Item points where the job published it
    remade = json.loads(CliRunner().invoke(main, ["stac", str(cog), "--json"]).output)
    assert remade["assets"]["data"]["href"] == f"s3://products/sr/{name}.tif"
    assert remade["properties"]["srlib:source_items"] == ["S2A_29RKH_20200219_0_L2A"]


def test_dr_all_nodata_scene_fails_qc_notifies_and_publishes_nothing(env, tmp_path):
    from srlib.ops.db import MetadataDB

    env["received"].clear()
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    args = ["dr", "--date", "20200320", "--aoi", *AOI, "--catalog", env["url"],
            "--out", str(tmp_path), "--publish", "s3://products/empty", "--db", url]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "quality checks failed: values" in result.output
    assert _keys(env["client"], "empty/") == []
    assert not list(tmp_path.glob("S2x10_T29RKH_20200320_*.tif"))
    assert len(env["received"]) == 1
    text = env["received"][0]["text"]
    assert "step 'qc' failed" in text and "QC FAILED" in text and "values" in text
    run = MetadataDB(url).run(1)
    assert run["status"] == "failed" and run["qc_passed"] is False
    assert "QCFailed" in run["error"]
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in text.replace("<AWS_SECRET", "")
    assert "/hook/T000/secret" not in text
    assert not list(tmp_path.glob("*_NDVI.tif"))  # no derivatives of a failed product


def test_dr_bad_request_exits_non_zero_with_a_clear_message(env, tmp_path):
    result = CliRunner().invoke(main, ["dr", "--date", "20200219", "--mgrs", "99ZZZ",
                                       "--catalog", env["url"], "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "not an MGRS tile id" in result.output


def test_pdr_processes_requests_marks_failures_and_goes_on(env, tmp_path):
    from srlib.ops.db import MetadataDB

    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    db = MetadataDB(url)
    bad = db.add_request("20200320", [float(v) for v in AOI])  # an all-nodata scene
    good = db.add_request("20200219", [float(v) for v in AOI])
    result = CliRunner().invoke(main, ["pdr", "--db", url, "--once", "--server", "w1",
                                       "--catalog", env["url"], "--out", str(tmp_path / "o"),
                                       "--publish", "s3://products/pdr"])
    assert result.exit_code == 1, result.output  # one request failed
    assert "done: 1" in result.output and "failed: 1" in result.output
    assert db.request(bad)["status"] == "failed"
    assert "QCFailed" in db.request(bad)["error"]
    assert db.request(good)["status"] == "done"
    run = db.run(db.request(good)["run_id"])
    assert run["status"] == "done" and "s3://products/pdr/" in run["outputs"]
    assert db.run(db.request(bad)["run_id"])["qc_passed"] is False
    stem = Path(json.loads(db.request(good)["outputs"])[0]).stem
    assert f"pdr/{stem}.tif" in _keys(env["client"], "pdr/")
    assert f"pdr/{stem}_NDVI.tif" in _keys(env["client"], "pdr/")
    assert f"pdr/{stem}.manifest.json" in _keys(env["client"], "pdr/")


def test_dr_on_two_device_workers_gives_the_bytes_of_one_process(env, tmp_path):
    """``srlib dr --devices cpu,cpu``: the tile runs on a local cluster of two workers."""
    args = ["dr", "--date", "20200219", "--aoi", *AOI, "--catalog", env["url"]]
    one = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "one")])
    two = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "two"), "--devices",
                                    "cpu,cpu"])
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    assert "local cluster of 2 workers" in two.output
    (a,), (b,) = (tmp_path / "one").glob("*_v1.tif"), (tmp_path / "two").glob("*_v1.tif")
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        np.testing.assert_array_equal(ra.read(), rb.read())
    bad = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x"), "--gpus", "2"])
    assert bad.exit_code == 1 and "--gpus 2 but this node has 0" in bad.output


def test_dr_dry_run_prints_the_plan_and_writes_nothing_then_json_reports(env, tmp_path):
    out = tmp_path / "out"
    args = ["dr", "--date", "20200219", "--aoi", *AOI, "--catalog", env["url"], "--out",
            str(out)]
    from .conftest import raise_if_dask_computes

    with raise_if_dask_computes():  # the scene is searched and opened, never read
        text = CliRunner().invoke(main, [*args, "--dry-run"])
    assert text.exit_code == 0, text.output
    assert "scene:    S2A_29RKH_20200219_0_L2A" in text.output
    assert "DOES NOT FIT" not in text.output and "fits" in text.output
    assert not out.exists()  # nothing computed, nothing written
    plan = json.loads(CliRunner().invoke(main, [*args, "--dry-run", "--json"]).output)
    assert plan["output"]["resolution_m"] == plan["scene"]["resolution_m"] / 10
    assert plan["output"]["px"] == [10 * n for n in plan["scene"]["input_px"]]
    assert plan["existing"].startswith("no manifest") and not out.exists()
    done = CliRunner().invoke(main, [*args, "--json", "-q"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert result["status"] == "done" and result["qc_passed"] is True
    assert sorted(Path(f).name for f in result["files"]) == sorted(
        Path(f).name for f in plan["outputs"] if not f.endswith(".manifest.json"))
    again = json.loads(CliRunner().invoke(main, [*args, "--dry-run", "--json"]).output)
    assert again["existing"].startswith("complete: the job would skip it")


def test_srlib_cog_takes_creation_options_and_overview_resampling(tmp_path):
    import srlib

    ds = srlib.sample_scene().isel(x=slice(0, 120), y=slice(0, 120))
    store = srlib.to_zarr(srlib.super_resolve(ds), tmp_path / "p.zarr")
    result = CliRunner().invoke(main, ["cog", str(store), str(tmp_path / "p.tif"), "--co",
                                       "LEVEL=9", "--overview-resampling", "nearest",
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["cog"].endswith("p.tif")
    with rasterio.open(tmp_path / "p.tif") as src:
        assert src.tags(1)["OVERVIEW_RESAMPLING"] == "NEAREST" and src.overviews(1)
        quality = src.read(5, out_shape=(1, *(s // 2 for s in src.shape)))
        assert set(np.unique(quality)) <= {-32768, 1, 2, 3, 4, 5}  # codes stay codes
    bad = CliRunner().invoke(main, ["cog", str(store), str(tmp_path / "q.tif"), "--co",
                                    "LEVEL"])
    assert bad.exit_code == 2 and "NAME=VALUE" in bad.output
