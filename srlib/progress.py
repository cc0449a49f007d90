"""One progress display for a whole job: the fraction done, the stage and an ETA.

Library code reports what it has done with :func:`report` (``report("cog", 3, 10)``);
the report goes to the display that is active, and is free when none is. A job opens
one display for all its stages with :func:`job_progress`, each stage weighted by its
expected share of the time, so the fraction never restarts at 0 between stages:

- ``mode="bar"``: one line redrawn in place on a terminal (at most 5 times a second);
- ``mode="log"``: one ``srlib`` log line each time the whole job advances by ``every``
  percent, and at each new stage (what a SLURM ``.out`` file wants);
- ``mode="off"``: nothing (``srlib -q``).

``mode="auto"`` picks the bar when the output is a terminal, else log lines. Stages run
in the declared order; a report from a later stage counts the earlier ones as done (a
resumed store skips its inference). On a ``distributed`` cluster :func:`srlib.to_zarr`
reports each region as the scheduler finishes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TextIO

__all__ = ["JOB_STAGES", "Progress", "job_progress", "job_stages", "report", "size_text",
           "watch_file"]

log = logging.getLogger("srlib")

#: A whole job's stages and their default weights (shares of the time), as measured on
#: a quarter tile with bicubic (Zarr 288 s, COG 298 s; see benchmarks/README.md).
JOB_STAGES: dict[str, float] = {"load": 0.01, "inference": 0.45, "overviews": 0.04,
                                "cog": 0.42, "qc": 0.03, "publish": 0.05}

_ACTIVE: list[Progress] = []


def job_stages(*, model: str = "bicubic", publish: bool = False) -> dict[str, float]:
    """Return a job's stage weights.

    A learned model's inference takes about 10x bicubic's; there is no publish stage
    unless the job publishes.
    """
    stages = dict(JOB_STAGES)
    if model != "bicubic":
        stages["inference"] *= 10
    if not publish:
        del stages["publish"]
    return stages
_LOCK = threading.Lock()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


_SIZE_UNITS = ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


def _size_unit(nbytes: float) -> tuple[float, str]:
    return next(((f, u) for f, u in _SIZE_UNITS if abs(nbytes) >= f), (1.0, "B"))


def size_text(nbytes: float, *, of: float | None = None) -> str:
    """``nbytes`` in the largest unit it reaches (``"3.4 MB"``, ``"1.2 GB"``).

    With ``of``, ``"done/total UNIT"`` in the total's unit. Sizes of small products
    (an AOI) no longer read "0.0 GB".
    """
    factor, unit = _size_unit(nbytes if of is None else of)
    digits = 0 if unit == "B" else 1 if of is None else 2
    if of is None:
        return f"{nbytes / factor:.{digits}f} {unit}"
    return f"{nbytes / factor:.{digits}f}/{of / factor:.{digits}f} {unit}"


def _amount(done: float, total: float, unit: str) -> str:
    if unit == "bytes":
        return size_text(done, of=total)
    return f"{int(done)}/{int(total)} {unit}".rstrip()


class Progress:
    """Fraction done over weighted stages, rendered as a bar, log lines or nothing.

    Parameters
    ----------
    stages : mapping
        Stage name -> weight, in the order they run.
    mode : {"auto", "bar", "log", "off"}
        See the module docstring.
    every : float
        Percent of the whole job between two log lines (``mode="log"``).
    out : file, optional
        Where the bar is drawn (default ``sys.stderr``).
    clock : callable
        Seconds (for tests).
    """

    def __init__(self, stages: Mapping[str, float] | None = None, *, mode: str = "auto",
                 every: float = 5.0, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in ("auto", "bar", "log", "off"):
            raise ValueError(f"mode must be 'auto', 'bar', 'log' or 'off', got {mode!r}")
        self.out = out or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.out, "isatty", lambda: False)() else "log"
        self.mode = mode
        self.stages = dict(stages if stages is not None else JOB_STAGES)
        self.total_weight = sum(self.stages.values()) or 1.0
        self.every = every
        self.clock = clock
        self.start = clock()
        self.stage: str | None = None
        self.detail = ""
        self.fraction = 0.0
        self.lines: list[str] = []  # what log mode emitted (for tests and callers)
        self.spans: dict[str, list[float]] = {}  # stage -> [first, last report] seconds
        self._logged = -1.0
        self._drawn = 0.0
        self._width = 0

    def update(self, stage: str, done: float, total: float, unit: str = "") -> None:
        """Record that ``stage`` has done ``done`` of ``total``; redraw when due."""
        if stage not in self.stages:
            return
        now = self.clock() - self.start
        self.spans.setdefault(stage, [now, now])[1] = now
        names = list(self.stages)
        before = sum(self.stages[s] for s in names[: names.index(stage)])
        part = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
        fraction = (before + self.stages[stage] * part) / self.total_weight
        new_stage = stage != self.stage
        self.fraction = max(self.fraction, fraction)
        self.stage, self.detail = stage, _amount(done, total, unit) if total > 0 else ""
        if self.mode == "log":
            step = int(self.fraction * 100 // self.every)
            if new_stage or step > self._logged:
                self._logged = step
                self._log(self.line())
        elif self.mode == "bar":
            now = self.clock()
            if new_stage or now - self._drawn >= 0.2 or part >= 1.0:
                self._drawn = now
                self._draw()

    def durations(self) -> dict[str, float]:
        """Seconds each reported stage took: from its first report to the next stage's."""
        order = sorted(self.spans, key=lambda st: self.spans[st][0])
        starts = [self.spans[st][0] for st in order]
        ends = [*starts[1:], self.spans[order[-1]][1]] if order else []
        return {st: end - start for st, start, end in zip(order, starts, ends, strict=True)}

    def eta(self) -> float | None:
        """Seconds left at the average rate so far (None before 1% is done)."""
        if self.fraction < 0.01:
            return None
        elapsed = self.clock() - self.start
        return elapsed * (1.0 - self.fraction) / self.fraction

    def line(self) -> str:
        """Return the state in one line: percent, stage, amount, elapsed time and ETA."""
        eta = self.eta()
        parts = [f"{self.fraction * 100:3.0f}%", f"{self.stage} {self.detail}".strip(),
                 f"elapsed {_duration(self.clock() - self.start)}",
                 f"ETA {_duration(eta)}" if eta is not None else "ETA ?"]
        return " | ".join(parts)

    def _log(self, text: str) -> None:
        self.lines.append(text)
        log.info("progress %s", text)

    def _draw(self) -> None:
        filled = int(self.fraction * 30)
        text = f"[{'#' * filled}{'.' * (30 - filled)}] {self.line()}"
        self.out.write("\r" + text.ljust(self._width))
        self.out.flush()
        self._width = len(text)

    def close(self, ok: bool = True) -> None:
        """End the display: a final line (log), or a newline after the bar."""
        if self.mode == "bar" and self._width:
            self.out.write("\n")
            self.out.flush()
        elif self.mode == "log" and ok and self.stage is not None:
            self._log(f"done in {_duration(self.clock() - self.start)}")


