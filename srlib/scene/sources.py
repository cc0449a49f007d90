"""Sentinel-2 L2A sources: STAC search (pystac-client) and lazy loading (odc-stac).

Conventions, decided once here:

- **Grid.** ``mgrs=`` loads the whole tile on the grid of its finest band (the loaded
  band with the smallest pixel, 10 m and 10980 x 10980 px for real tiles, whichever band
  that is) in its UTM CRS. ``aoi=`` loads the part of the chosen scene's grid, extended
  past the tile's edge where the AOI goes on, that covers the AOI, snapped outwards to
  whole pixels.
- **Several scenes on a date.** Candidates are ordered by acquisition time, then item id;
  ``s2_id`` (default 0) picks one, ``product_id`` picks an exact item. For an AOI, the
  candidates are the items that intersect it, ordered by the area of the AOI they cover
  (largest first), then time and id; the chosen scene fixes CRS and grid, and the other
  tiles of the *same acquisition* (same datatake, else the same platform and relative
  orbit) that intersect the AOI are mosaicked onto that grid (reprojected when in
  another UTM zone; the first valid pixel wins). The fraction of the AOI that the
  scenes' data footprints cover is recorded as ``attrs["aoi_coverage"]``, and the
  fraction of the loaded grid (tile or AOI) as ``attrs["data_coverage"]``: QC checks that
  the product covers as much, and a job reports a product covering less than
  :data:`MIN_AOI_COVERAGE` of its AOI as ``partial``.
- **Resampling.** 20 m bands are resampled to the 10 m grid **bilinearly** while loading;
  ``scl`` by **nearest** neighbour.
- **BOA offset.** Processing baseline 04.00 and later store ``DN = 10000 * reflectance +
  1000``. Earth Search's ``raster:bands`` offset and its ``earthsearch:boa_offset_applied``
  flag are known to disagree with the pixels (Element84/earth-search #66, #71), so the
  offset is decided from ``s2:processing_baseline`` alone and recorded once, as the
  ``add_offset`` attribute (-0.1 or 0) that :func:`srlib.super_resolve` applies.
- **S3.** Access settings (endpoint, anonymous or signed, requester pays) travel with
  the load: odc-stac's reader captures them into the dask graph and restores them (a
  ``rasterio.Env`` and an ``AWSSession``) around each read, so nothing global is changed.
  Credentials are never put into the graph: the session finds them in the ``AWS_*``
  environment of the process that reads.
- **Errors.** Reads are retried by GDAL with exponential backoff
  (``GDAL_HTTP_MAX_RETRY``, ``GDAL_HTTP_RETRY_DELAY``); a read that still fails raises
  (``fail_on_error=True``): no chunk is ever silently filled with zeros. STAC calls are
  retried with backoff too (:data:`STAC_RETRY`: a catalogue restarting or throttling),
  then fail with :class:`srlib.SourceError`, which a ``pdr`` request outlives (pending).
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pystac
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from odc.geo.geom import box as geom_box
from odc.loader._rio import RioDriver, capture_rio_env
from rasterio.errors import NotGeoreferencedWarning

from ..bands import S2_BANDS
from ..config import Settings
from ..errors import InputError, NoSceneFound, SourceError

__all__ = [
    "DEFAULT_BANDS",
    "MIN_AOI_COVERAGE",
    "aoi_coverage",
    "EARTH_SEARCH",
    "S3Options",
    "boa_offset",
    "load_items",
    "load_s2",
    "search_items",
]

#: Earth Search v1 STAC API.
EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
#: The ten spectral bands and the scene classification.
DEFAULT_BANDS: tuple[str, ...] = (*S2_BANDS, "scl")

_MGRS = re.compile(r"^T?(0?[1-9]|[1-5]\d|60)([C-HJ-NP-X])([A-HJ-NP-Z][A-HJ-NP-V])$")


@dataclass(frozen=True)
class S3Options:
    """How GDAL reaches S3 assets; secrets stay in the environment (``AWS_*``).

    Parameters
    ----------
    endpoint : str, optional
        ``host:port`` of an S3-compatible server (``AWS_S3_ENDPOINT``).
    https : bool
        Use HTTPS to the endpoint.
    virtual_hosting : bool
        Bucket in the host name (AWS) or in the path (most S3-compatible servers).
    requester_pays : bool
        Send ``x-amz-request-payer: requester``.
    anonymous : bool, optional
        Unsigned requests; by default unsigned unless ``AWS_ACCESS_KEY_ID`` or
        ``AWS_PROFILE`` is set.
    region : str, optional
        ``AWS_REGION``.
    """

    endpoint: str | None = None
    https: bool = True
    virtual_hosting: bool = True
    requester_pays: bool = False
    anonymous: bool | None = None
    region: str | None = None
    timeout_s: float = 60.0

    @classmethod
    def from_env(cls) -> S3Options:
        """Take the S3 settings of :meth:`srlib.config.Settings.from_env`.

        The endpoint (``AWS_ENDPOINT_URL_S3``), path-style addressing, requester pays and
        the region.
        """
        settings = Settings.from_env()
        return cls(
            endpoint=settings.s3_host,
            https=settings.s3_https,
            virtual_hosting=settings.s3_virtual_hosting,
            requester_pays=settings.s3_requester_pays,
            region=settings.s3_region,
            timeout_s=settings.network_timeout_s,
        )

    def gdal_env(self) -> dict[str, str]:
        """GDAL configuration options other than the AWS session (no secrets)."""
        return {
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.jp2",
            "GDAL_HTTP_MAX_RETRY": "5",
            "GDAL_HTTP_RETRY_DELAY": "0.5",
            # a server that accepts and never answers must not hold the job forever
            "GDAL_HTTP_TIMEOUT": str(max(1, round(self.timeout_s))),
            "GDAL_HTTP_CONNECTTIMEOUT": str(max(1, round(min(self.timeout_s, 30)))),
            "AWS_HTTPS": "YES" if self.https else "NO",
            "AWS_VIRTUAL_HOSTING": "TRUE" if self.virtual_hosting else "FALSE",
        }

    def session(self) -> dict[str, object]:
        """Arguments of rasterio's ``AWSSession``: no keys, found in ``AWS_*`` at read time."""
        anonymous = self.anonymous
        if anonymous is None:
            anonymous = not Settings.from_env().s3_signed
        out: dict[str, object] = {"aws_unsigned": anonymous,
                                  "requester_pays": self.requester_pays}
        if self.endpoint:
            out["endpoint_url"] = self.endpoint
        if self.region:
            out["region_name"] = self.region
        return out


