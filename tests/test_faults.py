"""The fault-injection matrix: every stage of ``pdr`` x every fault class (tests/README.md).

Faults are injected where they really happen (:mod:`srlib.failpoints`: the process
signals itself, a write fails with ENOSPC, a connection is reset, a stage hangs), on the
real loopback servers (moto S3, a STAC API, SQLite/PostgreSQL). For every cell: the
request is never lost (``pending``, or ``claimed`` until its lease expires after a
SIGKILL), nothing is half-published (no manifest at the prefix unless its product is
whole; no staging objects left once a rerun completed), one clear line was printed, and
a rerun completes every request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srlib.failpoints import STAGES
from srlib.ops.db import MetadataDB
from srlib.ops.publish import verify_published

from .test_jobs import _keys

pytestmark = pytest.mark.integration

SRLIB = [sys.executable, "-m", "srlib.cli"]
#: The stages a pdr job reaches on the way to a delivered product (notify: on failure)
JOB_STAGES = [s for s in STAGES if s not in ("notify", "s3")]
#: Fault -> what the worker process does
SIGNAL_FAULTS = ("sigterm", "sigkill", "hang")
RAISED_FAULTS = ("enospc", "network")


def _box(n: int) -> list[float]:
    """A distinct AOI inside the sample scene for cell ``n`` (about 1.2 km square: the
    faults need a whole job, not a large one)."""
    i, j = n % 8, n // 8
    return [-11.60 + 0.03 * i, 24.45 + 0.03 * j, -11.588 + 0.03 * i, 24.462 + 0.03 * j]


def _cells() -> list[tuple[str, str]]:
    cells = [(stage, fault) for fault in (*SIGNAL_FAULTS, *RAISED_FAULTS)
             for stage in JOB_STAGES]
    # the failure notification itself failing, behind a failing stage
    return [*cells, ("notify", "network"), ("notify", "enospc")]


def _env(fault: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("SRLIB_FAILPOINTS", None)
    if fault:
        env["SRLIB_FAILPOINTS"] = fault
    return env


#: Which hit of a stage the fault fires on: the database's 5th is the completion write,
#: after the product was published (the "published but not recorded" case)
NTH = {"database": 5}


def _armed(stage: str, fault: str) -> str:
    if stage == "notify":  # notification of a failure of the publish stage
        return f"publish={fault},notify={fault}"
    nth = NTH.get(stage)
    return f"{stage}={fault}" + (f"@{nth}" if nth else "")


#: Cells run at once, each slot with its own database (its cells one after another)
SLOTS = 3


def _hang_then_sigterm(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """Run a worker until it hangs at its failpoint, SIGTERM it; return (rc, stderr, the
    seconds from the signal to its exit)."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    for line in proc.stderr:  # until the stage hangs
        seen.append(line)
        if "srlib failpoint: hanging at" in line:
            break
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rest = proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        rest = proc.communicate()[1] + "\n(still running 60 s after SIGTERM)"
    return proc.returncode, "".join(seen) + rest, time.monotonic() - t0


def _run_slot(db: MetadataDB, cells: list[tuple[int, str, str]], common: list[str],
              results: dict) -> None:
    for n, stage, fault in cells:
        rid = db.add_request("20200219", _box(n))  # the only claimable request
        t0 = time.monotonic()
        args = [*SRLIB, "pdr", *common, "--server", f"{stage}-{fault}"]
        env = _env(_armed(stage, fault))
        if fault == "hang":
            rc, stderr, stop_s = _hang_then_sigterm(args, env)
        else:
            proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            rc, stderr, stop_s = proc.returncode, proc.stderr, None
        results[(stage, fault)] = {"rid": rid, "rc": rc, "stderr": stderr, "stop_s": stop_s,
                                   "row": db.request(rid), "seconds": time.monotonic() - t0,
                                   "db": db}
        with db.engine.begin() as conn:  # kept from the next cell until the rerun
            conn.exec_driver_sql("UPDATE srlib_requests SET status='hold-' || status "
                                 "WHERE id=?", (rid,))