@contextlib.contextmanager
def job_progress(stages: Mapping[str, float] | None = None, *, mode: str = "auto",
                 every: float = 5.0, out: TextIO | None = None) -> Iterator[Progress]:
    """Show one progress display for everything reported inside the ``with`` block.

    Examples
    --------
    >>> with srlib.job_progress(mode="log"):  # doctest: +SKIP
    ...     srlib.super_resolve_to_cog(srlib.sample_scene(), "out.tif")
    """
    display = Progress(stages, mode=mode, every=every, out=out)
    with _LOCK:
        _ACTIVE.append(display)
    ok = False
    try:
        yield display
        ok = True
    finally:
        with _LOCK:
            _ACTIVE.remove(display)
        display.close(ok)


def active() -> bool:
    """Whether a display is listening (callers skip costly progress bookkeeping if not)."""
    return bool(_ACTIVE)


def report(stage: str, done: float, total: float, unit: str = "") -> None:
    """Tell the active display (if any) that ``stage`` has done ``done`` of ``total``."""
    with _LOCK:
        display = _ACTIVE[-1] if _ACTIVE else None
        if display is not None:
            display.update(stage, done, total, unit)


@contextlib.contextmanager
def watch_file(stage: str, path: Callable[[], os.PathLike], expected: float, *,
               interval: float = 1.0) -> Iterator[None]:
    """Report a file's growth towards ``expected`` bytes while the block runs.

    For writers that give no callback (GDAL's COG driver through rasterio): a thread
    polls the size of ``path()`` (a callable, as the file may not exist yet), capped at
    99% until the block ends.
    """
    if not active():
        yield
        return
    stop = threading.Event()
    report(stage, 0, expected, "bytes")

    def poll() -> None:
        while not stop.wait(interval):
            try:
                size = float(Path(path()).stat().st_size)
            except OSError:
                continue
            report(stage, min(size, 0.99 * expected), expected, "bytes")

    thread = threading.Thread(target=poll, name=f"srlib-progress-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    report(stage, expected, expected, "bytes")