class ScopedRioDriver(RioDriver):
    """odc-stac's rasterio reader with GDAL settings that travel with one load only.

    The settings (never credentials) are captured into the dask graph and restored
    around each read, on whichever worker runs it; the class is module-level so that
    it pickles for dask.distributed.
    """

    def __init__(self, s3: S3Options) -> None:
        super().__init__()
        self.s3 = s3

    def capture_env(self) -> dict:
        """Return the environment restored around each read."""
        return {**capture_rio_env(), **self.s3.gdal_env(), "_aws": self.s3.session()}

    def open(self, src, ctx):
        """Open a source; failed reads name the asset's href."""
        return _NamedReader(super().open(src, ctx), src.uri)


#: rasterio's warp says this of every block it resamples into memory (odc-loader's
#: destination is a bare array): noise. A filter of its own, not ``catch_warnings``
#: around each read: that saves and restores the process's filters, so reads in
#: parallel threads undid each other's and the line reached every AOI job's log.
warnings.filterwarnings("ignore", "Dataset has no geotransform", NotGeoreferencedWarning,
                        r"rasterio\.warp")


class _NamedReader:
    """Delegates to odc-loader's reader; a failed read raises SourceError with the href."""

    def __init__(self, reader: Any, uri: str) -> None:
        self._reader, self._uri = reader, uri

    def __getattr__(self, name: str) -> object:
        # only called for names not found normally; while unpickling (on a distributed
        # worker) _reader is not set yet, and looking it up here would recurse forever
        if name.startswith("__") or name in ("_reader", "_uri"):
            raise AttributeError(name)
        return getattr(self._reader, name)

    def read(self, *args: object, **kwargs: object) -> object:
        """Read, or raise SourceError naming the asset."""
        from ..failpoints import hit

        try:
            hit("read", self._uri)
            return self._reader.read(*args, **kwargs)
        except Exception as err:
            raise SourceError(
                f"cannot read {self._uri} (after GDAL's retries): {err}. The asset is missing, "
                "corrupt or unreachable; no data was filled in for it"
            ) from err