@pytest.fixture(scope="module")
def matrix(env, tmp_path_factory):
    """Run every cell once, each a pdr worker with one fault; yield what they did."""
    import threading

    root = tmp_path_factory.mktemp("matrix")
    out, prefix = root / "out", "s3://products/matrix"
    dbs = [MetadataDB(f"sqlite:///{root / f'meta{k}.sqlite'}") for k in range(SLOTS)]
    commons = [["--db", str(db.engine.url), "--once", "--catalog", env["url"],
                "--out", str(out), "--publish", prefix, "--backoff", "600", "--lease", "4"]
               for db in dbs]
    cells = [(n, stage, fault) for n, (stage, fault) in enumerate(_cells())]
    results: dict = {}
    slots = [threading.Thread(target=_run_slot, args=(dbs[k], cells[k::SLOTS], commons[k],
                                                      results)) for k in range(SLOTS)]
    for slot in slots:
        slot.start()
    for slot in slots:
        slot.join()
    assert len(results) == len(cells)
    yield {"dbs": dbs, "results": results, "commons": commons, "prefix": prefix,
           "keys": _keys(env["client"], "matrix/")}


@pytest.mark.parametrize(("stage", "fault"), _cells())
def test_a_fault_at_any_stage_loses_nothing_and_says_one_line(matrix, env, stage, fault):
    cell = matrix["results"][(stage, fault)]
    row = cell["row"]
    assert row["status"] in ("pending", "claimed"), (row, cell["stderr"])
    if fault == "sigkill":
        assert cell["rc"] == -signal.SIGKILL
        assert row["status"] == "claimed"  # reclaimed when its lease expires
    else:
        assert row["status"] == "pending" and row["error"], row
        lines = [ln for ln in cell["stderr"].splitlines() if "srlib pdr failed" in ln]
        assert "Traceback" not in cell["stderr"]
        if fault in ("sigterm", "hang"):  # hang: stuck in the stage, then SIGTERM
            assert cell["rc"] == 143 and len(lines) == 1, cell["stderr"]
            assert "SIGTERM" in lines[0] and row["attempts"] == 0  # not counted
            if fault == "hang":
                assert cell["stop_s"] < 15, cell  # honoured within seconds
        else:
            assert cell["rc"] == 75, cell["stderr"]  # requests wait for a retry
            assert row["attempts"] == 1
            errors = [ln for ln in cell["stderr"].splitlines()
                      if f"request {cell['rid']}:" in ln]
            assert len(errors) == 1 and "put back to pending" in errors[0], cell["stderr"]
    assert cell["seconds"] < 120
    # nothing half-published: a manifest at the prefix means a whole product
    for key in matrix["keys"]:
        if key.endswith(".manifest.json") and "/.incoming/" not in key:
            assert _whole(env["client"], matrix["prefix"], key), key


def _whole(client, prefix: str, key: str) -> bool:
    body = json.loads(client.get_object(Bucket="products", Key=key)["Body"].read())
    name = key.rsplit("/", 1)[1].removesuffix(".manifest.json") + ".tif"
    return verify_published(prefix, name, body["identity"])[1] == "complete"


