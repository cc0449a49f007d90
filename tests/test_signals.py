"""A stop signal ends the run from whichever thread the kernel hands it to."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: A process whose main thread sleeps in one long system call, as it does in a read that
#: never answers; the signal is sent to another thread (the kernel may pick any thread).
SCRIPT = textwrap.dedent("""
    import signal, sys, threading, time
    from srlib.errors import Terminated
    from srlib.signals import install, on_forced_exit

    install(grace_s={grace}, command="pdr")

    def released():
        sys.stderr.write("released\\n")

    def other_thread():
        time.sleep(0.5)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        time.sleep(3600)

    threading.Thread(target=other_thread, daemon=True).start()
    with on_forced_exit(released):
        try:
            {block}
        except Terminated as err:
            sys.stderr.write(f"unwound: {{err}}\\n")
            sys.exit(143)
""")


def _run(block: str, grace: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(block=block, grace=grace)],
                          capture_output=True, text=True, timeout=120)


def test_a_signal_caught_by_another_thread_wakes_the_sleeping_main_thread():
    proc = _run("time.sleep(3600)", grace=60)
    assert proc.returncode == 143, proc.stderr
    assert "unwound: stopped by SIGTERM" in proc.stderr, proc.stderr
    assert "released" not in proc.stderr  # the main thread unwound: no forced release


@pytest.mark.parametrize("grace", [2])
def test_a_main_thread_that_cannot_unwind_is_ended_after_the_grace_with_one_line(grace):
    # a C call that retries through EINTR never returns to Python: only the watchdog ends it
    block = "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM]); time.sleep(3600)"
    proc = _run(block, grace=grace)
    assert proc.returncode == 143, proc.stderr
    assert "released" in proc.stderr  # pdr's claim goes back before the exit
    lines = [ln for ln in proc.stderr.splitlines() if "failed:" in ln]
    assert lines == [f"srlib pdr failed: stopped by SIGTERM; a stage did not end within "
                     f"{grace} s, the process was ended"], proc.stderr
    assert "where each thread was" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_to_the_process_unwinds_the_main_thread():
    code = SCRIPT.format(block="time.sleep(3600)", grace=60).replace(
        "signal.pthread_kill(threading.get_ident(), signal.SIGTERM)",
        "import os; os.kill(os.getpid(), signal.SIGTERM)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 143 and "unwound" in proc.stderr, proc.stderr


# -- the product's lock: one job at a time, and none beside a stopped job's last writes --

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from srlib.ops.jobs import product_lock

    with product_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
        Path(sys.argv[1] + ".done").touch()  # still holding the lock
""")


def _holder(cog, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(cog), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_job_waits_for_the_job_making_its_product_then_takes_it(tmp_path):
    from srlib.ops.jobs import product_lock

    cog = tmp_path / "p.tif"
    holder = _holder(cog, 1.5)
    with product_lock(cog, wait_s=60):
        assert Path(f"{cog}.done").exists()  # only once the other job was done with it
    holder.wait()


def test_a_product_held_too_long_is_busy_naming_its_holder_and_retried_later(tmp_path):
    from srlib.errors import ProductBusy, is_transient
    from srlib.ops.jobs import product_lock

    cog = tmp_path / "p.tif"
    holder = _holder(cog, 30)
    try:
        with pytest.raises(ProductBusy, match=f"pid {holder.pid} on ") as err:
            with product_lock(cog, wait_s=0.5):
                pytest.fail("two jobs held one product")
        assert is_transient(err.value)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_outlives_the_region_writes_of_a_job_that_failed(tmp_path):
    import threading

    from srlib.ops.jobs import product_lock
    from srlib.product.zarr_store import _writing

    cog = tmp_path / "p.tif"
    events: list[str] = []
    started, finish = threading.Event(), threading.Event()

    def region_write():  # a dask thread still writing when the job's main thread unwinds
        with _writing(str(cog.with_suffix(".zarr"))):
            started.set()
            finish.wait(30)
            events.append("region written")

    writer = threading.Thread(target=region_write)
    with pytest.raises(RuntimeError, match="stage failed"), product_lock(cog):
        writer.start()
        started.wait(30)
        threading.Timer(0.5, finish.set).start()
        raise RuntimeError("stage failed")
    events.append("lock released")
    writer.join()
    assert events == ["region written", "lock released"]


def test_a_stopped_job_starts_no_new_region(tmp_path):
    import srlib
    from srlib.product.zarr_store import _write_region
    from srlib.signals import _stop

    _stop.set()
    try:
        with pytest.raises(srlib.Terminated):
            _write_region(str(tmp_path / "s.zarr"), "id", (slice(0, 1), slice(0, 1)),
                          str(tmp_path / "marker"), 0, {})
    finally:
        _stop.clear()
    assert not list(tmp_path.iterdir())
