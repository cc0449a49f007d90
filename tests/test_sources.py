"""Sources: STAC search and odc-stac loading through real loopback servers.

The tests start moto's S3 server (serving the bundled real 29RKH COGs under Earth
Search's key layout) and stac-fastapi-static (serving real Earth Search items with hrefs
rewritten to s3://), and read through GDAL's /vsis3/ exactly as production does.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Iterator

import numpy as np
import pystac
import pytest
import rasterio

import srlib
from srlib.scene.sources import S3Options, boa_offset, load_s2, search_items

from .servers import (
    CREDENTIALS,
    DATA,
    SAMPLE,
    broken_item,
    loopback_sources,
    metadata_items,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for key, value in CREDENTIALS.items():
        mp.setenv(key, value)

    def broken(endpoint, item):
        return [broken_item(endpoint, item, day="20200310", nir=None),
                broken_item(endpoint, item, day="20200315", nir=b"not a GeoTIFF")]

    with loopback_sources(tmp_path_factory.mktemp("stac"), broken) as (url, endpoint, item):
        s3 = S3Options(endpoint=endpoint, https=False, virtual_hosting=False)
        yield {"url": url, "s3": s3, "endpoint": endpoint, "item": item}
    mp.undo()


def _direct(name: str, window=None) -> np.ndarray:
    with rasterio.open(SAMPLE / f"{name}.tif") as src:
        return src.read(1, window=window)


def test_whole_mgrs_tile_equals_the_files(servers):
    ds = load_s2(date="20200219", mgrs="T29RKH", catalog=servers["url"], s3=servers["s3"])
    assert set(ds.data_vars) == set(srlib.S2_BANDS) | {"scl"}
    assert ds.red.chunks is not None  # lazy
    assert ds.rio.crs.to_epsg() == 32629
    with rasterio.open(SAMPLE / "B04.tif") as src:
        assert ds.rio.transform() == src.transform and ds.red.shape == src.shape
    for band, name in (("red", "B04"), ("green", "B03"), ("blue", "B02"), ("nir", "B08")):
        np.testing.assert_array_equal(ds[band].values, _direct(name))
    # 20 m bands resampled bilinearly: each 2x2 block averages back close to its 20 m
    # pixel (bilinear smooths a little), and agrees with GDAL's own bilinear resampling
    up = ds.rededge1.values.astype(float)
    coarse = _direct("B05").astype(float)[1:-1, 1:-1]
    inner = up[2:-2, 2:-2].reshape(547, 2, 547, 2).mean(axis=(1, 3))
    assert np.abs(inner - coarse).mean() < 0.01 * coarse.mean()
    assert np.corrcoef(inner.ravel(), coarse.ravel())[0, 1] > 0.97
    gdal = srlib.sample_scene().rededge1.values.astype(float)
    assert np.abs(up - gdal)[2:-2, 2:-2].mean() < 0.01 * coarse.mean()
    assert ds.red.attrs["add_offset"] == 0.0 and ds.red.rio.nodata == 0
    assert ds.attrs["processing_baseline"] == "02.14"


def test_aoi_is_snapped_to_the_scene_grid_and_super_resolves(servers):
    aoi = (-11.5, 24.5, -11.4, 24.6)
    ds = load_s2(date="2020-02-19", aoi=aoi, catalog=servers["url"], s3=servers["s3"])
    t = ds.rio.transform()
    assert (t.c - 199980) % 100 == 0 and (2800020 - t.f) % 100 == 0
    row, col = int((2800020 - t.f) / 100), int((t.c - 199980) / 100)
    h, w = ds.red.shape
    np.testing.assert_array_equal(ds.red.values, _direct("B04")[row:row + h, col:col + w])
    # the same crop of the bundled sample gives the same super-resolved reflectance
    sample = srlib.sample_scene().isel(y=slice(row, row + h), x=slice(col, col + w))
    a = srlib.super_resolve(ds).compute()
    b = srlib.super_resolve(sample).compute()
    for band in srlib.OUTPUT_BANDS:
        np.testing.assert_array_equal(a[band].values, b[band].values)
    assert a.rio.transform().a == 10.0


def test_scene_choice_and_missing_scenes(servers):
    kw = {"catalog": servers["url"], "s3": servers["s3"]}
    ds = load_s2(date="20200219", mgrs="29RKH", product_id="S2A_29RKH_20200219_0_L2A", **kw)
    assert ds.attrs["id"] == "S2A_29RKH_20200219_0_L2A"
    with pytest.raises(srlib.InputError, match=r"s2_id=1 but 20200219 has 1 scene"):
        load_s2(date="20200219", mgrs="29RKH", s2_id=1, **kw)
    with pytest.raises(srlib.NoSceneFound, match="nearest dates with scenes: 20200219"):
        load_s2(date="20200225", mgrs="29RKH", **kw)
    with pytest.raises(srlib.NoSceneFound, match="S2B_24MWV_20250731_0_L2A"):
        load_s2(date="20200219", mgrs="29RKH", product_id="S2B_24MWV_20250731_0_L2A", **kw)


def test_aoi_across_tiles_orders_candidates_by_coverage(servers):
    items = {it.id: it for it in map(pystac.Item.from_dict, metadata_items())}
    a, b = items["S2B_24MVV_20250731_0_L2A"], items["S2B_24MWV_20250731_0_L2A"]
    lon = (max(a.bbox[0], b.bbox[0]) + min(a.bbox[2], b.bbox[2])) / 2
    lat = (max(a.bbox[1], b.bbox[1]) + min(a.bbox[3], b.bbox[3])) / 2
    aoi = (lon - 0.2, lat - 0.02, lon + 0.01, lat + 0.02)  # mostly in the western tile
    found = search_items(date="20250731", aoi=aoi, catalog=servers["url"])
    ids = [it.id for it in found]
    assert set(ids) >= {a.id, b.id}
    west = min((a, b), key=lambda it: it.bbox[0])
    assert ids[0] == west.id


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"date": "20200219", "mgrs": "33IWF"}, "not an MGRS tile id"),
        ({"date": "20200219", "mgrs": "61LWF"}, "not an MGRS tile id"),
        ({"date": "2020-13-40", "mgrs": "33LWF"}, "YYYYMMDD"),
        # a digit short or over: strptime read "2020021" as 2020-02-01
        ({"date": "2020021", "mgrs": "33LWF"}, "YYYYMMDD"),
        ({"date": "202002190", "mgrs": "33LWF"}, "YYYYMMDD"),
        ({"date": "2020-2-19", "mgrs": "33LWF"}, "YYYYMMDD"),
        ({"date": "2020/02/19", "mgrs": "33LWF"}, "YYYYMMDD"),
        ({"date": "20100101", "mgrs": "33LWF"}, "2015-06-23"),
        ({"date": "20200219", "aoi": (10, 5, 9, 6)}, "min >= max"),
        ({"date": "20200219", "aoi": (10, 5, 10, 6)}, "zero area"),
        ({"date": "20200219", "aoi": (179.5, -17, -179.5, -16)}, "across the antimeridian"),
        ({"date": "20200219", "aoi": (10, 95, 11, 96)}, "latitudes"),
        ({"date": "20200219", "aoi": (1, 2, 3)}, "four numbers"),
        ({"date": "20200219"}, "exactly one of"),
        ({"date": "20200219", "mgrs": "33LWF", "aoi": (1, 2, 3, 4)}, "exactly one of"),
    ],
)
def test_bad_requests_fail_before_any_network_call(kwargs, message):
    # port 9 on loopback has no server: reaching the network would give a SourceError
    with pytest.raises(srlib.InputError, match=message):
        load_s2(catalog="http://127.0.0.1:9", **kwargs)


def test_unreachable_catalogue_is_a_clear_error(monkeypatch):
    from srlib.scene import sources

    # the same retries, with short waits: a refused connection is retried, then reported
    monkeypatch.setitem(sources.STAC_RETRY, "backoff_factor", 0.01)
    with pytest.raises(srlib.SourceError) as err:
        load_s2(date="20200219", mgrs="29RKH", catalog="http://127.0.0.1:9")
    # one line that says what happened, not urllib3's wrapping of it
    assert str(err.value) == ("cannot open the STAC catalogue http://127.0.0.1:9: Failed to "
                              "establish a new connection: [Errno 111] Connection refused "
                              "(after 5 retries)")


@contextlib.contextmanager
def _busy_front(target: str, busy: int) -> Iterator[tuple[str, list[int]]]:
    """A loopback HTTP front of the STAC API at ``target`` that answers its first ``busy``
    calls 503 (a restarting or throttled catalogue), then forwards each call; yields its
    URL and the statuses it gave."""
    import http.server
    import threading
    import urllib.error
    import urllib.request

    statuses: list[int] = []
    front = ""

    class Front(http.server.BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if len(statuses) < busy:
                statuses.append(503)
                self.send_response(503)
                self.send_header("Retry-After", "3600")  # obeyed, it would hold the job
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            request = urllib.request.Request(target + self.path, data=body or None,
                                             method=self.command,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status, data = answer.status, answer.read()
            except urllib.error.HTTPError as err:
                status, data = err.code, err.read()
            statuses.append(status)
            # the catalogue's links name itself: rewrite them to this front
            data = data.replace(target.encode(), front.encode())
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _forward  # noqa: N815 (http.server's names)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
    front = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield front, statuses
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_catalogue_is_retried_with_backoff(servers, monkeypatch):
    """503s (a catalogue restarting, or throttling) are waited out, for the opening call
    and for the search alike: a pdr request is not failed for a minute's outage."""
    from srlib.scene import sources

    monkeypatch.setitem(sources.STAC_RETRY, "backoff_factor", 0.01)
    target = servers["url"].rstrip("/")
    with _busy_front(target, busy=3) as (front, statuses):
        items = search_items(date="20200219", aoi=(-11.6, 24.45, -11.5, 24.55), catalog=front)
    assert [it.id for it in items] == [servers["item"]["id"]]
    assert statuses[:3] == [503, 503, 503] and set(statuses[3:]) == {200}
    with _busy_front(target, busy=99) as (front, statuses):  # an outage that lasts
        with pytest.raises(srlib.SourceError, match=r"cannot open the STAC catalogue .*: HTTP 503"):
            search_items(date="20200219", aoi=(-11.6, 24.45, -11.5, 24.55), catalog=front)
    assert statuses == [503] * (sources.STAC_RETRY["total"] + 1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (DATA / "earthsearch/S2B_24MWV_20250731_0_L2A.json", -0.1),  # baseline 05.11
        (DATA / "earthsearch/S2A_13TDE_20231008_0_L2A.json", -0.1),  # baseline 05.09
        (SAMPLE / "item.json", 0.0),  # baseline 02.14
    ],
    ids=["05.11", "05.09", "02.14"],
)
def test_boa_offset_comes_from_the_processing_baseline(name, expected):
    item = pystac.Item.from_dict(json.loads(name.read_text()))
    assert boa_offset(item) == expected
    # the metadata flags that disagree with the pixels play no part
    item.properties["earthsearch:boa_offset_applied"] = not item.properties.get(
        "earthsearch:boa_offset_applied", False)
    assert boa_offset(item) == expected