# ------------------------------------------------------------------ validation


def _lonlat_box(bounds: Sequence[float]) -> Geometry:
    """Return the lon/lat box of ``(min_lon, min_lat, max_lon, max_lat)``."""
    left, bottom, right, top = (float(v) for v in bounds)
    return geom_box(left, bottom, right, top, "EPSG:4326")

def parse_date(date: str | dt.date | dt.datetime) -> dt.date:
    """Accept ``YYYYMMDD``, ``YYYY-MM-DD``, a date or a datetime."""
    if isinstance(date, dt.datetime):
        return date.date()
    if isinstance(date, dt.date):
        return date
    text = str(date).strip()
    # whole forms only: strptime takes one-digit months and days, so "2020021" was
    # read as 2020-02-01 and a job ran for a day nobody asked for
    for fmt, form in (("%Y%m%d", r"\d{8}"), ("%Y-%m-%d", r"\d{4}-\d{2}-\d{2}")):
        if not re.fullmatch(form, text):
            continue
        try:
            day = dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
        if day < dt.date(2015, 6, 23):
            raise InputError(f"date {text}: Sentinel-2 data start on 2015-06-23")
        return day
    raise InputError(f"date {date!r} is not a date; use YYYYMMDD, for example 20250731")


def check_mgrs(mgrs: str) -> str:
    """Normalise an MGRS tile id (``33LWF``, ``T33LWF``, ``3LWF`` -> ``03LWF``)."""
    match = _MGRS.match(str(mgrs).strip().upper())
    if not match:
        raise InputError(
            f"{mgrs!r} is not an MGRS tile id: expected zone 1-60, a latitude band C-X "
            "(no I or O) and a two-letter 100 km square, for example 33LWF"
        )
    zone, band, square = match.groups()
    return f"{int(zone):02d}{band}{square}"


def check_aoi(aoi: Sequence[float]) -> tuple[float, float, float, float]:
    """Validate ``(min_lon, min_lat, max_lon, max_lat)`` in degrees."""
    try:
        min_lon, min_lat, max_lon, max_lat = (float(v) for v in aoi)
    except (TypeError, ValueError) as err:
        raise InputError("aoi must be four numbers: MIN_LON MIN_LAT MAX_LON MAX_LAT") from err
    if not (-180 <= min_lon <= 180 and -180 <= max_lon <= 180):
        raise InputError(f"aoi longitudes must be within [-180, 180], got {min_lon}, {max_lon}")
    if not (-90 <= min_lat <= 90 and -90 <= max_lat <= 90):
        raise InputError(f"aoi latitudes must be within [-90, 90], got {min_lat}, {max_lat}")
    if min_lon >= max_lon or min_lat >= max_lat:
        across = (" (an AOI across the antimeridian: request its halves MIN_LON .. 180 and "
                  "-180 .. MAX_LON separately)" if min_lon > max_lon else "")
        raise InputError(
            f"aoi has min >= max or zero area ({min_lon}, {min_lat}, {max_lon}, {max_lat}); "
            f"order it MIN_LON MIN_LAT MAX_LON MAX_LAT{across}"
        )
    return min_lon, min_lat, max_lon, max_lat


