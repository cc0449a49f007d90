"""A STAC Item for each product, made with rio-stac and completed with what srlib knows.

rio-stac reads the COG (geometry, bbox, projection, ``raster:bands`` with statistics and
histograms, ``eo:bands``); srlib adds the band names and common names, the quality band's
classes (classification extension), ``file:size``/``file:checksum`` of every asset, the
quicklooks (the RGB one as the thumbnail), ``derived_from`` links to the source items
and a render entry (render extension: the RGB bands stretched from the 2nd to the 98th
percentile) that STAC-aware tilers draw by default; titiler needs ``bidx`` for a file of
five bands, which this entry gives them as an expression. The Item loads back with
odc-stac to the same pixels.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pystac
import rasterio
import rio_stac

from ..bands import OUTPUT_BANDS, Quality
from ..files import write_atomic
from ..hashing import multihash

__all__ = ["describe_product", "product_item", "quality_classes", "write_product_item"]

_CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
_FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
_RENDER = "https://stac-extensions.github.io/render/v2.0.0/schema.json"

_DESCRIPTIONS = {
    Quality.CLEAR: "valid, no flag",
    Quality.CLOUD: "cloud (SCL 8, 9) or thin cirrus (SCL 10)",
    Quality.CLOUD_SHADOW: "cloud shadow (SCL 3)",
    Quality.SNOW: "snow or ice (SCL 11)",
    Quality.WATER: "water (SCL 6)",
}

#: Media types and roles of the files that go with a product, by suffix.
_KINDS = {".tif": (pystac.MediaType.COG, ["data"]), ".json": (pystac.MediaType.JSON,
                                                               ["metadata"]),
          ".png": (pystac.MediaType.PNG, ["overview"])}


def quality_classes() -> list[dict[str, Any]]:
    """Return the quality band's codes as classification-extension classes."""
    nodata = {"value": -32768, "name": "nodata", "description": "no valid input",
              "nodata": True}
    return [nodata, *({"value": int(q), "name": q.name.lower(),
                       "description": _DESCRIPTIONS[q]} for q in Quality
                      if q != Quality.NODATA)]


def _file_fields(path: Path) -> dict[str, Any]:
    return {"file:size": path.stat().st_size, "file:checksum": multihash(path)}


def product_item(
    cog_path: str | os.PathLike,
    *,
    datetime: dt.datetime | str | None = None,
    href: Callable[[Path], str] | None = None,
    properties: Mapping[str, Any] | None = None,
    files: Mapping[str, str | os.PathLike] | None = None,
    sources: Sequence[str] = (),
) -> pystac.Item:
    """Describe a product COG as a STAC Item.

    Parameters
    ----------
    cog_path : path
        The product (5 bands: red, green, blue, nir, quality).
    datetime : datetime or str, optional
        Acquisition time of the source scene (default: now, UTC).
    href : callable, optional
        Where each file will be read from (default: its local path): e.g. its URI once
        published.
    properties : mapping, optional
        Extra properties (source item ids, model provenance, ...).
    files : mapping, optional
        ``{asset key: local path}`` of the files that go with the product (QC JSON,
        derivatives, quicklooks; ``thumbnail`` for the RGB quicklook), each with its size
        and checksum.
    sources : sequence of str
        Hrefs of the source STAC Items (``derived_from`` links).
    """
    path = Path(cog_path)
    href = href or (lambda p: str(p.resolve()))
    when = datetime or dt.datetime.now(dt.UTC)
    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    with rasterio.open(path) as src:
        names, res = list(src.descriptions), abs(src.res[0])
        stretch = [[float(src.tags(b).get("STATISTICS_P2", 0)),
                    float(src.tags(b).get("STATISTICS_P98", 3000))] for b in (1, 2, 3)]
        item = rio_stac.create_stac_item(
            src, input_datetime=when, id=path.stem, asset_name="data", asset_roles=["data"],
            asset_href=href(path), asset_media_type=pystac.MediaType.COG, with_proj=True,
            with_raster=True, with_eo=True, properties={"gsd": res, **(properties or {})})
    data = item.assets["data"]
    data.title = "super-resolved reflectance (x 10000) and quality"
    data.extra_fields["eo:bands"] = [
        {"name": n, **({"common_name": n} if n in OUTPUT_BANDS else {}), "description": n}
        for n in names]
    bands = data.extra_fields["raster:bands"]
    if "quality" in names:
        bands[names.index("quality")]["classification:classes"] = quality_classes()
    data.extra_fields.update(_file_fields(path))
    for key, file in (files or {}).items():
        file = Path(file)
        media, roles = _KINDS.get(file.suffix, (None, ["metadata"]))
        if key == "thumbnail":
            roles = ["thumbnail"]
        item.add_asset(key, pystac.Asset(href=href(file), media_type=media, roles=roles,
                                         extra_fields=_file_fields(file)))
    for source in sources:
        item.add_link(pystac.Link("derived_from", source, media_type=pystac.MediaType.JSON))
    rgb = [names.index(b) + 1 for b in ("red", "green", "blue") if b in names]
    if len(rgb) == 3:
        item.properties["renders"] = {"rgb": {
            "title": "Natural colour", "assets": ["data"], "nodata": -32768,
            "expression": ";".join(f"data_b{i}" for i in rgb), "rescale": stretch,
            "resampling": "nearest"}}
    for url in (_CLASSIFICATION, _FILE, _RENDER):
        if url not in item.stac_extensions:
            item.stac_extensions.append(url)
    return item


