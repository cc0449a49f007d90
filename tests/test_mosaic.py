"""An AOI is covered by all the data there is, and says how much; the grid follows the
finest band. Real files on moto S3, served by a loopback STAC API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

import srlib
from srlib.ops.db import MetadataDB
from srlib.ops.jobs import run_dr, run_pdr
from srlib.product.qc import check_quality

from .servers import CREDENTIALS, coarse_red_item, loopback_sources, split_items

pytestmark = pytest.mark.integration

#: Straddles the cut between the two halves (x = 254880 m, about -11.43 E)
SEAM_AOI = [-11.46, 24.78, -11.40, 24.82]
BOTH, WEST, COARSE, FULL = "20200301", "20200302", "20200303", "20200219"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    work = tmp_path_factory.mktemp("mosaic")
    mp = pytest.MonkeyPatch()
    for key, value in CREDENTIALS.items():
        mp.setenv(key, value)
    mp.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
    mp.delenv("SRLIB_WEBHOOK_URL", raising=False)

    def extra(endpoint, item):
        mp.setenv("AWS_ENDPOINT_URL_S3", f"http://{endpoint}")
        return [*split_items(endpoint, item, day=BOTH, workdir=work),
                *split_items(endpoint, item, day=WEST, workdir=work, keep=("west",)),
                coarse_red_item(endpoint, item, day=COARSE, workdir=work)]

    with loopback_sources(work, extra) as (url, _endpoint, _item):
        yield url
    mp.undo()


def _pixels(cog):
    with rasterio.open(cog) as src:
        return src.read(), src.bounds, src.res


def test_an_aoi_across_two_tiles_is_mosaicked_whole(sources, tmp_path):
    ds = srlib.load_s2(date=BOTH, aoi=SEAM_AOI, catalog=sources)
    assert len(ds.attrs["items"]) == 2  # both tiles of the acquisition
    assert ds.attrs["aoi_coverage"] > 0.99 and ds.attrs["data_coverage"] > 0.99
    two = run_dr(date=BOTH, aoi=SEAM_AOI, catalog=sources, out=tmp_path / "two")
    one = run_dr(date=FULL, aoi=SEAM_AOI, catalog=sources, out=tmp_path / "one")
    assert two.delivered == "done" and two.coverage > 0.99 and two.reason is None
    mosaic, whole = _pixels(two.cog), _pixels(one.cog)
    assert mosaic[1:] == whole[1:]  # the same grid
    # every reflectance band equal to the product of the uncut scene
    for band in range(4):
        np.testing.assert_array_equal(mosaic[0][band], whole[0][band])
    item = json.loads(two.cog.with_name(two.cog.stem + ".stac.json").read_text())
    assert item["properties"]["srlib:aoi_coverage"] > 0.99


def test_an_aoi_past_the_data_is_delivered_partial_and_says_how_much(sources, tmp_path):
    result = run_dr(date=WEST, aoi=SEAM_AOI, catalog=sources, out=tmp_path)
    assert result.delivered == "partial" and 0.3 < result.coverage < 0.7
    assert "of the AOI" in result.reason and "minimum 95%" in result.reason
    qc = json.loads(result.cog.with_suffix(".qc.json").read_text())
    coverage = next(c for c in qc["checks"] if c["name"] == "coverage")
    assert coverage["status"] == "pass"  # it covers all the data there is
    assert abs(coverage["value"]["valid"] - coverage["value"]["expected"]) < 0.03
    item = json.loads(result.cog.with_name(result.cog.stem + ".stac.json").read_text())
    assert item["properties"]["srlib:aoi_coverage"] == pytest.approx(result.coverage)
    # a product that covers less than its data fails QC (a tile lost from the mosaic)
    assert "coverage" in check_quality(result.cog, coverage=1.0).failed
    # the request row says it too; a rerun finds it complete and still partial
    db = MetadataDB(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    rid = db.add_request(WEST, SEAM_AOI)
    counts = run_pdr(db, worker="w", catalog=sources, out=tmp_path)
    row = db.request(rid)
    assert counts["skipped"] == 1 and row["status"] == "partial"  # found complete
    assert row["coverage"] == pytest.approx(result.coverage) and "of the AOI" in row["error"]


def test_the_grid_follows_the_finest_band_not_red(sources, tmp_path):
    ds = srlib.load_s2(date=COARSE, aoi=SEAM_AOI, catalog=sources)
    assert abs(ds.rio.resolution()[0]) == 100.0  # blue's, not red's 200 m
    result = run_dr(date=COARSE, aoi=SEAM_AOI, catalog=sources, out=tmp_path)
    assert _pixels(result.cog)[2] == (10.0, 10.0)
    whole = srlib.load_s2(date=COARSE, mgrs="29RKH", catalog=sources)
    assert abs(whole.rio.resolution()[0]) == 100.0 and whole.sizes["x"] == 1098
