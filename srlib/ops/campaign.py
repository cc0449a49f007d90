"""Campaigns: many tiles, dates or AOIs at once, each job whole on a dask worker.

An operator's unit of work is a campaign: dozens of MGRS tiles or AOIs over some dates,
on an allocation of several nodes. :func:`run_campaign` submits one task per request to
a ``dask.distributed`` cluster (the current client, or a ``LocalCluster`` it starts).
The task runs the request's whole :func:`srlib.ops.run_dr` job *on the worker*: load,
inference, Zarr regions, COG, QC, derivatives, STAC Item, manifest, publishing and the
database record, on that worker's threads and its view of the storage. The client only
submits and collects, so a login node's few cores never bound the campaign, and while
one job writes its COG on a worker's CPUs, another job's model runs on the same
worker's GPU (with ``max_in_flight`` above the number of workers).

At most ``max_in_flight`` jobs run at once (default: one per worker, on all its threads).
Each job's outcome is independent: a job that fails is notified and recorded by its own
:func:`~srlib.ops.run_dr` (as any ``dr`` job) and reported in its :class:`Outcome`; the
others go on. Skip, resume and manifest rules are ``run_dr``'s, per product.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["Outcome", "read_requests", "run_campaign"]

log = logging.getLogger("srlib")

#: The keys a campaign request may set; everything else is a campaign-wide option.
REQUEST_KEYS = ("date", "mgrs", "aoi", "s2_id", "product_id", "name_template", "version")


@dataclass
class Outcome:
    """What one request of a campaign came to."""

    request: dict[str, Any]
    status: str  # done, partial, skipped or failed
    cog: str | None = None
    published: list[str] = field(default_factory=list)
    error: str | None = None
    worker: str | None = None  # host:pid of the process that ran every stage
    seconds: float = 0.0
    started: float | None = None  # when the job started and ended (Unix time, worker's)
    ended: float | None = None

    def line(self) -> str:
        """One line for the terminal: what, status, where it went or why it failed."""
        what = " ".join(f"{k}={_text(v)}" for k, v in self.request.items())
        where = self.error if self.status == "failed" else \
            " ".join(self.published) or self.cog or ""
        return f"{self.status:8s} {what}: {where} ({self.seconds:.0f} s on {self.worker})"

    def to_dict(self) -> dict[str, Any]:
        """Return the outcome as a JSON-ready dict."""
        return asdict(self)


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def read_requests(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read campaign requests from a CSV file (a header) or a JSON list / JSON lines.

    Each request has a ``date`` and either ``mgrs`` or an ``aoi``
    (``min_lon,min_lat,max_lon,max_lat``; in a CSV as the four columns ``min_lon``,
    ``min_lat``, ``max_lon``, ``max_lat``); optionally ``s2_id``, ``product_id``,
    ``name_template`` or ``version``.

    Raises
    ------
    InputError
        Naming the line and what is wrong with it.
    """
    text = Path(path).read_text()
    if Path(path).suffix.lower() == ".csv":
        rows: list[dict[str, Any]] = []
        for row in csv.DictReader(io.StringIO(text)):
            row = {k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}
            box = [row.pop(k, None) for k in ("min_lon", "min_lat", "max_lon", "max_lat")]
            if any(b is not None for b in box):
                row["aoi"] = box
            rows.append(row)
    else:
        stripped = text.strip()
        try:
            rows = json.loads(stripped) if stripped.startswith("[") else \
                [json.loads(ln) for ln in stripped.splitlines() if ln.strip()]
        except ValueError as err:
            raise InputError(f"{path}: not JSON ({err}); give a JSON list, JSON lines or a "
                             ".csv with a header") from None
    return [check_request(r, where=f"{path}, request {n}") for n, r in enumerate(rows, 1)]


