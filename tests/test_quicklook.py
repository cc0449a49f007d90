from __future__ import annotations

import numpy as np
import rasterio

import srlib
from srlib.product.quicklook import quicklook_figure, write_quicklooks, zoom_window


def test_quicklooks_show_the_whole_product_and_a_zoomed_input_beside_its_output(tmp_path):
    ds = srlib.sample_scene().isel(y=slice(400, 560), x=slice(400, 560))
    cog = tmp_path / "p.tif"
    srlib.super_resolve_to_cog(ds, cog)
    paths = write_quicklooks(ds, cog, max_size=256, crop=40)
    assert [p.name for p in paths] == ["p_quicklook_rgb.png", "p_quicklook_ndvi.png"]
    with rasterio.open(cog) as src:
        zoom = zoom_window(src, (160, 160), crop=40)
    assert zoom.size == 40 and zoom.scale == 10
    fig = quicklook_figure(ds, cog, kind="rgb", max_size=256, crop=40)
    whole, inp, out = (ax.get_images()[0].get_array() for ax in fig.axes[:3])
    assert inp.shape[:2] == (40, 40) and out.shape[:2] == (400, 400)  # the 10x crop
    assert max(whole.shape[:2]) == 256
    # bicubic output looks like its input: the crop's mean colour agrees, not its detail
    assert np.abs(inp.mean(axis=(0, 1)) - out.mean(axis=(0, 1))).max() < 0.02
    assert "input, 40 x 40 px (100 m)" in fig.axes[1].get_title()
    ndvi = quicklook_figure(ds, cog, kind="ndvi", max_size=256, crop=40)
    assert len(ndvi.axes) == 4 and ndvi.axes[3].get_ylabel() == "NDVI"  # the colour bar
    low, high = ndvi.axes[0].get_images()[0].get_clim()
    values = ndvi.axes[0].get_images()[0].get_array().compressed()
    assert low <= np.percentile(values, 5) and high >= np.percentile(values, 95)
    assert high - low < 0.5  # fitted to the data, not the whole [-1, 1]
    with rasterio.open(paths[0]) as png:
        assert png.count >= 3 and png.width > 1000
