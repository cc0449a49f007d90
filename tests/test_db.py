"""Metadata database on SQLite and on a real PostgreSQL started for the tests."""

from __future__ import annotations

import multiprocessing as mp
import tempfile
from pathlib import Path

import pytest

from srlib.ops.db import MetadataDB

from .servers import postgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg_url():
    with tempfile.TemporaryDirectory() as tmp, postgres(Path(tmp)) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.sqlite'}"
    url = request.getfixturevalue("pg_url")
    db = MetadataDB(url)
    with db.engine.begin() as conn:  # a clean slate per test
        conn.exec_driver_sql("TRUNCATE srlib_requests, srlib_runs RESTART IDENTITY")
    return url


def test_runs_are_recorded(url):
    db = MetadataDB(url)
    run = db.start_run({"date": "20200219", "mgrs": "29RKH"}, model="bicubic",
                       versions={"srlib": "0.1.0"})
    db.finish_run(run, "done", timings={"total_s": 3.5}, qc={"passed": True},
                  outputs=["s3://b/p.tif"])
    row = db.run(run)
    assert row["status"] == "done" and row["qc_passed"] is True
    assert '"total_s": 3.5' in row["timings"] and "s3://b/p.tif" in row["outputs"]


def test_request_lifecycle(url):
    db = MetadataDB(url)
    rid = db.add_request("20200219", (-11.5, 24.5, -11.4, 24.6))
    claimed = db.claim_request("w1")
    assert claimed["id"] == rid and claimed["aoi"] == [-11.5, 24.5, -11.4, 24.6]
    assert db.claim_request("w2") is None  # nothing else pending
    db.fail_request(rid, "QCFailed: values")
    assert db.request(rid)["status"] == "failed"
    assert db.request(rid)["error"] == "QCFailed: values"
    rid2 = db.add_request("20200219", (0, 0, 1, 1))
    db.claim_request("w1")
    db.complete_request(rid2, run_id=7)
    assert db.request(rid2)["status"] == "done" and db.request(rid2)["run_id"] == 7


def _worker(url: str, name: str, queue, barrier) -> None:  # runs in a separate process
    import time

    db = MetadataDB(url)
    barrier.wait()  # all workers start claiming together
    got = []
    while (row := db.claim_request(name)) is not None:
        got.append(row["id"])
        time.sleep(0.01)  # "process" the request, so the workers interleave
    queue.put(got)


def test_concurrent_workers_never_claim_a_request_twice(url):
    db = MetadataDB(url)
    ids = {db.add_request("20200219", (0, 0, 1, 1)) for _ in range(60)}
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_worker, args=(url, f"w{i}", queue, barrier))
             for i in range(4)]
    for p in procs:
        p.start()
    claimed = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    flat = [i for part in claimed for i in part]
    assert sorted(flat) == sorted(ids)  # every request once, none twice
    assert sum(1 for part in claimed if part) >= 2  # the work was shared


def test_bad_url_is_a_clear_error():
    import srlib

    with pytest.raises(srlib.InputError, match="postgresql"):
        MetadataDB("notadb://x")


def test_an_expired_claim_is_reclaimed_and_its_run_abandoned(url):
    import time

    from srlib.ops.db import LeaseLost

    db = MetadataDB(url)
    rid = db.add_request("20200219", (0, 0, 1, 1))
    assert db.claim_request("w1", lease_s=1.0)["id"] == rid
    run = db.start_run({"date": "20200219"}, request_id=rid)
    assert db.request(rid)["run_id"] == run
    assert db.claim_request("w2", lease_s=1.0) is None
    with db.lease(rid, "w1", 0.6):  # renewed every 0.2 s while w1 works
        time.sleep(1.5)
        assert db.claim_request("w2", lease_s=1.0) is None
    time.sleep(1.2)  # w1 stopped renewing (it died): the lease expires
    again = db.claim_request("w2", lease_s=30.0)
    assert again["id"] == rid and again["worker"] == "w2"
    assert db.run(run)["status"] == "abandoned"
    with pytest.raises(LeaseLost, match="no longer claimed by w1"):
        db.complete_request(rid, run, worker="w1", outputs=["s3://b/p.tif"])
    db.complete_request(rid, None, worker="w2", outputs=["s3://b/p.tif"])
    assert db.request(rid)["status"] == "done" and "p.tif" in db.request(rid)["outputs"]


def test_a_database_that_cannot_be_reached_is_one_clear_error(tmp_path):
    from srlib.ops.db import DatabaseError

    with pytest.raises(DatabaseError, match=r"u:\*\*\*@127\.0\.0\.1:9/x\) could not"):
        MetadataDB("postgresql+psycopg://u:secretpw@127.0.0.1:9/x")
    with pytest.raises(Exception) as info:
        MetadataDB("nonsense://x")
    assert "bad database URL" in str(info.value)
