"""Campaigns: many jobs at once on a LocalCluster, every stage on the workers."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading

import pytest

pytestmark = pytest.mark.integration

#: Three AOIs inside the sample scene (about 3 km square each), one a little apart
BOXES = [[-11.60, 24.45, -11.575, 24.475], [-11.55, 24.50, -11.525, 24.525],
         [-11.50, 24.60, -11.475, 24.625]]

#: mkstemp of the COG writer's staging file, seen by an audit hook in this process
_opened: list[str] = []
_hook = {"on": False}


def _audit(event: str, args: tuple) -> None:
    if _hook["on"] and event == "tempfile.mkstemp" and str(args[0]).endswith(".tmp.tif"):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def campaign(env, tmp_path_factory):
    """The same three AOIs once in this process (run_dr) and once as a campaign on two
    single-threaded worker processes, plus a request with no scene and one that fails QC."""
    from srlib.ops.campaign import run_campaign
    from srlib.ops.db import MetadataDB
    from srlib.ops.jobs import run_dr

    root = tmp_path_factory.mktemp("campaign")
    one, many = root / "one", root / "many"
    _hook["on"] = True
    _opened.clear()
    try:
        local = [run_dr(date="20200219", aoi=box, out=one, catalog=env["url"]) for box in BOXES]
        opened_by_run_dr = list(_opened)
        _opened.clear()
        db_url = f"sqlite:///{root / 'meta.sqlite'}"
        requests = [*({"date": "20200219", "aoi": box} for box in BOXES),
                    {"date": "20200102", "aoi": BOXES[0]},   # no scene that day
                    {"date": "20200320", "aoi": BOXES[1]}]   # an all-nodata scene: QC fails
        seen = []
        outcomes = run_campaign(requests, workers=2, db=db_url, out=many,
                                catalog=env["url"], publish="s3://products/campaign",
                                on_outcome=seen.append)
        opened_by_campaign = list(_opened)
    finally:
        _hook["on"] = False
    return {"local": local, "outcomes": outcomes, "seen": seen, "one": one, "many": many,
            "db": MetadataDB(db_url), "opened": (opened_by_run_dr, opened_by_campaign)}


def test_a_campaign_on_two_workers_writes_the_bytes_of_one_process(campaign):
    outcomes = campaign["outcomes"]
    assert [o.status for o in outcomes] == ["done", "done", "done", "failed", "failed"], \
        [o.line() for o in outcomes]
    for local, outcome in zip(campaign["local"], outcomes[:3], strict=True):
        mine = campaign["many"] / local.cog.name
        assert outcome.cog == str(mine)
        assert mine.read_bytes() == local.cog.read_bytes(), mine.name
        manifest = json.loads(mine.with_name(mine.stem + ".manifest.json").read_text())
        assert {f["name"] for f in manifest["files"]} >= {mine.name, mine.stem + ".qc.json"}
        assert f"s3://products/campaign/{mine.name}" in outcome.published


def test_every_stage_ran_on_the_workers_both_of_them(campaign):
    by_run_dr, by_campaign = campaign["opened"]
    assert any(str(campaign["one"]) in p for p in by_run_dr)  # the probe sees COG writes
    assert not by_campaign  # no COG was written in this (the client's) process
    here = f":{os.getpid()}"
    workers = {o.worker for o in campaign["outcomes"]}
    assert all(w and not w.endswith(here) for w in workers), workers
    assert len(workers) == 2  # the jobs were spread over both worker processes
    spans = sorted((o.started, o.ended) for o in campaign["outcomes"])
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), spans  # two at once


def test_one_failing_job_leaves_the_others_done_reported_recorded_notified(campaign, env):
    outcomes, db = campaign["outcomes"], campaign["db"]
    no_scene, bad_qc = outcomes[3], outcomes[4]
    assert "NoSceneFound" in no_scene.error and "no sentinel-2-l2a scene" in no_scene.error
    assert "QCFailed" in bad_qc.error
    assert sorted(o.request["date"] for o in campaign["seen"]) == sorted(
        o.request["date"] for o in outcomes)  # each reported as it ended
    with db.engine.connect() as conn:
        runs = conn.exec_driver_sql("SELECT status FROM srlib_runs").fetchall()
    assert sorted(r[0] for r in runs) == ["done", "done", "done", "failed", "failed"]
    texts = " ".join(m["text"] for m in env["received"])
    assert "20200102" in texts and "qc" in texts.lower()


def test_a_rerun_campaign_skips_what_is_done_one_job_in_flight_at_most(campaign, env):
    from srlib.ops.campaign import run_campaign

    before = {p.name: p.stat().st_mtime_ns for p in campaign["many"].glob("*.tif")}
    again = run_campaign([{"date": "20200219", "aoi": box} for box in BOXES], workers=2,
                         max_in_flight=1, out=campaign["many"], catalog=env["url"],
                         publish="s3://products/campaign")
    assert [o.status for o in again] == ["skipped"] * 3
    spans = sorted((o.started, o.ended) for o in again)
    assert all(b[0] >= a[1] for a, b in itertools.pairwise(spans)), spans  # one at a time
    assert {p.name: p.stat().st_mtime_ns for p in campaign["many"].glob("*.tif")} == before


def test_the_command_reads_a_requests_file_and_exits_1_when_one_failed(env, tmp_path):
    requests = tmp_path / "requests.csv"
    requests.write_text("date,min_lon,min_lat,max_lon,max_lat\n"
                        f"20200219,{','.join(map(str, BOXES[2]))}\n"
                        f"20200102,{','.join(map(str, BOXES[2]))}\n")
    proc = subprocess.run([sys.executable, "-m", "srlib.cli", "campaign", "--requests",
                           str(requests), "--workers", "1", "--catalog", env["url"],
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "campaign: done: 1, partial: 0, skipped: 0, failed: 1", proc.stdout
    assert any(ln.startswith("done ") for ln in lines) and \
        any(ln.startswith("failed ") and "NoSceneFound" in ln for ln in lines)
    assert "Traceback" not in proc.stderr
    # the local cluster's start and stop are not the operator's business (dask's INFO)
    assert not [ln for ln in proc.stderr.splitlines() if " INFO distributed." in ln], \
        proc.stderr


@pytest.mark.parametrize(("request_", "fix"), [
    ({"date": "20200219"}, "exactly one of mgrs or aoi"),
    ({"date": "2020-02-31", "mgrs": "29RKH"}, "is not YYYYMMDD"),
    ({"date": "20200219", "aoi": [1, 2, 3]}, "min_lon,min_lat,max_lon,max_lat"),
    ({"date": "20200219", "mgrs": "29RKH", "out": "x"}, "unknown keys ['out']"),
    # checked as dr checks them: each of these used to start the campaign and fail later
    ({"date": "2020021", "mgrs": "29RKH"}, "is not YYYYMMDD"),
    ({"date": "20200219", "mgrs": "ZZZ"}, "request 2: 'ZZZ' is not an MGRS tile id"),
    ({"date": "20200219", "aoi": [-11.4, 24.5, -11.5, 24.6]}, "min >= max"),
    ({"date": "20200219", "aoi": [-11.5, 94.5, -11.4, 94.6]}, "latitudes"),
])
def test_a_bad_request_is_refused_before_any_job_starts(request_, fix, tmp_path):
    from srlib.errors import InputError
    from srlib.ops.campaign import run_campaign

    started = threading.active_count()
    with pytest.raises(InputError, match=fix.replace("[", r"\[").replace("]", r"\]")):
        run_campaign([{"date": "20200219", "mgrs": "29RKH"}, request_], workers=1,
                     out=tmp_path)
    assert threading.active_count() == started  # no cluster was started
    assert not list(tmp_path.iterdir())


def test_the_same_request_twice_in_one_campaign_makes_one_product(env, tmp_path,
                                                                   monkeypatch):
    """Two workers on one product: the second waits for the first's lock, then finds the
    product complete and skips it (a relative --out is the client's, not the workers')."""
    from srlib.ops.campaign import run_campaign

    monkeypatch.chdir(tmp_path)
    box = {"date": "20200219", "aoi": BOXES[1]}
    twice = run_campaign([box, box], workers=2, out="rel", catalog=env["url"])
    assert sorted(o.status for o in twice) == ["done", "skipped"], [o.line() for o in twice]
    assert len({o.worker for o in twice}) == 2
    assert twice[0].cog == twice[1].cog and twice[0].cog.startswith(str(tmp_path / "rel"))
    assert len(list((tmp_path / "rel").glob("*.manifest.json"))) == 1