def write_product_item(cog_path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write :func:`product_item` as ``<stem>.stac.json`` beside the COG; return its path."""
    path = Path(cog_path)
    target = path.with_name(f"{path.stem}.stac.json")
    item = product_item(path, **kwargs)
    return write_atomic(target, json.dumps(item.to_dict(include_self_link=False), indent=2))


def describe_product(cog_path: str | os.PathLike, *, ds: Any = None, quicklooks: bool = True,
                     attrs: Mapping[str, Any] | None = None,
                     href: Callable[[Path], str] | None = None,
                     files: Mapping[str, str | os.PathLike] | None = None,
                     properties: Mapping[str, Any] | None = None) -> list[Path]:
    """Write a product's quicklooks (from its input ``ds``) and its STAC Item.

    Without ``ds`` (an existing product), or with ``quicklooks=False``, the quicklooks
    already beside the COG are listed. The acquisition time and source items
    (``datetime``, ``items``, ``item_hrefs``) come from ``attrs``, by default ``ds``'s
    attributes; the model and QC verdict from the QC JSON beside the COG.

    Returns
    -------
    list of Path
        The quicklooks, then the Item (``<stem>.stac.json``).
    """
    from .quicklook import QUICKLOOKS, quicklook_path, write_quicklooks

    cog = Path(cog_path)
    if ds is not None and quicklooks:
        looks = write_quicklooks(ds, cog)
    else:
        looks = [p for p in (quicklook_path(cog, k) for k in QUICKLOOKS) if p.is_file()]
    attrs = dict(attrs if attrs is not None else getattr(ds, "attrs", {}) or {})
    qc_json = cog.with_suffix(".qc.json")
    props: dict[str, Any] = {}
    if attrs.get("items"):
        props["srlib:source_items"] = list(attrs["items"])
    elif attrs.get("id"):
        props["srlib:source_items"] = [attrs["id"]]
    if qc_json.is_file():
        report = json.loads(qc_json.read_text())
        if report.get("model"):
            props["srlib:model"] = report["model"]
        props["srlib:qc_passed"] = bool(report.get("passed"))
    props.update(properties or {})
    assets: dict[str, str | os.PathLike] = {"qc": qc_json} if qc_json.is_file() else {}
    for look in looks:
        kind = look.stem.rsplit("_", 1)[-1]
        assets["thumbnail" if kind == "rgb" else f"quicklook_{kind}"] = look
    assets.update(files or {})
    item = write_product_item(cog, datetime=attrs.get("datetime") or None, href=href,
                              properties=props, files=assets,
                              sources=list(attrs.get("item_hrefs") or []))
    return [*looks, item]