def boa_offset(item: pystac.Item) -> float:
    """Reflectance offset of an L2A item: -0.1 from processing baseline 04.00, else 0.

    Decided from ``s2:processing_baseline`` alone (see the module docstring).
    """
    baseline = item.properties.get("s2:processing_baseline")
    if baseline is None:
        raise InputError(f"item {item.id} has no s2:processing_baseline; cannot decide its "
                         "BOA offset")
    major, _, minor = str(baseline).partition(".")
    return -0.1 if (int(major), int(minor or 0)) >= (4, 0) else 0.0


# ------------------------------------------------------------------ search


#: Retries of a STAC API call: 5, waiting 1, 2, 4, 8 s between them, on a refused or
#: reset connection, a timeout and the statuses that say "try again" (a restarting or
#: throttling server); searches are reads, so POST too. A server's Retry-After is not
#: obeyed: urllib3 would sleep as long as it says (an hour holds the job an hour), where
#: a ``pdr`` request that still fails goes back to pending with its own backoff.
STAC_RETRY: dict[str, Any] = {
    "total": 5, "backoff_factor": 0.5, "status_forcelist": (429, 500, 502, 503, 504),
    "allowed_methods": None, "respect_retry_after_header": False, "raise_on_status": False}


def _client(catalog: str):
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    timeout = Settings.from_env().network_timeout_s
    try:
        return Client.open(catalog, timeout=timeout,
                           stac_io=StacApiIO(timeout=timeout, max_retries=Retry(**STAC_RETRY)))
    except Exception as err:
        raise SourceError(f"cannot open the STAC catalogue {catalog}: {_why(err)}") from err


def _why(err: BaseException) -> str:
    """Say what failed a STAC call, in words.

    Once retries are spent, the connection's own error (urllib3 wraps it twice: "Max
    retries exceeded ... (Caused by ...)"); for an answer, its status and text.
    """
    from urllib3.exceptions import MaxRetryError

    seen: BaseException | None = err
    reason = None
    while seen is not None and reason is None:  # pystac-client raises from requests' error
        spent = next((e for e in (seen, *seen.args) if isinstance(e, MaxRetryError)), None)
        reason = spent.reason if spent is not None else None
        seen = seen.__cause__ or seen.__context__
    if reason is None:  # an answer: the catalogue's status and what it said, if anything
        status = getattr(err, "status_code", None)
        said = str(err).strip()[:300]
        head = f"HTTP {status}" if status else type(err).__name__
        return f"{head}: {said}" if said else f"{head} (no message)"
    text = str(reason)
    # after the connection's name: "HTTPConnection(host=..., port=...): " (urllib3 2.1+)
    # or "<urllib3.connection.HTTPConnection object at 0x...>: " (2.0)
    cause = re.sub(r"^(<[^<>]*>|\w+\([^()]*\)): ", "", text)
    return f"{cause} (after {STAC_RETRY['total']} retries)"


def _day_range(day: dt.date, days: int = 0) -> str:
    start = dt.datetime.combine(day - dt.timedelta(days=days), dt.time.min)
    end = dt.datetime.combine(day + dt.timedelta(days=days), dt.time.max)
    return f"{start.isoformat()}Z/{end.isoformat()}Z"


def _grid_code(item: pystac.Item) -> str | None:
    code = item.properties.get("grid:code")
    if code:
        return str(code).removeprefix("MGRS-")
    p = item.properties
    if "mgrs:utm_zone" in p:
        return f"{int(p['mgrs:utm_zone']):02d}{p['mgrs:latitude_band']}{p['mgrs:grid_square']}"
    return None


#: Items a search may return before it is refused as too broad (never truncated).
MAX_ITEMS = 1000
#: Items per page asked of the catalogue.
PAGE_SIZE = 100