def check_request(request: Mapping[str, Any], *, where: str = "request") -> dict[str, Any]:
    """Return ``request`` checked and normalised (the AOI as 4 floats, ints as ints).

    Checked as ``dr`` checks its options (date, MGRS id, AOI), so that a typo in one row
    of a campaign file fails the file before any job starts, naming the row.
    """
    from ..scene.sources import check_aoi, check_mgrs, parse_date

    if not isinstance(request, Mapping):
        raise InputError(f"{where}: a request is a mapping with date and mgrs or aoi, "
                         f"not {request!r}")
    unknown = sorted(set(request) - set(REQUEST_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown}; a request has {REQUEST_KEYS} "
                         "(give campaign-wide options to run_campaign / the command)")
    out = dict(request)
    if "date" not in out:
        raise InputError(f"{where}: no date (YYYYMMDD)")
    try:
        parse_date(out["date"])
    except (ValueError, TypeError, InputError) as err:
        raise InputError(f"{where}: date {out['date']!r} is not YYYYMMDD ({err})") from None
    if (out.get("mgrs") is None) == (out.get("aoi") is None):
        raise InputError(f"{where}: give exactly one of mgrs or aoi")
    if out.get("aoi") is not None:
        try:
            aoi = [float(v) for v in out["aoi"]]
        except (TypeError, ValueError):
            aoi = []
        if len(aoi) != 4:
            raise InputError(f"{where}: aoi {out['aoi']!r} is not min_lon,min_lat,max_lon,"
                             "max_lat")
        try:
            check_aoi(aoi)
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        out["aoi"] = aoi
    else:
        try:
            check_mgrs(out["mgrs"])
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
    for key in ("s2_id", "version"):
        if key in out:
            out[key] = int(out[key])
    return out


def _task(request: dict[str, Any], options: dict[str, Any], db_url: str | None
          ) -> Outcome:
    """Run one request's whole job in this (worker) process, on this worker's threads."""
    import dask

    from ..config import limit_cpus
    from .db import MetadataDB
    from .jobs import run_dr
    from .notify import redact

    t0, started = time.monotonic(), time.time()
    here = f"{socket.gethostname()}:{os.getpid()}"
    threads = _worker_threads()
    _size_lanes(threads)
    try:
        db = MetadataDB(db_url) if db_url else None
        # the job's graphs run here, not on the cluster: dask's local threads, as many as
        # the worker has; the COG writer and the lanes get as many CPUs
        with dask.config.set(scheduler="threads", num_workers=threads), limit_cpus(threads):
            result = run_dr(**options, **request, db=db)
    except Exception as err:  # reported by run_dr's steps already; the campaign goes on
        return Outcome(request, "failed", error=redact(f"{type(err).__name__}: {err}"),
                       worker=here, seconds=time.monotonic() - t0, started=started,
                       ended=time.time())
    return Outcome(request, result.outcome, cog=str(result.cog) if result.cog else None,
                   published=list(result.published), worker=here,
                   seconds=time.monotonic() - t0, started=started, ended=time.time())


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def _size_lanes(threads: int | None) -> None:
    """Give the process's model lanes the worker's threads, when they are not started."""
    from ..engine.lanes import current_lanes

    if threads and current_lanes() is None:
        import torch

        torch.set_num_threads(threads)


@contextlib.contextmanager
def _client(client: Any, workers: int | None, threads_per_worker: int) -> Iterator[Any]:
    if client is not None:
        yield client
        return
    from ..config import distributed_client

    current = distributed_client()
    if current is not None and workers is None:
        yield current
        return
    import dask
    from distributed import Client, LocalCluster

    # keep malloc's defaults in the workers (the nanny's MALLOC_TRIM_THRESHOLD_ made the
    # CPU path 1.4-1.5x slower: examples/HPC.md)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=threads_per_worker,
                               processes=True, dashboard_address=None)
    with cluster, Client(cluster) as local:
        yield local


