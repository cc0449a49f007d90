"""Done means delivered: jobs on real loopback servers (moto S3, STAC API, PostgreSQL).

Faults are injected into the real path: files lost or truncated on disk, S3 going away
in the middle of a publish, a worker killed by SIGKILL, concurrent workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from click.testing import CliRunner

import srlib
from srlib.cli import main
from srlib.ops.db import MetadataDB
from srlib.ops.jobs import run_dr
from srlib.ops.publish import PublishError, verify_published

from .servers import postgres
from .test_jobs import AOI, _keys

pytestmark = pytest.mark.integration

SRLIB = [sys.executable, "-m", "srlib.cli"]


def _dr(env, out, **kw):
    return run_dr(date="20200219", aoi=[float(v) for v in AOI], catalog=env["url"], out=out,
                  **kw)


def test_a_product_that_lost_a_file_or_fails_qc_is_redone_never_skipped(env, tmp_path):
    first = _dr(env, tmp_path)
    assert first.status == "done" and first.manifest.exists()
    again = _dr(env, tmp_path)
    assert again.status == "skipped"
    ndvi = next(p for p in first.files if p.name.endswith("_NDVI.tif"))
    ndvi.unlink()  # a lost derivative: the product is not whole
    redo = _dr(env, tmp_path)
    assert redo.status == "done" and ndvi.exists()
    with first.cog.open("r+b") as fh:  # a truncated COG (and a stale manifest)
        fh.truncate(first.cog.stat().st_size // 2)
    assert _dr(env, tmp_path).status == "done"
    assert srlib.check_quality(first.cog).passed
    manifest = json.loads(first.manifest.read_text())
    assert {f["name"] for f in manifest["files"]} == {p.name for p in first.files}


def test_another_product_at_the_same_name_is_refused_not_skipped(env, tmp_path):
    _dr(env, tmp_path, name_template="fixed_{aoi}.tif")
    with pytest.raises(srlib.InputError, match=r"another product.*version"):
        _dr(env, tmp_path, name_template="fixed_{aoi}.tif", version=2)


@pytest.mark.parametrize("phase", ["staging", "moving"])
def test_s3_going_away_mid_derivatives_leaves_no_manifest_and_the_rerun_completes(
        env, tmp_path, monkeypatch, phase):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    prefix = f"outage-{phase}"
    down = {"on": True}
    operations = {"staging": ("PutObject", "UploadPart", "CreateMultipartUpload"),
                  "moving": ("CopyObject", "UploadPartCopy")}[phase]

    def outage(request, **_):  # the endpoint stops answering once NDVI's turn comes
        if down["on"] and "_NDVI.tif" in request.url:
            raise EndpointConnectionError(endpoint_url=request.url)

    boto3.setup_default_session()
    for op in operations:
        boto3.DEFAULT_SESSION.events.register(f"before-send.s3.{op}", outage)
    try:
        with pytest.raises(PublishError, match="rerun"):
            _dr(env, tmp_path, publish=f"s3://products/{prefix}")
    finally:
        down["on"] = False
        boto3.DEFAULT_SESSION = None
    keys = _keys(env["client"], f"{prefix}/")
    assert not any(k.endswith(".manifest.json") for k in keys)
    assert not any("/.incoming/" in k for k in keys)  # staging cleaned up
    if phase == "moving":
        assert any(k.endswith("_v1.tif") for k in keys)  # the COG was already live
    done = _dr(env, tmp_path, publish=f"s3://products/{prefix}")
    assert done.status == "done"  # not "skipped" because the COG key existed
    name = done.cog.name
    identity = json.loads(done.manifest.read_text())["identity"]
    manifest, why = verify_published(f"s3://products/{prefix}", name, identity)
    assert why == "complete" and len(manifest["files"]) == 9
    assert len(_keys(env["client"], f"{prefix}/")) == 10
    assert _dr(env, tmp_path, publish=f"s3://products/{prefix}").status == "skipped"
    # the stored bytes, not metadata the client sent, are what counts
    key = f"{prefix}/{done.cog.stem}_RGB.tif"
    env["client"].put_object(Bucket="products", Key=key, Body=b"not the product")
    assert verify_published(f"s3://products/{prefix}", name, identity)[0] is None
    assert _dr(env, tmp_path, publish=f"s3://products/{prefix}").status == "done"


@pytest.fixture(scope="module")
def pg_url():
    with tempfile.TemporaryDirectory() as tmp, postgres(Path(tmp)) as url:
        yield url


def _worker_env(env):
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _fresh_requests(pg_url, lon, lat, nx, ny, size=0.03):
    """Empty the test database, then queue an nx x ny grid of AOIs (``size`` deg, 0.04
    apart)."""
    db = MetadataDB(pg_url)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE srlib_requests, srlib_runs RESTART IDENTITY")
    boxes = [[lon + 0.04 * i, lat + 0.04 * j, lon + size + 0.04 * i, lat + size + 0.04 * j]
             for i in range(nx) for j in range(ny)]
    return db, [db.add_request("20200219", box) for box in boxes]


def test_twenty_aoi_requests_on_four_concurrent_workers_give_twenty_products(
        env, tmp_path, pg_url):
    db, ids = _fresh_requests(pg_url, -11.60, 24.50, 5, 4, size=0.015)  # many, not large
    workers = [subprocess.Popen(
        [*SRLIB, "pdr", "--db", pg_url, "--once", "--server", f"w{n}", "--catalog", env["url"],
         "--out", str(tmp_path / "out"), "--publish", "s3://products/many"],
        env=_worker_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n in range(4)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    rows = [db.request(i) for i in ids]
    assert [r["status"] for r in rows] == ["done"] * 20
    products = {json.loads(r["outputs"])[0] for r in rows}
    assert len(products) == 20  # one product per request, none lost or shared
    assert len({r["worker"] for r in rows}) > 1  # the work was shared
    for row in rows:
        outputs = json.loads(row["outputs"])
        manifest = next(u for u in outputs if u.endswith(".manifest.json"))
        body = json.loads(env["client"].get_object(
            Bucket="products", Key=manifest.removeprefix("s3://products/"))["Body"].read())
        assert body["qc"]["passed"] and len(body["files"]) == len(outputs) - 1
        assert db.run(row["run_id"])["status"] == "done"
    assert len([k for k in _keys(env["client"], "many/") if k.endswith(".manifest.json")]) == 20


def test_a_worker_killed_mid_request_is_reclaimed_after_its_lease(env, tmp_path):
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    db = MetadataDB(url)
    rid = db.add_request("20200219", [float(v) for v in AOI])
    args = ["pdr", "--db", url, "--once", "--lease", "3", "--catalog", env["url"],
            "--out", str(tmp_path / "out")]
    victim = subprocess.Popen([*SRLIB, *args, "--server", "victim"], env=_worker_env(env),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while db.request(rid)["run_id"] is None:  # claimed and its run started
        assert time.time() < deadline and victim.poll() is None
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    dead_run = db.request(rid)["run_id"]
    assert db.request(rid)["status"] == "claimed"
    assert db.claim_request("early", lease_s=3) is None  # its lease still holds
    time.sleep(3.5)
    late = subprocess.run([*SRLIB, *args, "--server", "rescuer"], env=_worker_env(env),
                          capture_output=True, text=True, timeout=300)
    assert late.returncode == 0, late.stderr
    row = db.request(rid)
    assert row["status"] == "done" and row["worker"] == "rescuer"
    assert db.run(dead_run)["status"] == "abandoned"
    assert db.run(row["run_id"])["status"] == "done"


def test_ctrl_c_puts_the_request_back_at_once_and_a_rerun_delivers_it(env, tmp_path):
    """An operator's Ctrl-C (SIGINT) is a stop like SLURM's SIGTERM: one line, exit 130,
    the request back to ``pending`` at once (not held until its lease expires, no attempt
    counted) and the run recorded ``interrupted``."""
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    db = MetadataDB(url)
    rid = db.add_request("20200219", [float(v) for v in AOI])
    args = ["pdr", "--db", url, "--once", "--catalog", env["url"], "--out",
            str(tmp_path / "out")]
    proc = subprocess.Popen([*SRLIB, *args, "--server", "operator"], env=_worker_env(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while db.request(rid)["run_id"] is None:  # claimed and its run started
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.startswith("srlib pdr failed")]
    assert proc.returncode == 130 and len(lines) == 1 and "SIGINT" in lines[0], err
    assert "Traceback" not in err
    row = db.request(rid)
    assert row["status"] == "pending" and row["attempts"] == 0, row
    assert db.run(row["run_id"])["status"] == "interrupted"
    rerun = subprocess.run([*SRLIB, *args, "--server", "rerun"], env=_worker_env(env),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert db.request(rid)["status"] == "done"


SECRETS = {"AWS_ACCESS_KEY_ID": "AKIASRLIBTESTKEY0001",
           "AWS_SECRET_ACCESS_KEY": "srlibSecretValue/XYZ123"}


def test_no_secret_reaches_the_terminal_at_any_verbosity(env, tmp_path, monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    catalog = env["url"].replace("http://", "http://operator:hunter2pass@")
    outputs = []
    for verbose in ([], ["-v"]):
        for date in ("20200219", "20200320", "20200102"):  # good, fails QC, no scene
            result = CliRunner().invoke(main, [
                *verbose, "dr", "--date", date, "--aoi", *AOI, "--catalog", catalog,
                "--out", str(tmp_path / date), "--publish", "s3://products/secret",
                "--db", f"sqlite:///{tmp_path / 'm.sqlite'}", "--force"])
            outputs.append(result.output)
    text = "\n".join(outputs)
    assert "published: s3://products/secret/" in text  # the jobs did run
    assert "srlib dr failed: quality checks failed" in text
    assert "srlib dr failed: no sentinel-2-l2a scene" in text
    for secret in [*SECRETS.values(), "hunter2pass"]:
        assert secret not in text


def _one_line(result, command):
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    failure = [ln for ln in lines if ln.startswith(f"srlib {command} failed:")]
    assert result.exit_code == 1 and len(failure) == 1, result.output
    assert "Traceback" not in result.output
    return failure[0]


def test_every_cli_failure_is_one_clear_line(env, tmp_path, monkeypatch):
    from srlib.scene import sources

    monkeypatch.setitem(sources.STAC_RETRY, "backoff_factor", 0.01)  # retried, quickly
    runner = CliRunner()
    good = _dr(env, tmp_path / "good")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(good.cog.read_bytes()[: good.cog.stat().st_size // 3])
    text = tmp_path / "notes.tif"
    text.write_text("hello")
    timings = tmp_path / "t.json"
    timings.write_text("{not json")
    incomplete = tmp_path / "incomplete.zarr"
    scene = srlib.sample_scene().isel(y=slice(0, 60), x=slice(0, 60))
    store = srlib.to_zarr(srlib.super_resolve(scene), tmp_path / "whole.zarr")
    import shutil

    shutil.copytree(store, incomplete)
    attrs = json.loads((incomplete / ".zattrs").read_text())
    (incomplete / ".zattrs").write_text(json.dumps({**attrs, "srlib_complete": False}))
    (tmp_path / "empty.zarr").mkdir()
    corrupt = tmp_path / "corrupt.zarr"
    shutil.copytree(store, corrupt)
    (corrupt / ".zattrs").write_text("{torn")
    dr = ["dr", "--date", "20200219", "--aoi", *AOI, "--catalog", env["url"],
          "--out", str(tmp_path / "o")]
    cases = {
        "dr --model foo": ("dr", [*dr, "--model", "foo"]),
        "dr swin2sr without checkpoint": ("dr", [*dr, "--model", "swin2sr"]),
        "dr bad --db": ("dr", [*dr, "--db", "nonsense://x"]),
        "dr dead --db": ("dr", [*dr, "--db", "postgresql+psycopg://u:pw@127.0.0.1:9/x"]),
        "dr --device gpu7": ("dr", [*dr, "--device", "gpu7"]),
        "dr --name {foo}": ("dr", [*dr, "--name", "{foo}"]),
        "dr --name ../x": ("dr", [*dr, "--name", "../x/{mgrs}_{aoi}.tif"]),
        "dr bad --publish": ("dr", [*dr, "--publish", "products/x"]),
        "qc truncated COG": ("qc", ["qc", str(truncated)]),
        "qc text file": ("qc", ["qc", str(text)]),
        "qc bad timings": ("qc", ["qc", str(good.cog), "--timings", str(timings)]),
        "cog incomplete store": ("cog", ["cog", str(incomplete), str(tmp_path / "a.tif")]),
        "cog empty store": ("cog", ["cog", str(tmp_path / "empty.zarr"), str(tmp_path / "b.tif")]),
        "cog corrupt store": ("cog", ["cog", str(corrupt), str(tmp_path / "c.tif")]),
        "pdr bad --db": ("pdr", ["pdr", "--db", "nonsense://x", "--once"]),
        "pdr dead --db": ("pdr", ["pdr", "--db", "postgresql+psycopg://u:pw@127.0.0.1:9/x",
                                  "--once"]),
        "pdr --model foo": ("pdr", ["pdr", "--db", f"sqlite:///{tmp_path / 'q.sqlite'}",
                                    "--model", "foo", "--once"]),
    }
    dead = [*dr[:dr.index("--catalog")], "--catalog", "http://127.0.0.1:9",
            *dr[dr.index("--catalog") + 2:]]
    cases["dr dead --catalog"] = ("dr", dead)
    env["received"].clear()
    for name, (command, args) in cases.items():
        result = runner.invoke(main, args)
        line = _one_line(result, command)
        assert ":pw@" not in line, name
        assert "Retrying" not in result.output, name  # urllib3's line per retry: not shown
    told = [m["text"] for m in env["received"]]
    assert sum("step 'database' failed" in t for t in told) == 4  # dead/bad DB: notified
    assert not any(":pw@" in t for t in told)
    db = MetadataDB(f"sqlite:///{tmp_path / 'q.sqlite'}")
    rid = db.add_request("20200219", [float(v) for v in AOI])
    _one_line(runner.invoke(main, ["pdr", "--db", f"sqlite:///{tmp_path / 'q.sqlite'}",
                                   "--device", "gpu7", "--once"]), "pdr")
    assert db.request(rid)["status"] == "pending"  # nothing claimed with a bad config
    assert len(cases) == 18


def test_publishing_to_a_directory_is_staged_verified_and_skipped_only_when_whole(
        env, tmp_path):
    shared = tmp_path / "shared" / "sr"
    done = _dr(env, tmp_path / "work", publish=str(shared))
    assert done.status == "done"
    names = sorted(p.name for p in shared.iterdir())
    assert names == sorted([*(p.name for p in done.files), done.manifest.name])
    assert _dr(env, tmp_path / "work", publish=str(shared)).status == "skipped"
    rgb = next(shared.glob("*_RGB.tif"))
    rgb.write_bytes(rgb.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    assert _dr(env, tmp_path / "work", publish=str(shared)).status == "done"  # republished
    assert _dr(env, tmp_path / "work", publish=str(shared)).status == "skipped"
    with pytest.raises(srlib.InputError, match="neither s3://bucket/prefix nor an absolute"):
        _dr(env, tmp_path / "work", publish="relative/dir")


def test_a_card_names_the_model_in_the_product_its_item_qc_and_database(env, tmp_path):
    from srlib.models.card import shipped_cards

    card = json.loads(shipped_cards()["s2-swin2sr-demo"].read_text())
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    db = MetadataDB(url)
    rid = db.add_request("20200219", [float(v) for v in AOI])
    result = CliRunner().invoke(main, [
        "pdr", "--db", url, "--once", "--catalog", env["url"], "--out", str(tmp_path),
        "--model", "s2-swin2sr-demo", "--publish", "s3://products/card"])
    assert result.exit_code == 0, result.output
    run = db.run(db.request(rid)["run_id"])
    assert run["model"] == f"s2-swin2sr-demo@1 sha256:{card['sha256']}"
    (cog,) = tmp_path.glob("S2x10_*_v1.tif")
    item = json.loads(cog.with_name(cog.stem + ".stac.json").read_text())
    qc = json.loads(cog.with_suffix(".qc.json").read_text())
    manifest = json.loads(cog.with_name(cog.stem + ".manifest.json").read_text())
    for model in (item["properties"]["srlib:model"], qc["model"], manifest["model"]):
        assert (model["name"], model["version"], model["checkpoint_sha256"]) == \
            ("s2-swin2sr-demo", "1", card["sha256"])
    checks = {c["name"]: c for c in qc["checks"]}
    assert qc["passed"] and checks["consistency"]["status"] == "pass"


def test_the_zarr_intermediate_is_kept_only_when_asked_or_for_aois(env, tmp_path):
    kept = _dr(env, tmp_path / "a")
    assert kept.cog.with_suffix(".zarr").is_dir()  # an AOI's derivatives come from it
    args = ["dr", "--date", "20200219", "--aoi", *AOI, "--catalog", env["url"],
            "--out", str(tmp_path / "b"), "--no-keep-zarr"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (cog,) = (tmp_path / "b").glob("S2x10_*_v1.tif")
    assert not cog.with_suffix(".zarr").exists()
    assert CliRunner().invoke(main, args).stdout.startswith("skipped")  # still complete


def test_values_that_can_never_work_are_refused_when_parsed(env, tmp_path, monkeypatch):
    """Each is one line naming the problem and the fix, exit 1 or 2 (usage), no traceback,
    and nothing is claimed, written or published."""
    runner = CliRunner()
    db_url = f"sqlite:///{tmp_path / 'q.sqlite'}"
    db = MetadataDB(db_url)
    rid = db.add_request("20200219", [float(v) for v in AOI])
    dr = ["dr", "--date", "20200219", "--aoi", *AOI, "--catalog", env["url"],
          "--out", str(tmp_path / "o")]
    store = srlib.to_zarr(srlib.super_resolve(
        srlib.sample_scene().isel(y=slice(0, 40), x=slice(0, 40))), tmp_path / "s.zarr")
    usage = {  # click refuses them while parsing (exit 2)
        "--version -3": [*dr, "--version", "-3"],
        "--version 0": [*dr, "--version", "0"],
        "--s2-id -1": [*dr, "--s2-id", "-1"],
        "pdr --poll-interval -1": ["pdr", "--db", db_url, "--poll-interval", "-1"],
        "pdr --lease 0": ["pdr", "--db", db_url, "--lease", "0"],
        "pdr --max-attempts 0": ["pdr", "--db", db_url, "--max-attempts", "0"],
        "pdr --backoff -5": ["pdr", "--db", db_url, "--backoff", "-5"],
        "requeue --state claimed": ["requeue", "--db", db_url, "--state", "claimed"],
        "--out is a file": [*dr[:-1], str(tmp_path / "q.sqlite")],
    }
    for name, args in usage.items():
        result = runner.invoke(main, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (name, result.output)
        assert "Invalid value" in result.output, (name, result.output)
    failures = {
        "--co BLOCKSIZE=abc": ("cog", ["cog", str(store), str(tmp_path / "a.tif"),
                                       "--co", "BLOCKSIZE=abc"]),
        "--co unknown": ("cog", ["cog", str(store), str(tmp_path / "b.tif"), "--co", "FOO=1"]),
        "quoted name": ("dr", [*dr, "--name", "S2 'x' {aoi}.tif"]),
        "300-character name": ("dr", [*dr, "--name", "a" * 300 + "{aoi}.tif"]),
        "1 px AOI": ("dr", ["dr", "--date", "20200219", "--aoi", "-11.5", "24.5", "-11.4999",
                            "24.5001", "--catalog", env["url"], "--out", str(tmp_path / "o")]),
        "requeue unknown id": ("requeue", ["requeue", "--db", db_url, "999"]),
        "requeue nothing named": ("requeue", ["requeue", "--db", db_url]),
        "slurm password in --dr-arg": ("slurm", [
            "slurm", "render", "--profile", "poznan", "--date", "20200219", "--mgrs", "29RKH",
            "--out", str(tmp_path), "--logs", str(tmp_path),
            "--dr-arg=--db=postgresql+psycopg://u:p@ss@db/x"]),
    }
    for name, (command, args) in failures.items():
        line = _one_line(runner.invoke(main, args), command)
        assert "p@ss" not in line and "ss@db" not in line, (name, line)
    assert "credentials file" in _one_line(runner.invoke(main, failures[
        "slurm password in --dr-arg"][1]), "slurm")
    monkeypatch.setenv("SRLIB_NETWORK_TIMEOUT", "soon")
    assert "SRLIB_NETWORK_TIMEOUT" in _one_line(runner.invoke(main, dr), "dr")
    monkeypatch.delenv("SRLIB_NETWORK_TIMEOUT")
    assert db.request(rid)["status"] == "pending" and db.request(rid)["attempts"] == 0
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.tif"))
    assert len(usage) + len(failures) + 1 == 18


def test_four_workers_deliver_every_request_through_a_database_restart_and_sigterms(
        env, tmp_path, pg_url):
    """12 AOI requests, 4 pdr workers on PostgreSQL; mid-run the database restarts (down
    3 s) and two workers get SIGTERM (a SLURM time limit). Their requests go back to
    pending at once; fresh workers finish: every request delivered, each once."""
    from .servers import restart_postgres

    db, ids = _fresh_requests(pg_url, -11.62, 24.62, 4, 3)
    args = ["pdr", "--db", pg_url, "--once", "--catalog", env["url"], "--out",
            str(tmp_path / "out"), "--publish", "s3://products/restart", "--backoff", "1"]

    def start(name):
        return subprocess.Popen([*SRLIB, *args, "--server", name], env=_worker_env(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    workers = [start(f"w{n}") for n in range(4)]
    deadline = time.time() + 300
    while sum(r["status"] == "done" for r in (db.request(i) for i in ids)) < 2:
        assert time.time() < deadline
        time.sleep(0.2)
    t0 = time.monotonic()
    workers[0].send_signal(signal.SIGTERM)
    restart_postgres(pg_url, down_s=3.0)
    db.engine.dispose()  # this test's own connections died with the server
    workers[1].send_signal(signal.SIGTERM)
    outs = [w.communicate(timeout=600) for w in workers]
    stopped = [workers[0].returncode, workers[1].returncode]
    assert stopped == [143, 143] or 0 in stopped, outs  # a worker may be done already
    for (_out, err), proc in zip(outs, workers, strict=True):
        if proc.returncode == 143:
            lines = [ln for ln in err.splitlines() if ln.startswith("srlib pdr failed:")]
            assert len(lines) == 1 and "SIGTERM" in lines[0], err
    assert time.monotonic() - t0 < 600
    rescue = start("rescuer")
    _out, err = rescue.communicate(timeout=600)
    assert rescue.returncode == 0, err
    rows = [db.request(i) for i in ids]
    assert [r["status"] for r in rows] == ["done"] * len(ids), [
        (r["id"], r["status"], r["error"]) for r in rows]
    keys = _keys(env["client"], "restart/")
    assert len([k for k in keys if k.endswith(".manifest.json")]) == len(ids)
    assert not [k for k in keys if "/.incoming/" in k]
    with db.engine.connect() as conn:
        runs = conn.exec_driver_sql("SELECT status, count(*) FROM srlib_runs GROUP BY status"
                                    ).all()
    assert "running" not in dict(runs), runs  # no run left running forever
    db.engine.dispose()
