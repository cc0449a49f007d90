"""Requests and items a tile search costs, before and after the server-side filter.

Against the loopback STAC API of the tests (stac-fastapi-static), holding the real
29RKH item and 30 items of other tiles on the same day (as ``tests/test_sources.py``):

- before: the previous search, every item of the day (no filter, the API's default page
  size, ``max_items=5000``), filtered on the client by ``grid:code``;
- after: ``srlib.search_items(date=..., mgrs=...)``, filtered on the server.

Usage: python benchmarks/search_requests.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import loopback_sources  # noqa: E402
from tests.test_sources import _crowd  # noqa: E402


class Counter:
    """Counts the HTTP requests pystac-client sends and the items they return."""

    def __init__(self) -> None:
        self.requests = 0
        self.items = 0

    def __enter__(self) -> Counter:
        import requests

        self._send = requests.Session.send
        counter = self

        def send(session, request, **kwargs):
            response = counter._send(session, request, **kwargs)
            if "/search" in request.url:
                counter.requests += 1
                counter.items += len(response.json().get("features", []))
            return response

        requests.Session.send = send
        return self

    def __exit__(self, *exc: object) -> None:
        import requests

        requests.Session.send = self._send


def main() -> None:
    import pystac_client

    import srlib

    with loopback_sources(Path(tempfile.mkdtemp()), _crowd) as (url, _endpoint, _item):
        with Counter() as before:
            items = pystac_client.Client.open(url).search(
                collections=["sentinel-2-l2a"], datetime="2020-02-19", max_items=5000
            ).item_collection()
            found = [it.id for it in items if it.properties.get("grid:code") == "MGRS-29RKH"]
        with Counter() as after:
            ids = [it.id for it in srlib.search_items(date="20200219", mgrs="29RKH",
                                                      catalog=url)]
    assert found == ids == ["S2A_29RKH_20200219_0_L2A"], (found, ids)
    print("| search | search requests | items served | items kept |")
    print("|---|---|---|---|")
    print(f"| before (all of the day, client-side filter) | {before.requests} | "
          f"{before.items} | 1 |")
    print(f"| after (grid:code on the server) | {after.requests} | {after.items} | 1 |")


if __name__ == "__main__":
    main()
