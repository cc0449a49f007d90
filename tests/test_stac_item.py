"""Product STAC Items: complete, checksummed, drawable by default, and they load back."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import odc.stac
import pystac
import rasterio
from click.testing import CliRunner

import srlib
from srlib.cli import main

from .conftest import synthetic_scene

SOURCE = "https://example.test/collections/sentinel-2-l2a/items/S2A_33UUP_20170613_0_L2A"


def test_every_product_gets_an_item_that_loads_back_through_odc_stac(tmp_path):
    ds = synthetic_scene((60, 60))
    ds.attrs.update(datetime="2017-06-13T10:10:31Z", items=["S2A_33UUP_20170613_0_L2A"],
                    item_hrefs=[SOURCE])
    cog = tmp_path / "S2x10_T33UUP_20170613_v1.tif"
    report = srlib.super_resolve_to_cog(ds, cog, stac=True)
    names = sorted(p.name for p in report.files)
    assert names == sorted([cog.name, f"{cog.stem}.qc.json", f"{cog.stem}.stac.json",
                            f"{cog.stem}_quicklook_ndvi.png", f"{cog.stem}_quicklook_rgb.png"])
    path = cog.with_name(f"{cog.stem}.stac.json")
    item = pystac.Item.from_dict(json.loads(path.read_text()))
    from pystac.extensions.projection import ProjectionExtension

    assert ProjectionExtension.ext(item).epsg == 32633 and item.properties["gsd"] == 1.0
    assert item.datetime.isoformat().startswith("2017-06-13T10:10:31")
    assert item.properties["srlib:source_items"] == ["S2A_33UUP_20170613_0_L2A"]
    assert item.properties["srlib:model"]["name"] == "bicubic"
    assert [link.href for link in item.links if link.rel == "derived_from"] == [SOURCE]
    data = item.assets["data"]
    assert [b["name"] for b in data.extra_fields["eo:bands"]] == ["red", "green", "blue", "nir",
                                                                  "quality"]
    classes = data.extra_fields["raster:bands"][4]["classification:classes"]
    assert [c["name"] for c in classes] == ["nodata", "clear", "cloud", "cloud_shadow", "snow",
                                            "water"]
    assert item.assets["thumbnail"].roles == ["thumbnail"]
    for key, asset in item.assets.items():  # every file with its size and checksum
        local = tmp_path / asset.href.rsplit("/", 1)[-1]
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        assert asset.extra_fields["file:checksum"] == "1220" + digest, key
        assert asset.extra_fields["file:size"] == local.stat().st_size, key
    loaded = odc.stac.load([item], bands=["data.1", "data.5"], chunks={})
    with rasterio.open(cog) as src:
        np.testing.assert_array_equal(loaded["data.1"].isel(time=0).values, src.read(1))
        np.testing.assert_array_equal(loaded["data.5"].isel(time=0).values, src.read(5))
        assert loaded.odc.geobox.affine == src.transform


def test_the_items_render_entry_draws_the_rgb_bands_stretched(tmp_path):
    """What a STAC-aware tiler does by default with the Item (rio-tiler's STAC reader)."""
    from rio_tiler.io import STACReader

    ds = srlib.sample_scene().isel(y=slice(0, 120), x=slice(0, 120))
    cog = tmp_path / "p.tif"
    srlib.super_resolve_to_cog(ds, cog, stac=True)
    item_path = tmp_path / "p.stac.json"
    render = json.loads(item_path.read_text())["properties"]["renders"]["rgb"]
    with STACReader(str(item_path)) as stac:
        image = stac.preview(expression=render["expression"], max_size=256)
    drawn = image.post_process(in_range=render["rescale"]).render(img_format="PNG")
    from rasterio.io import MemoryFile

    with MemoryFile(drawn) as mem, mem.open() as png:
        rgb = png.read()[:3]
    assert rgb.min() < 60 and rgb.max() > 200 and len(np.unique(rgb)) > 50


def test_srlib_stac_describes_an_existing_product_and_keeps_it_complete(tmp_path):
    runner = CliRunner()
    made = runner.invoke(main, ["demo", "--sample", "bigearthnet", "--out", str(tmp_path),
                                "--json", "-q"])
    assert made.exit_code == 0, made.output
    cog = tmp_path / "S2x10_bigearthnet.tif"
    assert sorted(json.loads(made.output)["files"]) == sorted(
        str(cog.with_name(n)) for n in (cog.name, f"{cog.stem}.qc.json",
                                        f"{cog.stem}_quicklook_rgb.png",
                                        f"{cog.stem}_quicklook_ndvi.png",
                                        f"{cog.stem}.stac.json"))
    before = json.loads(cog.with_name(f"{cog.stem}.stac.json").read_text())
    result = runner.invoke(main, ["stac", str(cog), "--href-base", "s3://products/demo",
                                  "--source", SOURCE, "--json"])
    assert result.exit_code == 0, result.output
    item = json.loads(result.output)
    assert item["assets"]["data"]["href"] == "s3://products/demo/S2x10_bigearthnet.tif"
    assert item["properties"]["datetime"] == before["properties"]["datetime"]
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == [SOURCE]
    again = runner.invoke(main, ["demo", "--sample", "bigearthnet", "--out", str(tmp_path)])
    assert "nothing to do" in again.output  # the manifest records the new Item
    bad = tmp_path / "bad.tif"
    bad.write_text("not a tiff")
    failed = runner.invoke(main, ["stac", str(bad)])
    assert failed.exit_code == 1 and "not a readable GeoTIFF" in failed.output