def test_credentials_never_enter_the_graph(servers):
    ds = load_s2(date="20200219", mgrs="29RKH", catalog=servers["url"], s3=servers["s3"])
    graph = pickle.dumps(dict(ds.red.data.__dask_graph__()))
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"].encode() not in graph
    assert b"AWS_SECRET_ACCESS_KEY" not in graph
    assert servers["endpoint"].encode() in graph  # the (non-secret) endpoint travels


@pytest.mark.parametrize("day", ["20200310", "20200315"], ids=["missing", "corrupt"])
def test_bad_asset_fails_with_its_href_and_no_zeros(servers, day):
    ds = load_s2(date=day, mgrs="29RKH", catalog=servers["url"], s3=servers["s3"])
    np.testing.assert_array_equal(ds.red.values, _direct("B04"))  # the good bands load
    with pytest.raises(Exception, match=rf"s3://sentinel-cogs/broken-{day}/B08\.tif"):
        ds.nir.values  # noqa: B018
    with pytest.raises(Exception, match="B08"):
        srlib.super_resolve(ds).compute()


def _crowd(endpoint, item):
    """30 items of other tiles on the same day: what a day of Earth Search looks like."""
    import copy

    out = []
    for i, tile in enumerate(f"29R{a}{b}" for a in "JKLMN" for b in "ABCDEF"):
        clone = copy.deepcopy(item)
        clone["id"] = f"S2A_{tile}_20200219_{i}_L2A"
        clone["properties"]["grid:code"] = f"MGRS-{tile}"
        out.append(clone)
    return out


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    with loopback_sources(tmp_path_factory.mktemp("crowd"), _crowd) as (url, _endpoint, _item):
        yield url


