"""A STAC Item for each product (pystac; projection, raster and eo extensions).

The Item points at the product COG (asset ``data``, with one ``eo:bands``/``raster:bands``
entry per band) and, when given, at its derivatives and QC report, so products can be
searched in a STAC catalogue and loaded back with odc-stac.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pystac
import rasterio
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.warp import transform_bounds, transform_geom

__all__ = ["product_item", "write_product_item"]

_COMMON = {"red": "red", "green": "green", "blue": "blue", "nir": "nir"}


def product_item(
    cog_path: str | os.PathLike,
    *,
    datetime: dt.datetime | str | None = None,
    href: str | None = None,
    properties: dict | None = None,
    extra_assets: dict[str, str] | None = None,
) -> pystac.Item:
    """Describe a product COG as a STAC Item.

    Parameters
    ----------
    cog_path : path
        The product (5 bands: red, green, blue, nir, quality).
    datetime : datetime or str, optional
        Acquisition time of the source scene (default: now, UTC).
    href : str, optional
        Where the COG will be read from (default: the local path).
    properties : dict, optional
        Extra properties (source item id, model, ...).
    extra_assets : dict, optional
        ``{key: href}`` of derivatives and the QC JSON.
    """
    path = Path(cog_path)
    with rasterio.open(path) as src:
        bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
        footprint = transform_geom(src.crs, "EPSG:4326", {
            "type": "Polygon", "coordinates": [[
                (src.bounds.left, src.bounds.bottom), (src.bounds.right, src.bounds.bottom),
                (src.bounds.right, src.bounds.top), (src.bounds.left, src.bounds.top),
                (src.bounds.left, src.bounds.bottom)]]})
        names = list(src.descriptions)
        dtypes, nodata, res = src.dtypes, src.nodata, abs(src.res[0])
        epsg, shape, transform = src.crs.to_epsg(), list(src.shape), list(src.transform)[:6]
    when = datetime or dt.datetime.now(dt.UTC)
    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    item = pystac.Item(id=path.stem, geometry=footprint, bbox=list(bounds), datetime=when,
                       properties={"gsd": res, **(properties or {})})
    asset = pystac.Asset(href=href or str(path.resolve()),
                         media_type=pystac.MediaType.COG, roles=["data"],
                         title="super-resolved reflectance (x 10000) and quality")
    item.add_asset("data", asset)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.epsg, proj.shape, proj.transform = epsg, shape, transform
    eo = EOExtension.ext(asset, add_if_missing=True)
    eo.bands = [Band.create(name=n, common_name=_COMMON.get(n), description=n) for n in names]
    raster = RasterExtension.ext(asset, add_if_missing=True)
    raster.bands = [
        RasterBand.create(nodata=nodata, data_type=DataType(dtypes[i]), spatial_resolution=res,
                          scale=1e-4 if n in _COMMON else None,
                          offset=0.0 if n in _COMMON else None)
        for i, n in enumerate(names)
    ]
    for key, extra in (extra_assets or {}).items():
        media = pystac.MediaType.JSON if extra.endswith(".json") else pystac.MediaType.COG
        item.add_asset(key, pystac.Asset(href=extra, media_type=media,
                                         roles=["metadata"] if media == pystac.MediaType.JSON
                                         else ["data"]))
    return item


def write_product_item(cog_path: str | os.PathLike, **kwargs: object) -> Path:
    """Write :func:`product_item` as ``<stem>.stac.json`` beside the COG; return its path."""
    path = Path(cog_path)
    target = path.with_name(f"{path.stem}.stac.json")
    item = product_item(path, **kwargs)  # type: ignore[arg-type]
    item.set_self_href(str(target.resolve()))
    item.save_object(include_self_link=False, dest_href=str(target))
    return target