def run_campaign(requests: Iterable[Mapping[str, Any]], *, client: Any = None,
                 workers: int | None = None, threads_per_worker: int = 1,
                 max_in_flight: int | None = None, db: str | None = None,
                 on_outcome: Any = None, **options: Any) -> list[Outcome]:
    """Run many ``dr`` jobs at once, each whole on a dask worker.

    Parameters
    ----------
    requests : iterable of mapping
        Each with a ``date`` and ``mgrs`` or ``aoi`` (see :func:`read_requests`).
    client : distributed.Client, optional
        The cluster to use. Default: the current client; without one (or with
        ``workers``) a ``LocalCluster`` of ``workers`` processes.
    workers, threads_per_worker : int
        The ``LocalCluster`` started when there is no client.
    max_in_flight : int, optional
        Jobs running at once (default: one per worker, each on all the worker's threads
        and its GPU; workers that join later count). Each job goes to the least busy
        worker and holds one product's blocks in memory; more than one per worker lets a
        job's COG stage overlap another's inference on a GPU worker.
    db : str, optional
        Database URL: every job records its run there (workers open it themselves).
    on_outcome : callable, optional
        Called in the client with each :class:`Outcome` as it arrives.
    **options
        Options of :func:`srlib.ops.run_dr` for every job (``out``, ``publish``,
        ``model``, ``catalog``, ``device``...). ``out`` must be storage each worker
        sees at the same path.

    Returns
    -------
    list of Outcome
        In the order of ``requests``; a job that failed has ``status == "failed"`` and
        its error (one failing job never stops the others).
    """
    from distributed import as_completed

    from ..signals import check_stop

    todo = [check_request(r, where=f"request {n}") for n, r in enumerate(requests, 1)]
    clash = sorted(set(options) & set(REQUEST_KEYS))
    if clash:
        raise InputError(f"{clash} belong in each request, not in the campaign's options")
    if "db" in options or "notifier" in options:
        raise InputError("give db= as a URL; notifications go to $SRLIB_WEBHOOK_URL on "
                         "each worker")
    if max_in_flight is not None and max_in_flight < 1:
        raise InputError(f"max_in_flight must be at least 1, got {max_in_flight}")
    # the workers' current directories are not the client's
    options["out"] = Path(options.get("out") or "out").resolve()
    outcomes: list[Outcome | None] = [None] * len(todo)
    with _client(client, workers, threads_per_worker) as cl:
        cl.wait_for_workers(1)  # a SLURMCluster's jobs may still be queued
        pending = iter(enumerate(todo))
        index: dict[Any, tuple[int, str]] = {}
        load: dict[str, int] = {}
        running = as_completed()

        def fill() -> None:
            """Submit jobs until ``max_in_flight`` run, each to the least busy worker."""
            for addr in cl.scheduler_info(n_workers=-1)["workers"]:
                load.setdefault(addr, 0)  # workers that joined since
            limit = max_in_flight or max(1, len(load))
            while sum(load.values()) < limit:
                nxt = next(pending, None)
                if nxt is None:
                    return
                n, request = nxt
                addr = min(load, key=load.__getitem__)
                future = cl.submit(_task, request, options, db, pure=False,
                                   key=f"srlib-campaign-{n}-{os.urandom(4).hex()}",
                                   workers=[addr], allow_other_workers=True)
                load[addr] += 1
                index[future.key] = (n, addr)
                running.add(future)

        log.info("campaign: %d request(s) on %d worker(s)", len(todo),
                 len(cl.scheduler_info(n_workers=-1)["workers"]))
        fill()
        for future in running:
            n, addr = index.pop(future.key)
            load[addr] -= 1
            try:
                outcome = future.result()
            except Exception as err:  # the worker died (KilledWorker) or could not run it
                outcome = Outcome(todo[n], "failed", error=f"{type(err).__name__}: {err}")
            outcomes[n] = outcome
            log.info("campaign: %s", outcome.line())
            if on_outcome is not None:
                on_outcome(outcome)
            check_stop()
            fill()
    return [o for o in outcomes if o is not None]
