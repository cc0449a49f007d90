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
    # renewed every 0.5 s while w1 works (a second of slack for a loaded machine)
    with db.lease(rid, "w1", 1.5):
        time.sleep(2.0)
        assert db.claim_request("w2", lease_s=1.0) is None
    time.sleep(1.8)  # w1 stopped renewing (it died): the lease expires
    again = db.claim_request("w2", lease_s=30.0)
    assert again["id"] == rid and again["worker"] == "w2"
    assert db.run(run)["status"] == "abandoned"
    with pytest.raises(LeaseLost, match="no longer claimed by w1"):
        db.complete_request(rid, run, worker="w1", outputs=["s3://b/p.tif"])
    db.complete_request(rid, None, worker="w2", outputs=["s3://b/p.tif"])
    assert db.request(rid)["status"] == "done" and "p.tif" in db.request(rid)["outputs"]


def test_a_database_that_cannot_be_reached_is_one_clear_error(tmp_path):
    from srlib.ops.db import DatabaseError

    with pytest.raises(DatabaseError, match=r"//\*\*\*@127\.0\.0\.1:9/x\) could not"):
        MetadataDB("postgresql+psycopg://u:secretpw@127.0.0.1:9/x")
    with pytest.raises(Exception) as info:
        MetadataDB("nonsense://x")
    assert "bad database URL" in str(info.value)


def test_a_transient_failure_backs_off_and_fails_only_when_its_attempts_are_spent(url):
    import time

    db = MetadataDB(url)
    rid = db.add_request("20200219", (0, 0, 1, 1))
    assert db.claim_request("w1", max_attempts=2)["attempts"] == 1
    # a stop signal does not count: back to pending at once
    assert db.release_request(rid, "w1", "Terminated: SIGTERM", count=False,
                              max_attempts=2) == "pending"
    assert db.request(rid)["attempts"] == 0
    assert db.claim_request("w1", max_attempts=2)["attempts"] == 1
    assert db.release_request(rid, "w1", "PublishError: S3 down", backoff_s=2.0,
                              max_attempts=2) == "pending"
    row = db.request(rid)
    assert row["status"] == "pending" and "attempt 1 of 2: PublishError" in row["error"]
    assert db.claim_request("w2", max_attempts=2) is None  # backing off (2 s)
    time.sleep(2.2)
    assert db.claim_request("w2", max_attempts=2)["attempts"] == 2
    assert db.release_request(rid, "w2", "PublishError: S3 down",
                              max_attempts=2) == "failed"
    row = db.request(rid)
    assert row["status"] == "failed" and row["error"].startswith("gave up after 2 attempts")
    assert db.requeue([rid]) == [rid]
    row = db.request(rid)
    assert row["status"] == "pending" and row["attempts"] == 0 and row["error"] is None


def test_a_worker_killed_again_and_again_ends_failed_not_claimed_forever(url):
    import time

    db = MetadataDB(url)
    rid = db.add_request("20200219", (0, 0, 1, 1))
    for n in range(2):
        assert db.claim_request(f"dies{n}", lease_s=0.3, max_attempts=2)["id"] == rid
        time.sleep(0.5)  # the worker was SIGKILLed: its lease expires
    assert db.claim_request("w", lease_s=0.3, max_attempts=2) is None
    row = db.request(rid)
    assert row["status"] == "failed" and "gave up after 2 attempts" in row["error"]


def test_poison_rows_are_quarantined_once_and_claiming_goes_on(url):
    import sqlalchemy as sa

    from srlib.ops.db import requests

    db = MetadataDB(url)
    bad = {"{not json": "not JSON", "[1, 2, 3]": "not four numbers",
           '["a", 0, 1, 1]': "not four numbers", "[0, 0, 0, 1]": "min >= max",
           "[0, 0, 1, 1]": "not a date"}
    with db.engine.begin() as conn:
        for aoi in bad:
            date = "20209999" if aoi == "[0, 0, 1, 1]" else "20200219"
            conn.execute(sa.insert(requests).values(created=sa.func.now(), date=date,
                                                    aoi=aoi, status="pending"))
    good = db.add_request("20200219", (0, 0, 1, 1))
    claimed = db.claim_request("w1")
    assert claimed["id"] == good and claimed["aoi"] == [0, 0, 1, 1]
    invalid = db.requests_in("invalid")
    assert len(invalid) == len(bad)
    for row in invalid:
        assert bad[row["aoi"]] in row["error"], row
    assert db.claim_request("w2") is None  # quarantined rows are never claimed again
    with pytest.raises(Exception, match=r"not JSON|four numbers"):
        db.add_request("20200219", "[oops")  # type: ignore[arg-type]


def test_requeue_by_state_and_what_it_refuses(url):
    import srlib

    db = MetadataDB(url)
    a, b, c = (db.add_request("20200219", (0, 0, 1, 1)) for _ in range(3))
    db.claim_request("w")
    db.fail_request(a, "QCFailed: values", worker="w")
    db.claim_request("w")  # b stays claimed
    assert db.requeue(states=("failed",)) == [a]
    with pytest.raises(srlib.InputError, match="claimed by a worker"):
        db.requeue([b])
    with pytest.raises(srlib.InputError, match="do not exist"):
        db.requeue([999])
    with pytest.raises(srlib.InputError, match="cannot requeue"):
        db.requeue(states=("claimed",))
    with pytest.raises(srlib.InputError, match="name the requests"):
        db.requeue()
    assert {r["id"] for r in db.requests_in("pending")} == {a, c}


def test_leases_run_on_the_database_clock_not_the_workers(pg_url, tmp_path):
    """A worker whose clock runs 700 s ahead (libfaketime) cannot take over a live lease."""
    import shutil
    import subprocess
    import sys

    if shutil.which("faketime") is None:
        pytest.fail("faketime is missing: apt-get install faketime (scripts/test-services)")
    db = MetadataDB(pg_url)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE srlib_requests, srlib_runs RESTART IDENTITY")
    rid = db.add_request("20200219", (0, 0, 1, 1))
    assert db.claim_request("honest", lease_s=600)["id"] == rid
    code = ("import sys; from srlib.ops.db import MetadataDB; import datetime as dt; "
            "print(dt.datetime.now().year, MetadataDB(sys.argv[1]).claim_request('ahead', "
            "lease_s=600))")
    out = subprocess.run(["faketime", "-f", "+700s", sys.executable, "-c", code, pg_url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "None"  # the live lease held
    assert db.request(rid)["worker"] == "honest"


def test_a_database_restart_mid_run_is_survived_by_retrying(pg_url):
    import threading

    from .servers import restart_postgres

    db = MetadataDB(pg_url, retry_s=60)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE srlib_requests, srlib_runs RESTART IDENTITY")
    rid = db.add_request("20200219", (0, 0, 1, 1))
    db.claim_request("w")
    run = db.start_run({"date": "20200219"}, request_id=rid)
    restarter = threading.Thread(target=restart_postgres, args=(pg_url,),
                                 kwargs={"down_s": 2.0})
    restarter.start()
    import time

    time.sleep(0.5)  # the server is going down: these writes wait for it and succeed
    db.finish_run(run, "done", outputs=["s3://b/p.tif"])
    db.complete_request(rid, run, worker="w", outputs=["s3://b/p.tif"])
    restarter.join()
    assert db.request(rid)["status"] == "done" and db.run(run)["status"] == "done"