def test_tile_search_filters_on_the_server_and_never_truncates(crowded, monkeypatch):
    from pystac_client import Client

    from srlib.scene import sources

    client = Client.open(crowded)
    day = sources._day_range(sources.parse_date("20200219"))
    served = sources._server_search(client, collection="sentinel-2-l2a", datetime=day,
                                    mgrs="29RKH", bbox=None)
    everything = sources._server_search(client, collection="sentinel-2-l2a", datetime=day,
                                        mgrs=None, bbox=None)
    assert len(everything) == 31  # 30 other tiles and 29RKH; the server sent the tile only
    assert [it.id for it in served] == ["S2A_29RKH_20200219_0_L2A"]
    assert [it.id for it in search_items(date="20200219", mgrs="29RKH", catalog=crowded)] \
        == ["S2A_29RKH_20200219_0_L2A"]
    monkeypatch.setattr(sources, "MAX_ITEMS", 5)  # a limit hit is an error, not a result
    with pytest.raises(srlib.SourceError, match="more than 5 items"):
        sources._server_search(client, collection="sentinel-2-l2a", datetime=day,
                               mgrs=None, bbox=None)
    monkeypatch.setattr(sources, "MAX_ITEMS", 1000)
    monkeypatch.setattr(sources, "PAGE_SIZE", 7)  # explicit pages: 5 of them, all read
    paged = sources._server_search(client, collection="sentinel-2-l2a", datetime=day,
                                   mgrs=None, bbox=None)
    assert sorted(it.id for it in paged) == sorted(it.id for it in everything)
