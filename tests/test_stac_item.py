"""Product STAC Items load back with odc-stac."""

from __future__ import annotations

import json

import numpy as np
import odc.stac
import pystac
import rasterio

import srlib
from srlib.product.stac_item import write_product_item

from .conftest import synthetic_scene


def test_product_item_round_trips_through_odc_stac(tmp_path):
    cog = tmp_path / "S2x10_T33UUP_20170613_v1.tif"
    srlib.super_resolve_to_cog(synthetic_scene((40, 40)), cog)
    path = write_product_item(cog, datetime="2017-06-13T10:10:31Z",
                              properties={"srlib:model": "bicubic"},
                              extra_assets={"qc": str(cog.with_suffix(".qc.json"))})
    item = pystac.Item.from_dict(json.loads(path.read_text()))
    from pystac.extensions.projection import ProjectionExtension

    assert ProjectionExtension.ext(item).epsg == 32633 and item.properties["gsd"] == 1.0
    assert item.bbox[0] < item.bbox[2] and -90 < item.bbox[1] < 90
    names = [b["name"] for b in item.assets["data"].extra_fields["eo:bands"]]
    assert names == ["red", "green", "blue", "nir", "quality"]
    loaded = odc.stac.load([item], bands=["data.1", "data.5"], chunks={})
    with rasterio.open(cog) as src:
        np.testing.assert_array_equal(loaded["data.1"].isel(time=0).values, src.read(1))
        np.testing.assert_array_equal(loaded["data.5"].isel(time=0).values, src.read(5))
        assert loaded.odc.geobox.affine == src.transform
