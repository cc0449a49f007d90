"""QC checks every band: values, nodata, entropy and consistency per band, the quality
band included; a defect in one band (or only at full resolution) fails the product."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

import srlib
from srlib.cli import main
from srlib.product.qc import check_quality, consistency


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    """A real bicubic product of a 600 px crop of the sample (with overviews) and its input."""
    tmp = tmp_path_factory.mktemp("qcb")
    scene = srlib.sample_scene().isel(y=slice(0, 300), x=slice(0, 300))
    cog = tmp / "good.tif"
    srlib.super_resolve_to_cog(scene, cog, model="bicubic")
    return cog, scene


def _rewrite(src_cog, out, change):
    """Write a COG with the product's profile and metadata whose bands ``change`` altered
    (overviews rebuilt from them)."""
    with rasterio.open(src_cog) as src:
        data, profile = src.read(), src.profile
        descriptions, tags = src.descriptions, [src.tags(i + 1) for i in range(src.count)]
        scales, offsets = src.scales, src.offsets
    change(data)
    plain = out.with_suffix(".plain.tif")
    profile.update(driver="GTiff")
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(data)
        dst.scales, dst.offsets = scales, offsets
        for i, (d, t) in enumerate(zip(descriptions, tags, strict=True)):
            dst.set_band_description(i + 1, d)
            dst.update_tags(i + 1, **t)
    rasterio.shutil.copy(plain, out, driver="COG", COMPRESS="LZW", PREDICTOR="YES",
                         BLOCKSIZE=512, OVERVIEWS="AUTO")
    plain.unlink()
    return out


def _zero(band):
    def change(data):
        data[band] = 0
    return change


def _swap(data):
    data[[0, 2]] = data[[2, 0]]


def _quality_nodata(data):
    data[4] = 0


def _dead_nir(data):
    data[3] = 1234


def _moved(band, px):
    def change(data):  # the band's content moved east (its georeferencing unchanged)
        data[band] = np.roll(data[band], px, axis=1)
    return change


def _noisy(band, sigma):
    def change(data):  # zero-mean noise: the band's mean and level stay right
        noise = np.random.default_rng(3).normal(0, sigma, data[band].shape)
        data[band] = np.clip(data[band] + noise, 1, 10000).astype(np.int16)
    return change


CASES = {
    "red all zero": (_zero(0), "values", "red"),
    "green all zero": (_zero(1), "values", "green"),
    "quality all nodata": (_quality_nodata, "values", "quality"),
    "nir constant": (_dead_nir, "visual", "nir"),
    "red and blue swapped": (_swap, "consistency", "red"),
    "red moved one input pixel": (_moved(0, 10), "consistency", "red"),
    "nir moved three input pixels": (_moved(3, 30), "consistency", "nir"),
    "green with noise of the scene's contrast": (_noisy(1, 1500), "consistency", "green"),
}


def test_the_good_product_passes_every_band_with_its_source(product):
    cog, scene = product
    report = check_quality(cog, source=scene)
    assert report.passed, report.to_table()
    values = report["values"].value
    assert {"red", "green", "blue", "nir", "quality"} <= set(values)
    assert set(report["visual"].value) == {"red", "green", "blue", "nir"}
    assert set(report["consistency"].value) == {"red", "green", "blue", "nir"}
    assert all(v["mad_ratio"] < 0.1 for v in report["consistency"].value.values())
    assert all(v["shift_ratio"] < 0.3 for v in report["consistency"].value.values())
    assert all(v["local_error"] < 0.05 for v in report["consistency"].value.values())
    # the table a terminal shows: every band's figures on a line of their own, no line
    # running to hundreds of characters (each row used to hold all four bands)
    lines = report.to_table().splitlines()
    assert max(map(len, lines)) < 200, max(lines, key=len)
    for band in ("red", "green", "blue", "nir"):
        rows = [line for line in lines if f"{band}(bias=" in line]
        assert len(rows) == 1 and sum("(bias=" in part for part in rows[0].split()) == 1
    assert lines[-1] == f"QC PASSED ({cog})"


@pytest.mark.parametrize("case", list(CASES))
def test_a_defect_in_one_band_fails_and_names_the_band(product, tmp_path, case):
    cog, scene = product
    change, check, band = CASES[case]
    bad = _rewrite(cog, tmp_path / "bad.tif", change)
    report = check_quality(bad, source=scene)
    assert check in report.failed, report.to_table()
    assert band in report[check].message, report[check]


def test_the_rewrite_alone_passes(product, tmp_path):
    """The defects, not the rewriting that carries them, fail the cases above."""
    cog, scene = product
    assert check_quality(_rewrite(cog, tmp_path / "fine.tif", lambda data: None),
                         source=scene).passed


@pytest.mark.parametrize("grid", [None, 64 * 64], ids=["input grid", "coarsened grid"])
def test_a_zeroed_tile_in_any_band_fails_and_is_located(zeroed_tiles, grid):
    """A defect in one place is not averaged away: one tile of each band zeroed at a
    random place (3% of the band), found and located on the input grid and on the
    coarse grid that large scenes are compared on (read from the overviews)."""
    cog, scene, places = zeroed_tiles
    thresholds = {} if grid is None else {"consistency_pixels": grid}
    result = consistency(cog, scene, thresholds=thresholds)
    assert result.status == "fail", result
    for name, (y0, x0) in places.items():
        worst = result.value[name]
        assert f"{name} at rows {worst['local_rows'][0]}-" in result.message
        assert worst["local_error"] > 0.5
        # the worst window lies inside the zeroed tile
        assert y0 <= worst["local_rows"][0] and worst["local_rows"][1] <= y0 + 512, worst
        assert x0 <= worst["local_cols"][0] and worst["local_cols"][1] <= x0 + 512, worst


@pytest.fixture(scope="module")
def zeroed_tiles(product, tmp_path_factory):
    """The product with one 512 px tile of each band zeroed, each in its own quadrant at a
    random place."""
    cog, scene = product
    rng = np.random.default_rng(7)
    places = {name: (int(qy * 1500 + rng.integers(0, 1500 - 512)),
                     int(qx * 1500 + rng.integers(0, 1500 - 512)))
              for name, (qy, qx) in zip(("red", "green", "blue", "nir"),
                                        ((0, 0), (0, 1), (1, 0), (1, 1)), strict=True)}

    def change(data):
        for band, (y0, x0) in enumerate(places.values()):
            data[band, y0:y0 + 512, x0:x0 + 512] = 0

    bad = _rewrite(cog, tmp_path_factory.mktemp("zeroed") / "bad.tif", change)
    return bad, scene, places


@pytest.mark.parametrize(("shift", "message"), [
    ((30.0, 0.0), "30, 0 (x, y) from its input's origin"),  # 3 output px east
    ((0.0, -100.0), "0, -100 (x, y) from its input's origin"),  # one input px south
    (None, "not an integer fraction"),  # 10.5 m pixels under 100 m input
])
def test_a_product_off_its_input_s_grid_fails(product, tmp_path, shift, message):
    """The right values in the wrong place: georeferencing that departs from the input's."""
    cog, scene = product
    bad = tmp_path / "moved.tif"
    shutil.copy(cog, bad)
    with rasterio.open(bad, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        t = dst.transform
        dst.transform = (rasterio.Affine(t.a, t.b, t.c + shift[0], t.d, t.e, t.f + shift[1])
                         if shift else rasterio.Affine(10.5, t.b, t.c, t.d, -10.5, t.f))
    result = consistency(bad, scene)
    assert result.status == "fail" and message in result.message, result
    assert consistency(cog, scene).status == "pass"


def test_a_band_dead_only_at_full_resolution_fails(tmp_path):
    """Overviews intact, full resolution zero: found by the full-resolution windows."""
    scene = srlib.sample_scene().isel(y=slice(0, 500), x=slice(0, 500))
    cog = tmp_path / "big.tif"
    srlib.super_resolve_to_cog(scene, cog, model="bicubic",
                               thresholds={"sample_pixels": 512 * 512})
    bad = tmp_path / "fullres.tif"
    shutil.copy(cog, bad)
    with rasterio.open(bad, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        dst.write(np.zeros((dst.height, dst.width), np.int16), 1)
    with rasterio.open(bad, overview_level=2) as ovr:
        assert ovr.read(1).mean() > 1000  # the overviews still look right
    report = check_quality(bad, thresholds={"sample_pixels": 512 * 512})
    assert "values" in report.failed and "red@full" in report["values"].message
    assert check_quality(cog, thresholds={"sample_pixels": 512 * 512}).passed


def test_srlib_qc_checks_consistency_only_with_a_source_and_never_says_pass_without(
        product, tmp_path):
    cog, _scene = product
    swapped = _rewrite(cog, tmp_path / "swapped.tif", _swap)
    runner = CliRunner()
    alone = runner.invoke(main, ["qc", str(swapped), "--json"])
    assert alone.exit_code == 0, alone.output  # nothing to compare with: not checked
    assert '"not checked"' in alone.output and "srlib qc --source" in alone.output
    good = runner.invoke(main, ["qc", str(cog), "--source", "29RKH"])
    assert good.exit_code == 0, good.output
    checked = runner.invoke(main, ["qc", str(swapped), "--source", "29RKH"])
    assert checked.exit_code == 1 and "consistency" in checked.output
    wrong = runner.invoke(main, ["qc", str(cog), "--source", "bigearthnet"])
    assert wrong.exit_code == 1 and "give the scene the product was made from" in wrong.output
