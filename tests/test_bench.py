"""srlib bench: figures whose sense is checked against known properties, not numbers."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import pytest
from click.testing import CliRunner

from srlib.cli import main


@pytest.fixture(scope="module")
def figures():
    """Bicubic (srlib's model) against GDAL's nearest and lanczos on the bundled sample."""
    from srlib.bench import bench

    results = bench("bicubic", scenes=("29RKH",), baselines=("nearest", "lanczos"), crop=128)
    return {r.method: r for r in results}


def test_bicubic_beats_nearest_on_every_band_and_lanczos_is_close(figures):
    bicubic, nearest, lanczos = figures["bicubic"], figures["nearest"], figures["lanczos"]
    bands = ("red", "green", "blue", "nir")
    assert set(bicubic.wald["bands"]) == set(bands)
    for band in bands:
        b, n, la = (m.wald["bands"][band] for m in (bicubic, nearest, lanczos))
        assert b["psnr"] > n["psnr"] and la["psnr"] > n["psnr"], band
        assert b["ssim"] > n["ssim"] and b["rmse"] < n["rmse"], band
        assert abs(b["psnr"] - la["psnr"]) < 1.5, band  # two smooth kernels of one size
    assert bicubic.wald["ergas"] < nearest.wald["ergas"]
    assert bicubic.wald["pixels"] > 0.9 * 1090 * 1090  # the sample's valid pixels


def test_consistency_of_interpolators_with_their_input(figures):
    # nearest's pixels averaged back are its input exactly; bicubic's nearly so, unshifted
    nearest, bicubic = figures["nearest"].consistency, figures["bicubic"].consistency
    assert nearest["reflectance_mae"] < 0.5 and nearest["sam_deg"] < 0.01
    for band, v in bicubic["bands"].items():
        assert v["shift_px"] < 0.1, band
        assert 0 < v["reflectance_mae"] < 100, band  # within 1% reflectance


def test_speed_and_memory_are_measured(figures):
    for method, r in figures.items():
        assert r.speed["input_mpx_per_s"] > 0 and r.speed["peak_rss_mb"] > 100, method
        assert r.speed["input_px"] == [128, 128]


def test_a_model_with_swapped_output_bands_scores_far_worse_on_sam():
    from srlib.bench import bench
    from srlib.models import load_model
    from srlib.models.bicubic import Bicubic

    spec = load_model("bicubic")
    index = {b: spec.bands_in.index(b) for b in spec.bands_out}  # red green blue nir
    swapped = [index["green"], index["red"], index["blue"], index["nir"]]
    bad = dataclasses.replace(spec, name="swapped", token="swapped-red-green",
                              build=lambda: Bicubic(spec.scale, swapped))
    good, worse = (bench(m, baselines=(), crop=64)[0] for m in (spec, bad))
    assert worse.wald["sam_deg"] > 3 * good.wald["sam_deg"], (good.wald, worse.wald)
    assert worse.wald["bands"]["red"]["psnr"] < good.wald["bands"]["red"]["psnr"] - 3
    assert worse.wald["bands"]["blue"]["psnr"] == good.wald["bands"]["blue"]["psnr"]
    assert worse.consistency["sam_deg"] > 3 * good.consistency["sam_deg"]


def test_the_command_prints_the_table_and_records_the_figures_in_the_card(tmp_path):
    from srlib.models import load_model
    from srlib.models.card import shipped_cards
    from srlib.models.spec import provenance

    card_dir = tmp_path / "card"
    shutil.copytree(shipped_cards()["s2-swin2sr-demo"].parent, card_dir)
    card = card_dir / "card.json"
    result = CliRunner().invoke(main, ["bench", str(card), "--baselines", "bicubic,nearest",
                                       "--crop", "48", "--write-card"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if " INFO " not in ln]
    head = next(i for i, ln in enumerate(lines) if ln.startswith("scene "))
    assert lines[head].split()[:3] == ["scene", "method", "PSNR"]
    rows = [ln.split()[1] for ln in lines[head + 2:] if ln.strip()]
    assert rows == ["s2-swin2sr-demo", "bicubic", "nearest"]
    recorded = json.loads(card.read_text())["metrics"]
    assert recorded["scenes"] == ["29RKH"] and set(recorded["model"]) == {"29RKH"}
    assert set(recorded["baselines"]) == {"29RKH/bicubic", "29RKH/nearest"}
    # the card still loads, and products made with it name the figures
    named = provenance(load_model(str(card)))["metrics"]
    assert named["wald"]["29RKH"]["psnr"] == recorded["model"]["29RKH"]["wald"]["psnr"]
    as_json = CliRunner().invoke(main, ["bench", "bicubic", "--baselines", "nearest",
                                        "--crop", "48", "--json"])
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.output)
    assert [r["method"] for r in body["results"]] == ["bicubic", "nearest"]


@pytest.mark.parametrize(("args", "fix"), [
    (["--baselines", "cubic"], "unknown baselines ['cubic']"),
    (["--scene", "nowhere"], "neither a bundled sample"),
    (["--write-card"], "--write-card needs a model card"),
])
def test_bad_bench_options_are_refused_in_one_line(args, fix):
    result = CliRunner().invoke(main, ["bench", "bicubic", *args])
    assert result.exit_code != 0
    assert fix in result.output and "Traceback" not in result.output


def test_a_scene_folder_and_a_zarr_store_score_as_the_sample_they_hold(tmp_path):
    from srlib.bench import bench
    from srlib.scene.sample import SAMPLES, _data_dir, sample_scene

    folder = tmp_path / "my-scene"
    shutil.copytree(_data_dir(SAMPLES["29RKH"][0]), folder)
    store = tmp_path / "my-scene.zarr"
    sample_scene().to_zarr(store, zarr_format=2)
    # a GeoTIFF of named bands, the sample's DN with their scale and nodata
    scene = sample_scene().drop_vars("scl")
    bands = list(scene.data_vars)
    tif = tmp_path / "my-scene.tif"
    stack = scene.to_array("band").rio.write_nodata(0)
    stack.attrs.update(scale_factor=1e-4, add_offset=0.0, long_name=tuple(bands))
    stack.rio.to_raster(tif)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # opened without a deprecated form
        figures = [bench("bicubic", scenes=(s,), baselines=(), crop=64)[0]
                   for s in ("29RKH", str(folder), str(store), str(tif))]
    assert [f.scene for f in figures] == ["29RKH", "my-scene", "my-scene", "my-scene"]
    assert figures[1].wald == figures[0].wald and figures[2].wald == figures[0].wald
