"""Failpoints: faults injected at a named stage, for the fault-injection test matrix.

Off unless ``SRLIB_FAILPOINTS`` is set (``STAGE=FAULT[@N][,...]``); then :func:`hit`
makes the fault happen, for real, the ``N``-th time (default: the first) the process
reaches that stage:

- ``sigterm`` / ``sigkill``: the process sends itself the signal (what a batch system's
  time limit or the OOM killer does);
- ``enospc``: a write fails with ``OSError(ENOSPC)`` (a full disk);
- ``network``: a connection is reset (``ConnectionResetError``);
- ``hang``: the stage stops answering (a read that never returns) until a signal ends it;
- ``log``: no fault; every hit prints ``srlib failpoint: STAGE #N DETAIL`` on stderr
  (to find the ``N`` of a given S3 request).

Stages (see ``tests/README.md`` for the matrix): ``search``, ``read``, ``inference``,
``zarr``, ``cog``, ``qc``, ``derivatives``, ``quicklook``, ``stac``, ``manifest``,
``publish``, ``database``, ``notify``; and ``s3``, every request srlib's S3 client sends
(the ``N``-th of the process, wherever it is: a publish's uploads, checks, copies and
staging deletes). Like the failpoints of etcd or TiKV, they are part
of the code so that tests inject faults where they really happen, with no mock.
"""

from __future__ import annotations

import collections
import errno
import os
import signal
import threading
import time

__all__ = ["FAULTS", "STAGES", "hit"]

#: The stages a failpoint can name.
STAGES = ("search", "read", "inference", "zarr", "cog", "qc", "derivatives", "quicklook",
          "stac", "manifest", "publish", "database", "notify", "s3")
#: The faults a failpoint can inject.
FAULTS = ("sigterm", "sigkill", "enospc", "network", "hang", "log")


_hits: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()  # S3 requests are sent from several threads


def _armed() -> dict[str, tuple[str, int]]:
    text = os.environ.get("SRLIB_FAILPOINTS", "")
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        stage, _, rest = part.partition("=")
        fault, _, nth = rest.partition("@")
        if stage not in STAGES or fault not in FAULTS or not (nth or "1").isdigit():
            raise ValueError(f"SRLIB_FAILPOINTS: {part!r} is not STAGE=FAULT[@N] with a stage "
                             f"of {STAGES} and a fault of {FAULTS}")
        out[stage] = (fault, int(nth or 1))
    return out


def hit(stage: str, path: str | os.PathLike | None = None) -> None:
    """Inject the fault armed for ``stage``, if any (a no-op unless ``SRLIB_FAILPOINTS``)."""
    if "SRLIB_FAILPOINTS" not in os.environ:
        return
    armed = _armed().get(stage)
    if armed is None:
        return
    with _lock:
        _hits[stage] += 1
        count = _hits[stage]
    fault, nth = armed
    if fault == "log":
        import sys

        sys.stderr.write(f"srlib failpoint: {stage} #{count} {path or ''}\n")
        sys.stderr.flush()
        return
    if count != nth:
        return
    if fault in ("sigterm", "sigkill"):
        os.kill(os.getpid(), signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
        if threading.current_thread() is threading.main_thread():
            time.sleep(60)  # the signal's handler raises here (SIGKILL never returns)
        # another thread (an upload's) goes on, as it does when the signal comes
    elif fault == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path or stage))
    elif fault == "network":
        raise ConnectionResetError(errno.ECONNRESET, f"{os.strerror(errno.ECONNRESET)} "
                                   f"(at {stage})")
    elif fault == "hang":
        import sys

        sys.stderr.write(f"srlib failpoint: hanging at {stage}\n")
        sys.stderr.flush()
        while True:
            time.sleep(3600)