def _tile_filter(client, mgrs: str) -> dict:
    """Search arguments that filter on the MGRS tile on the server, as it conforms.

    CQL2-JSON ``filter`` on ``grid:code`` (STAC API filter extension), else the ``query``
    extension, else nothing (the client filters, and the item limit still applies).
    """
    from pystac_client.conformance import ConformanceClasses

    code = f"MGRS-{mgrs}"
    if client.conforms_to(ConformanceClasses.FILTER):
        return {"filter": {"op": "=", "args": [{"property": "grid:code"}, code]},
                "filter_lang": "cql2-json"}
    if client.conforms_to(ConformanceClasses.QUERY):
        return {"query": {"grid:code": {"eq": code}}}
    return {}


def _server_search(client, *, collection: str, datetime: str, mgrs: str | None,
                   bbox: tuple[float, ...] | None) -> list[pystac.Item]:
    """Return the items the catalogue gives, paged, filtered on the server where it can.

    Raises
    ------
    SourceError
        The search failed, or returned more than :data:`MAX_ITEMS` (refused, never
        truncated: narrow the date or the area).
    """
    kwargs: dict = {"collections": [collection], "datetime": datetime, "limit": PAGE_SIZE,
                    "max_items": MAX_ITEMS + 1}
    if bbox is not None:
        kwargs["bbox"] = list(bbox)
    if mgrs is not None:
        kwargs.update(_tile_filter(client, mgrs))
    try:
        items = list(client.search(**kwargs).items())
    except Exception as err:
        raise SourceError(f"STAC search failed at {client.self_href}: {_why(err)}") from err
    if len(items) > MAX_ITEMS:
        where = f"MGRS tile {mgrs}" if mgrs else f"bbox {bbox}"
        raise SourceError(f"the STAC search at {client.self_href} for {where} in {datetime} "
                          f"matched more than {MAX_ITEMS} items; srlib does not truncate "
                          "results: narrow the date range or the area")
    return items


def _search(client, *, collection: str, datetime: str, mgrs: str | None,
            bbox: tuple[float, ...] | None) -> list[pystac.Item]:
    items = _server_search(client, collection=collection, datetime=datetime, mgrs=mgrs,
                           bbox=bbox)
    if mgrs is not None:  # a server that ignored the filter must not widen the result
        items = [it for it in items if _grid_code(it) == mgrs]
    return items


def search_items(
    *,
    date: str | dt.date,
    mgrs: str | None = None,
    aoi: Sequence[float] | None = None,
    catalog: str = EARTH_SEARCH,
    collection: str = "sentinel-2-l2a",
) -> list[pystac.Item]:
    """Find the L2A items of one date for an MGRS tile or an AOI, in srlib's order.

    Raises
    ------
    NoSceneFound
        Nothing on that date; the message lists the nearest dates that have scenes.
    """
    day = parse_date(date)
    if (mgrs is None) == (aoi is None):
        raise InputError("pass exactly one of mgrs= (a whole tile) or aoi= (a crop)")
    tile = check_mgrs(mgrs) if mgrs is not None else None
    bbox = check_aoi(aoi) if aoi is not None else None
    client = _client(catalog)
    items = _search(client, collection=collection, datetime=_day_range(day), mgrs=tile,
                    bbox=bbox)
    if not items:
        nearby = _search(client, collection=collection, datetime=_day_range(day, 30),
                         mgrs=tile, bbox=bbox)
        dates = sorted({it.datetime.date() for it in nearby if it.datetime},
                       key=lambda d: (abs((d - day).days), d))
        where = f"MGRS tile {tile}" if tile else f"AOI {bbox}"
        hint = (f"nearest dates with scenes: {', '.join(d.strftime('%Y%m%d') for d in dates[:6])}"
                if dates else "no scene within 30 days either")
        raise NoSceneFound(f"no {collection} scene for {where} on {day:%Y%m%d}; {hint}")
    if bbox is not None:
        aoi_geom = _lonlat_box(bbox)
        items.sort(key=lambda it: (-_overlap(it, aoi_geom), it.datetime, it.id))
    else:
        items.sort(key=lambda it: (it.datetime, it.id))
    return items


