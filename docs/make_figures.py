"""Make the pictures in docs/ from the demo product (the README shows them).

    python docs/make_figures.py            # about a minute on 2 cores

- ``docs/quicklook_rgb.png``: the demo product's quicklook (the whole product, and a
  zoomed input | output crop), as ``srlib demo`` writes it beside the product;
- ``docs/titiler_tile.png``: a 256 px web-map tile of the demo product as titiler draws
  it with only ``bidx=1,2,3`` (no ``rescale``): stretched from the statistics stored in
  the COG.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import srlib
from srlib.product.quicklook import quicklook_figure, zoom_window

HERE = Path(__file__).resolve().parent


def main() -> None:
    import rasterio
    from fastapi import FastAPI
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from rio_tiler.io import Reader
    from starlette.testclient import TestClient
    from titiler.core.factory import TilerFactory

    tmp = Path(tempfile.mkdtemp(prefix="srlib-figures-"))
    ds = srlib.sample_scene()
    cog = tmp / "S2x10_29RKH.tif"
    srlib.super_resolve_to_cog(ds, cog)  # what `srlib demo` makes
    fig = quicklook_figure(ds, cog, kind="rgb", max_size=640)
    FigureCanvasAgg(fig)
    fig.savefig(HERE / "quicklook_rgb.png", dpi=80, bbox_inches="tight")

    app = FastAPI()
    app.include_router(TilerFactory().router)
    with rasterio.open(cog) as src:
        zoom = zoom_window(src, (ds.sizes["y"], ds.sizes["x"]))
        half = zoom.size // 2
        x, y = src.xy((zoom.row + half) * zoom.scale, (zoom.col + half) * zoom.scale)
    with Reader(str(cog)) as reader:
        lon, lat = rasterio.warp.transform(reader.crs, "EPSG:4326", [x], [y])
        tile = reader.tms.tile(lon[0], lat[0], reader.maxzoom - 1)
    response = TestClient(app).get(f"/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
                                   params={"url": str(cog), "bidx": [1, 2, 3]})
    response.raise_for_status()
    (HERE / "titiler_tile.png").write_bytes(response.content)
    print(f"wrote {HERE / 'quicklook_rgb.png'} and {HERE / 'titiler_tile.png'} "
          f"(tile {tile.z}/{tile.x}/{tile.y})")


if __name__ == "__main__":
    main()
