from __future__ import annotations

import numpy as np
import rasterio

import srlib
from srlib.product.quicklook import write_quicklooks


def test_quicklooks_show_input_and_output_side_by_side(tmp_path):
    ds = srlib.sample_scene().isel(y=slice(400, 464), x=slice(400, 464))
    cog = tmp_path / "p.tif"
    srlib.super_resolve_to_cog(ds, cog)
    paths = write_quicklooks(ds, cog, max_size=128)
    assert [p.name for p in paths] == ["p_quicklook_rgb.png", "p_quicklook_ndvi.png"]
    with rasterio.open(paths[0]) as png:
        image = png.read()
    assert image.shape == (3, 128, 256)
    left, right = image[:, :, :128].astype(int), image[:, :, 128:].astype(int)
    # bicubic output looks like its input: the two panels agree closely
    assert np.abs(left - right).mean() < 8 and left.std() > 1