def _same_acquisition(a: pystac.Item, b: pystac.Item) -> bool:
    """Tell whether two items are one acquisition: same datatake (else platform, orbit, day)."""
    take = a.properties.get("s2:datatake_id")
    if take is not None:
        return b.properties.get("s2:datatake_id") == take
    keys = ("platform", "sat:relative_orbit")
    return all(a.properties.get(k) is not None and a.properties.get(k) == b.properties.get(k)
               for k in keys) and a.datetime is not None and b.datetime is not None \
        and a.datetime.date() == b.datetime.date()


def _overlap(item: pystac.Item, aoi) -> float:
    if item.bbox is None:
        return 0.0
    return float((_lonlat_box(item.bbox) & aoi).area)


# ------------------------------------------------------------------ load


def _finest_band(item: pystac.Item, bands: Sequence[str]) -> str:
    """Return the loaded band with the smallest pixel (``proj:transform``); ``scl`` last."""
    sizes = {}
    for band in bands:
        transform = (item.assets[band].extra_fields.get("proj:transform")
                     if band in item.assets else None)
        if transform:
            sizes[band] = (band == "scl", abs(float(transform[0])))
    if not sizes:
        raise InputError(f"item {item.id} gives no proj:transform for any of {list(bands)}; "
                         "load it with srlib.load_items(..., crs=, resolution=)")
    return min(sizes, key=lambda b: (sizes[b][1], sizes[b][0], b))


#: The least fraction of an AOI that the data must cover for a ``done`` product; less is
#: delivered as ``partial``, with the fraction.
MIN_AOI_COVERAGE = 0.95


def aoi_coverage(items: Sequence[pystac.Item], aoi: Sequence[float]) -> float:
    """Fraction of the AOI (lon/lat) covered by the union of the items' data footprints."""
    return _covered(_footprints(items), _lonlat_box(aoi))


def grid_coverage(items: Sequence[pystac.Item], geobox: GeoBox) -> float:
    """Fraction of ``geobox`` covered by the union of the items' data footprints."""
    return _covered(_footprints(items), geobox.extent)


def _footprints(items: Sequence[pystac.Item]):
    """Return the union of the items' data footprints (lon/lat), or None."""
    from odc.geo.geom import Geometry, unary_union

    shapes = [Geometry(it.geometry, "EPSG:4326") if it.geometry else
              _lonlat_box(it.bbox or ()) for it in items if it.geometry or it.bbox]
    return unary_union(shapes) if shapes else None


def _covered(union, area) -> float:
    """Fraction of the geometry ``area`` inside ``union`` (None: nothing covered)."""
    if union is None or not area.area:
        return 0.0
    return float(min(1.0, (union.to_crs(area.crs) & area).area / area.area))


def _item_geobox(item: pystac.Item, band: str = "red") -> GeoBox:
    asset = item.assets.get(band)
    if asset is None:
        raise InputError(f"item {item.id} has no {band!r} asset")
    shape = asset.extra_fields.get("proj:shape")
    transform = asset.extra_fields.get("proj:transform")
    epsg = item.properties.get("proj:epsg") or asset.extra_fields.get("proj:epsg")
    code = item.properties.get("proj:code") or (f"EPSG:{epsg}" if epsg else None)
    if not (shape and transform and code):
        raise InputError(f"item {item.id} lacks proj:shape/proj:transform/proj:epsg on "
                         f"{band!r}; load it with srlib.load_items(..., crs=, resolution=)")
    from affine import Affine

    return GeoBox(tuple(shape), Affine(*transform[:6]), code)