def test_a_rerun_delivers_every_request_of_the_matrix(matrix, env):
    prefix = matrix["prefix"]
    for db in matrix["dbs"]:
        with db.engine.begin() as conn:  # back, as if the 600 s backoff had passed
            conn.exec_driver_sql("UPDATE srlib_requests SET not_before=NULL, "
                                 "status=substr(status, 6) WHERE status LIKE 'hold-%'")
    time.sleep(4.5)  # the SIGKILLed workers' leases expire
    rescuers = [subprocess.Popen([*SRLIB, "pdr", *common, "--server", f"rescuer{n}"],
                                 env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for n, common in enumerate(matrix["commons"])]
    for proc in rescuers:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        # no library warning in an operator's log (rasterio's warp's leaked past a
        # per-read filter undone by reads in other threads)
        assert "Warning:" not in err, err
    rows = [row for db in matrix["dbs"] for row in db.requests_in()]
    assert [r["status"] for r in rows] == ["done"] * len(rows), [
        (r["id"], r["status"], r["error"]) for r in rows if r["status"] != "done"]
    keys = _keys(env["client"], "matrix/")
    assert not [k for k in keys if "/.incoming/" in k]  # no staging leftovers
    manifests = [k for k in keys if k.endswith(".manifest.json")]
    assert len(manifests) == len(rows)
    for row in rows:
        manifest = next(u for u in json.loads(row["outputs"]) if u.endswith(".manifest.json"))
        assert _whole(env["client"], prefix, manifest.removeprefix("s3://products/"))
    assert len(rows) == len(matrix["results"])


# ------------------------------------------------------- a stop at any request of a publish
def _s3_requests(args: list[str]) -> list[str]:
    """Run ``args`` with the ``s3`` failpoint logging; return each S3 request, in order."""
    proc = subprocess.run(args, env=_env("s3=log"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [ln.split(" ", 4)[4] for ln in proc.stderr.splitlines()
            if ln.startswith("srlib failpoint: s3 #")]


def _stops(requests: list[str]) -> dict[int, str]:
    """The request numbers to stop at, one of each kind a publish sends: reading the
    published manifest, listing staging, staging an object (an upload thread), checking
    it, copying it to its final key, checking that, deleting staging objects (the first,
    the last), putting the manifest and checking it."""
    def first(pred):
        return next(n for n, r in enumerate(requests, 1) if pred(r))

    def last(pred):
        return max(n for n, r in enumerate(requests, 1) if pred(r))

    staging = "/.incoming/"
    stops = {
        first(lambda r: r.startswith("GET") and r.endswith(".manifest.json")): "read manifest",
        first(lambda r: r.startswith("DELETE") and r.endswith(".manifest.json")):
            "remove manifest",
        first(lambda r: r.startswith("GET") and r.endswith("/products")): "list staging",
        first(lambda r: r.startswith("PUT") and staging in r): "stage",
        first(lambda r: r.startswith("HEAD") and staging in r): "check staged",
        first(lambda r: r.startswith("PUT") and staging not in r
              and not r.endswith(".manifest.json")): "copy",
        last(lambda r: r.startswith("PUT") and staging not in r
             and not r.endswith(".manifest.json")) + 1: "check the last copy",
        first(lambda r: r.startswith("DELETE") and staging in r): "delete staging",
        last(lambda r: r.startswith("DELETE") and staging in r): "delete the last staging",
        first(lambda r: r.startswith("PUT") and r.endswith(".manifest.json")): "put manifest",
        last(lambda r: r.startswith("HEAD") and r.endswith(".manifest.json")):
            "check manifest",
    }
    assert len(stops) == 11, (stops, requests)  # each kind found, none the same request
    return dict(sorted(stops.items()))


def test_a_stop_at_any_kind_of_s3_request_leaves_nothing_half_published(env, tmp_path):
    """``dr`` stopped (SIGTERM, then SIGKILL at the last) at each kind of S3 request of
    its publish, one run after another: each says one line; a manifest at the prefix
    always means a whole product; the last run delivers it with no staging object left."""
    def args(prefix: str) -> list[str]:
        return [*SRLIB, "dr", "--date", "20200219", "--aoi", *map(str, _box(40)), "--catalog",
                env["url"], "--out", str(tmp_path / prefix), "--publish",
                f"s3://products/{prefix}"]

    stops = _stops(_s3_requests(args("stops-log")))  # a whole run, to number its requests
    last = max(stops)
    for n, kind in stops.items():
        fault = "sigkill" if n == last else "sigterm"
        proc = subprocess.run(args("stops"), env=_env(f"s3={fault}@{n}"), capture_output=True,
                              text=True, timeout=300)
        if fault == "sigkill":
            assert proc.returncode == -signal.SIGKILL, (kind, proc.stderr)
        else:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("srlib dr failed")]
            assert proc.returncode == 143 and len(lines) == 1, (kind, proc.stderr)
            assert "SIGTERM" in lines[0] and "Traceback" not in proc.stderr, (kind, lines)
        for key in _keys(env["client"], "stops/"):
            if key.endswith(".manifest.json") and "/.incoming/" not in key:
                assert _whole(env["client"], "s3://products/stops", key), (kind, key)
    proc = subprocess.run(args("stops"), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    keys = _keys(env["client"], "stops/")
    assert not [k for k in keys if "/.incoming/" in k], keys  # no staging leftovers
    (manifest,) = [k for k in keys if k.endswith(".manifest.json")]
    assert _whole(env["client"], "s3://products/stops", manifest)
    done = {k.split("/", 1)[1] for k in _keys(env["client"], "stops-log/")}
    assert {k.split("/", 1)[1] for k in keys} == done  # the same files as the whole run


# ------------------------------------------------------------ a server that never answers
def _silent_server():
    """A TCP server on loopback that accepts connections and never answers."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)  # keep it open, say nothing

    threading.Thread(target=accept, daemon=True).start()
    return server, held


@pytest.fixture(scope="module")
def hanging(tmp_path_factory):
    """A STAC API whose item's assets live on a server that accepts and never answers."""
    from .servers import CREDENTIALS, loopback_sources

    server, held = _silent_server()
    port = server.getsockname()[1]

    def extra(_endpoint, item):
        copy = json.loads(json.dumps(item))
        copy["id"] = "S2A_29RKH_20200401_0_L2A"
        copy["properties"]["datetime"] = "2020-04-01T11:34:25.405000Z"
        for asset in copy["assets"].values():
            name = asset["href"].rsplit("/", 1)[1]
            asset["href"] = f"http://127.0.0.1:{port}/{name}"
        return [copy]

    work = tmp_path_factory.mktemp("hang")
    env = {**_env(), **CREDENTIALS}
    with loopback_sources(work, extra) as (url, endpoint, _item):
        env.update(AWS_ENDPOINT_URL_S3=f"http://{endpoint}", AWS_VIRTUAL_HOSTING="FALSE")
        yield url, env, work
    server.close()
    for conn in held:
        conn.close()


def _dr_hanging(url, env, out):
    return [*SRLIB, "dr", "--date", "20200401", "--aoi", "-11.5", "24.5", "-11.45", "24.55",
            "--catalog", url, "--out", str(out)]


def test_an_asset_server_that_never_answers_fails_the_read_within_its_timeout(hanging):
    url, env, work = hanging
    t0 = time.monotonic()
    proc = subprocess.run(_dr_hanging(url, env, work / "a"), capture_output=True, text=True,
                          env={**env, "SRLIB_NETWORK_TIMEOUT": "1"}, timeout=300)
    took = time.monotonic() - t0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("srlib dr failed:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "cannot read http://127.0.0.1" in lines[0] and "Traceback" not in proc.stderr
    assert took < 120, took  # GDAL's retries of a 2 s timeout, not forever


def test_sigterm_ends_a_job_stuck_in_a_read_within_seconds(hanging):
    url, env, work = hanging
    proc = subprocess.Popen(_dr_hanging(url, env, work / "b"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "SRLIB_NETWORK_TIMEOUT": "600"})
    time.sleep(12)  # loaded, and stuck reading the first asset
    assert proc.poll() is None
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 15, err
    lines = [ln for ln in err.splitlines() if "srlib dr failed" in ln or "srlib failed" in ln]
    assert proc.returncode == 143 and len(lines) == 1 and "SIGTERM" in lines[0], err
