"""Products open right in the tools users have: GDAL (no side-car), rio-tiler, titiler."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

import srlib
from srlib.bands import Quality

pytest.importorskip("rio_tiler")


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewers")
    ds = srlib.sample_scene().isel(x=slice(0, 160), y=slice(0, 160))
    store = srlib.to_zarr(srlib.super_resolve(ds), root / "p.zarr")
    return srlib.to_cog(store, root / "p.tif")


@pytest.fixture(autouse=True)
def no_pam(monkeypatch):
    """Everything below must come from the file itself, not from a .aux.xml beside it."""
    monkeypatch.setenv("GDAL_PAM_ENABLED", "NO")


def test_the_cog_declares_reflectance_colours_statistics_and_quality_codes(product):
    assert not list(product.parent.glob("*.aux.xml"))
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(product) as src:
        assert [c.name for c in src.colorinterp] == ["red", "green", "blue", "undefined",
                                                     "undefined"]
        assert src.scales == (1e-4,) * 4 + (1.0,) and src.offsets == (0.0,) * 5
        assert src.units[:4] == ("1",) * 4
        red = src.read(1, masked=True)
        tags = src.tags(1)
        # approximate (an overview level), close to the exact figures of the pixels
        assert abs(float(tags["STATISTICS_MEAN"]) - red.mean()) < 0.01 * red.mean()
        assert float(tags["STATISTICS_MINIMUM"]) >= red.min()
        assert float(tags["STATISTICS_MAXIMUM"]) <= red.max()
        assert tags["OVERVIEW_RESAMPLING"] == "AVERAGE"
        quality = src.tags(5)
        assert quality["OVERVIEW_RESAMPLING"] == "MODE"
        assert quality["flag_meanings"].split() == [q.name.lower() for q in Quality][1:]
        assert quality["CLASS_2"] == "cloud"
        assert "MODE" in src.tags()["OVERVIEW_RESAMPLING"]
    from rio_cogeo.cogeo import cog_validate

    assert cog_validate(str(product))[0]


def _png(data: bytes) -> np.ndarray:
    from rasterio.io import MemoryFile

    with MemoryFile(data) as mem, mem.open() as png:
        return png.read()


def _a_tile(cog) -> tuple[int, int, int]:
    """A tile at the file's native zoom inside its bounds."""
    west, south, east, north = cog.get_geographic_bounds(cog.tms.rasterio_geographic_crs)
    mid = cog.tms.tile((west + east) / 2, (south + north) / 2, cog.maxzoom)
    return mid.x, mid.y, mid.z


def _stretched(rgb: np.ndarray) -> bool:
    """Drawn across the 8-bit range, not as raw counts clipped to 255 (all white)."""
    return bool(rgb.max() > 128 and rgb.min() < 128 and len(np.unique(rgb)) > 50)


def test_rio_tiler_draws_a_tile_stretched_from_the_stored_statistics(product):
    from rio_tiler.io import Reader

    with Reader(str(product)) as cog:
        x, y, z = _a_tile(cog)
        tile = cog.tile(x, y, z, indexes=(1, 2, 3))
        with rasterio.open(product) as src:
            stored = [(float(src.tags(b)["STATISTICS_MINIMUM"]),
                       float(src.tags(b)["STATISTICS_MAXIMUM"])) for b in (1, 2, 3)]
        assert [tuple(s) for s in tile.dataset_statistics] == stored
        assert _stretched(_png(tile.render(img_format="PNG"))[:3])
        preview = cog.preview(indexes=(1, 2, 3))
        assert _stretched(_png(preview.render(img_format="PNG"))[:3])


def test_titiler_renders_an_rgb_tile_without_rescale(product):
    pytest.importorskip("titiler.core")
    from fastapi import FastAPI
    from starlette.testclient import TestClient
    from titiler.core.factory import TilerFactory

    app = FastAPI()
    app.include_router(TilerFactory().router)
    client = TestClient(app)
    from rio_tiler.io import Reader

    with Reader(str(product)) as cog:
        x, y, z = _a_tile(cog)
    url = f"/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
    response = client.get(url, params={"url": str(product), "bidx": [1, 2, 3]})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = _png(response.content)
    assert image.shape[0] == 4 and _stretched(image[:3])  # RGB + alpha (nodata)
    info = client.get("/info", params={"url": str(product)}).json()
    assert info["colorinterp"][:3] == ["red", "green", "blue"]
    assert info["band_descriptions"][0][1] == "red"