def _crop(geobox: GeoBox, bbox: tuple[float, float, float, float], *,
          clamp: bool = True) -> GeoBox:
    """Return the part of ``geobox`` covering a lon/lat bbox, snapped outwards to pixels.

    ``clamp=False`` extends the grid (same CRS, same pixel alignment) past its edges where
    the bbox goes on, for a mosaic of the neighbouring tiles.
    """
    if geobox.crs is None:
        raise InputError("the scene's grid has no CRS; it cannot be cropped to an AOI")
    poly = _lonlat_box(bbox).to_crs(geobox.crs)
    x0, y0, x1, y1 = poly.boundingbox
    # ``~affine * (x, y)`` and ``affine * Affine.translation(c0, r0)`` spelled out:
    # affine 3 warns on ``*``, and affine 2.4 (our floor) has no ``@``
    inv = ~geobox.affine
    cols, rows = zip(*((inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f)
                       for x in (x0, x1) for y in (y0, y1)), strict=True)
    r0, r1 = int(np.floor(min(rows))), int(np.ceil(max(rows)))
    c0, c1 = int(np.floor(min(cols))), int(np.ceil(max(cols)))
    h, w = geobox.shape
    inside = max(r0, 0) < min(r1, h) and max(c0, 0) < min(c1, w)
    if not inside:
        raise InputError(f"aoi {bbox} does not overlap the scene's grid")
    if clamp:
        return geobox[max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)]
    from affine import Affine

    a = geobox.affine
    moved = Affine(a.a, a.b, a.c + a.a * c0 + a.b * r0, a.d, a.e, a.f + a.d * c0 + a.e * r0)
    return GeoBox((r1 - r0, c1 - c0), moved, geobox.crs)


def load_items(
    items: Iterable[pystac.Item],
    *,
    bands: Sequence[str] = DEFAULT_BANDS,
    geobox: GeoBox | None = None,
    bbox: Sequence[float] | None = None,
    crs: str | None = None,
    resolution: float | None = None,
    chunks: dict[str, int] | None = None,
    s3: S3Options | None = None,
) -> xr.Dataset:
    """Load pystac Items lazily into a srlib scene (odc-stac).

    By default the grid is the first item's finest band; ``bbox`` (lon/lat) crops it (and
    extends it past the first item's edge where the bbox goes on, for the other items to
    fill), ``crs``/``resolution`` replace it, ``geobox`` sets it exactly.

    Returns
    -------
    xarray.Dataset
        Dims ``(y, x)``, uint16 DN with nodata 0, ``scale_factor``/``add_offset``
        attributes for the BOA offset (see :func:`boa_offset`), ``time``, the item ids in
        ``attrs["items"]``.
    """
    import odc.stac

    items = list(items)
    if not items:
        raise InputError("load_items needs at least one item")
    offsets = {boa_offset(it) for it in items}
    if len(offsets) > 1:
        raise InputError("items mix processing baselines before and after 04.00; load them "
                         "separately")
    finest = _finest_band(items[0], bands)
    if geobox is None and crs is None and resolution is None:
        geobox = _item_geobox(items[0], finest)
        if bbox is not None:
            geobox = _crop(geobox, check_aoi(bbox), clamp=False)
    elif geobox is None and crs is not None and resolution is not None and bbox is not None:
        geobox = GeoBox.from_bbox(_lonlat_box(check_aoi(bbox)).to_crs(crs)
                                  .boundingbox, crs, resolution=resolution)
    elif geobox is None:
        base = _item_geobox(items[0], finest)
        if resolution is not None:
            base = base.zoom_to(resolution=resolution)
        geobox = _crop(base, check_aoi(bbox)) if bbox is not None else base
    missing = [b for b in bands if any(b not in it.assets for it in items)]
    if missing:
        raise InputError(f"assets {missing} are missing from some items; available: "
                         f"{sorted(items[0].assets)}")
    ds = odc.stac.load(
        items, bands=list(bands), geobox=geobox,
        chunks=dict(chunks) if chunks else {"x": 2048, "y": 2048},
        resampling={"*": "bilinear", "scl": "nearest"},
        groupby="solar_day", fail_on_error=True, dtype="uint16",
        driver=ScopedRioDriver(s3 or S3Options.from_env()),
    )
    if ds.sizes.get("time", 1) != 1:
        raise InputError(f"items span {ds.sizes['time']} days; load one date at a time")
    ds = ds.isel(time=0)
    offset = offsets.pop()
    for band in ds.data_vars:
        ds[band].attrs.update(nodata=0)
        if band != "scl":
            ds[band].attrs.update(scale_factor=1e-4, add_offset=offset)
        ds[band] = ds[band].rio.write_nodata(0, encoded=False)
    first = items[0]
    ds.attrs.update(
        id=first.id, items=[it.id for it in items], mgrs=_grid_code(first) or "",
        item_hrefs=[h for h in (it.get_self_href() for it in items) if h],
        datetime=first.datetime.isoformat() if first.datetime else "",
        processing_baseline=str(first.properties.get("s2:processing_baseline", "")),
    )
    union = _footprints(items)
    ds.attrs["data_coverage"] = round(_covered(union, geobox.extent), 4)
    if bbox is not None:
        ds.attrs["aoi"] = [float(v) for v in check_aoi(bbox)]
        ds.attrs["aoi_coverage"] = round(_covered(union, _lonlat_box(bbox)), 4)
    return ds


