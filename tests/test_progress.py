"""One progress display for a whole job: fraction, stage and ETA; bar, log lines or off."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

import srlib
from srlib.progress import Progress, job_progress, report


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _percents(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.search(r"(\d+)% \|", line))]


def test_log_lines_advance_by_a_few_percent_over_all_stages_with_an_eta():
    clock = Clock()
    p = Progress({"inference": 1.0, "cog": 1.0}, mode="log", every=10, clock=clock)
    for i in range(1, 101):
        clock.now += 1
        p.update("inference", i, 100, "regions")
    assert p.fraction == 0.5 and p.eta() == 100.0  # 100 s for half: 100 s left
    for i in range(1, 11):
        clock.now += 10
        p.update("cog", i * 1e8, 1e9, "bytes")
    percents = _percents(p.lines)
    assert percents == sorted(percents) and percents[-1] == 100  # never restarts at 0
    assert 10 <= len(p.lines) <= 12  # one per 10%, plus the stage change
    assert p.lines[0].startswith("  0% | inference 1/100") and "100/100" in p.lines[5]
    assert "cog 1.00/1.00 GB" in p.lines[-1] and "elapsed 3m20s" in p.lines[-1]
    p.update("unknown", 1, 2)  # a stage the job does not show changes nothing
    assert p.stage == "cog"


def test_a_later_stage_counts_the_skipped_ones_as_done():
    p = Progress({"inference": 3.0, "cog": 1.0}, mode="log", every=5)
    p.update("cog", 0, 10)  # a resumed store: no inference reports at all
    assert p.fraction == 0.75


def test_the_bar_redraws_one_line_in_place_and_ends_with_a_newline():
    out = io.StringIO()
    with job_progress({"inference": 1.0}, mode="bar", out=out):
        for i in range(1, 6):
            report("inference", i, 5, "regions")
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") >= 2
    assert "[##############################] 100% | inference 5/5 regions" in text


def test_reports_without_a_display_cost_nothing_and_off_shows_nothing():
    report("inference", 1, 2)  # no display: a no-op
    out = io.StringIO()
    with job_progress(mode="off", out=out) as p:
        report("inference", 1, 2)
    assert out.getvalue() == "" and p.lines == []


def _srlib(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "SRLIB_WEBHOOK_URL": ""}
    return subprocess.run([sys.executable, "-m", "srlib.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_job_in_a_log_file_prints_one_line_per_few_percent_and_q_silences_it(tmp_path):
    """What an operator's SLURM .out file gets: plain lines, no carriage returns."""
    run = _srlib("demo", "--sample", "bigearthnet", "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "srlib: progress" in line]
    assert "\r" not in run.stderr
    percents = _percents(lines)
    assert percents == sorted(percents) and percents[-1] == 100, lines
    assert len(lines) <= 30, lines  # one per 5% and per stage, not one per task
    stages = [m.group(1) for line in lines if (m := re.search(r"% \| (\w+) ", line))]
    assert list(dict.fromkeys(stages)) == ["inference", "overviews", "cog", "qc"]
    assert re.search(r"ETA \d+s", lines[-2]) and lines[-1].endswith(tuple("0123456789s"))
    # -q and -v go after the command as well as before it
    quiet = _srlib("demo", "--sample", "bigearthnet", "--out", str(tmp_path / "b"), "-q",
                   cwd=tmp_path)
    assert quiet.returncode == 0 and "progress" not in quiet.stderr
    assert " INFO " not in quiet.stderr and "QC PASSED" in quiet.stdout
    (tmp_path / "bad.tif").write_text("not a tiff")
    verbose = _srlib("qc", str(tmp_path / "bad.tif"), "-v", cwd=tmp_path)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    both = _srlib("-q", "qc", str(tmp_path / "b" / "S2x10_bigearthnet.tif"), "-v",
                  cwd=tmp_path)
    assert both.returncode == 2 and "contradict" in both.stderr


def test_job_progress_is_public():
    assert srlib.job_progress is job_progress


@pytest.mark.parametrize(("nbytes", "of", "text"), [
    (0, None, "0 B"), (999, None, "999 B"), (12_345, None, "12.3 kB"),
    (18_200_000, None, "18.2 MB"), (1.8e9, None, "1.8 GB"), (9.1e12, None, "9.1 TB"),
    (3e6, 2e9, "0.00/2.00 GB"), (2.5e6, 1.04e7, "2.50/10.40 MB"), (5, 10, "5/10 B"),
])
def test_sizes_are_written_in_the_unit_they_reach(nbytes, of, text):
    """A small product's sizes read in MB (its disk check used to say 'needs about 0.0 GB
    ... but 0.0 GB are free'); a tile's in GB; progress in the total's unit."""
    from srlib.progress import size_text

    assert size_text(nbytes, of=of) == text