def load_s2(
    *,
    date: str | dt.date,
    mgrs: str | None = None,
    aoi: Sequence[float] | None = None,
    s2_id: int = 0,
    product_id: str | None = None,
    catalog: str = EARTH_SEARCH,
    collection: str = "sentinel-2-l2a",
    bands: Sequence[str] = DEFAULT_BANDS,
    resolution: float | None = None,
    chunks: dict[str, int] | None = None,
    s3: S3Options | None = None,
) -> xr.Dataset:
    """Search a STAC API and load one Sentinel-2 L2A scene lazily (see the module docs).

    Parameters
    ----------
    date : str or date
        ``YYYYMMDD``.
    mgrs : str, optional
        Whole MGRS tile, e.g. ``"33LWF"``. Exclusive with ``aoi``.
    aoi : sequence of 4 floats, optional
        ``(min_lon, min_lat, max_lon, max_lat)``.
    s2_id : int
        Which candidate scene of the date (0 = first in srlib's order).
    product_id : str, optional
        Exact item id, e.g. ``"S2B_19JCL_20250402_0_L2A"``.
    catalog, collection : str
        STAC API and collection (default Earth Search v1 ``sentinel-2-l2a``).
    bands : sequence of str
        Asset keys to load.
    resolution : float, optional
        Output pixel size in metres (default: the scene's finest band, 10 m).
    chunks : dict, optional
        Dask chunks (default 2048 x 2048).
    s3 : S3Options, optional
        S3 access (default :meth:`S3Options.from_env`).

    Returns
    -------
    xarray.Dataset
        Lazy scene ready for :func:`srlib.super_resolve`.
    """
    day = parse_date(date)
    if (mgrs is None) == (aoi is None):
        raise InputError("pass exactly one of mgrs= (a whole tile) or aoi= (a crop)")
    if s2_id < 0:
        raise InputError(f"s2_id must be >= 0, got {s2_id}")
    candidates = search_items(date=day, mgrs=mgrs, aoi=aoi, catalog=catalog,
                              collection=collection)
    if product_id is not None:
        chosen = [it for it in candidates if it.id == product_id]
        if not chosen:
            raise NoSceneFound(f"{product_id} is not among the scenes of {day:%Y%m%d}: "
                               f"{[it.id for it in candidates]}")
        primary = chosen[0]
    else:
        if s2_id >= len(candidates):
            raise InputError(f"s2_id={s2_id} but {day:%Y%m%d} has {len(candidates)} scene(s): "
                             f"{[it.id for it in candidates]}")
        primary = candidates[s2_id]
    if aoi is None:
        return load_items([primary], bands=bands, resolution=resolution, chunks=chunks, s3=s3)
    group = [primary] + [it for it in candidates
                         if it is not primary and _same_acquisition(primary, it)]
    return load_items(group, bands=bands, bbox=aoi, resolution=resolution, chunks=chunks,
                      s3=s3)
