"""The region writes of a store, computed in waves: bounded memory, every core kept busy.

:func:`.zarr_store.to_zarr` turns a product into one delayed write per region. Computed
all at once, a fast device (a GPU) would finish blocks faster than the CPUs write them,
and the finished blocks would pile up in memory; so they are computed in waves of a few
model blocks (:func:`plan_waves`; how many regions, :func:`wave_regions`: up to 8 per
thread, within a share of the available memory), one ``dask.compute`` each. A wave
ends with its last region written by one thread while the others idle (on 2 CPUs, a
sixth of the demo's ``to_zarr`` with waves of two regions per thread). On dask's
threaded scheduler :func:`compute_waves` therefore starts the next wave as soon as the
current one has fewer regions left than there are threads, on the same threads: at most
two waves in flight, the second only where the first leaves threads idle.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import dask
import dask.threaded
from dask.callbacks import Callback

from ..errors import IncompleteStoreError, Terminated
from ..progress import active as progress_active
from ..progress import report

__all__ = ["REGIONS_PER_THREAD", "WRITE", "check_not_aborted", "compute_waves", "plan_waves",
           "wave_regions"]

#: Name prefix of the region-write tasks (counted by the progress display).
WRITE = "_write_region"

#: Regions a wave holds per thread, at most (see :func:`wave_regions`).
REGIONS_PER_THREAD = 8
#: The share of the available memory a wave's finished blocks may take.
WAVE_MEMORY = 1 / 16

#: Stores whose writing failed in this process: their waves still in flight write no
#: further region (see :func:`check_not_aborted`).
_aborted: set[str] = set()
_aborted_lock = threading.Lock()


def plan_waves(groups: list[list], regions: int) -> list[list]:
    """Region tasks in waves of at least ``regions`` tasks and two model blocks.

    A model block (e.g. Swin2SR's 5120 px output) is written as several regions; they all
    go in the same wave, because a wave is one ``dask.compute`` and a block cut across
    two waves would be computed twice (tested by counting kernel calls). Two blocks
    per wave let one block's writing overlap the next block's model. The scheduler holds
    at most a wave of finished blocks, so memory does not grow with the scene. A
    remainder of fewer regions than threads (``regions // 2``) joins the last wave:
    alone, it would leave threads idle (the demo's corner region on one of 2 CPUs).
    """
    waves: list[list] = []
    current: list = []
    blocks = 0
    for group in groups:
        current += group
        blocks += 1
        if len(current) >= regions and blocks >= 2:
            waves.append(current)
            current, blocks = [], 0
    if current and waves and len(current) < regions // 2:
        waves[-1] += current
    elif current:
        waves.append(current)
    return waves


def wave_regions(threads: int, region_bytes: int) -> int:
    """Return how many regions a wave holds: a few per thread, fewer where memory is short.

    Each wave is one ``dask.compute``, and nothing is kept between computes: an input
    chunk that feeds blocks of several waves is read once per wave (a 2048 px chunk of
    :func:`srlib.load_s2` feeds 64 bicubic blocks, and its halos its neighbours'), so
    larger waves read the input fewer times (the figures: ``benchmarks/README.md``,
    "Where the write path's time goes"). A wave's finished blocks may wait in memory
    for their writes (on a GPU, which makes blocks faster than the CPUs write them), so a
    wave holds at most ``WAVE_MEMORY`` of :func:`srlib.config.available_memory` in
    output (``region_bytes`` each), and never fewer than two regions per thread. On a
    ``dask.distributed`` cluster, whose workers' memory this process does not see, two
    per thread.
    """
    from ..config import available_memory, distributed_client

    if distributed_client() is not None:
        return 2 * threads
    most = REGIONS_PER_THREAD * threads
    left = available_memory()
    if left is not None:
        most = min(most, int(left * WAVE_MEMORY) // max(1, region_bytes))
    return max(2 * threads, most)


def check_not_aborted(path: str) -> None:
    """Refuse to write a region of a store whose writing already failed (see module)."""
    if os.path.abspath(path) in _aborted:
        raise IncompleteStoreError(f"{path}: another region failed; this one was not "
                                   "written (rerun srlib.to_zarr to resume)")


def _region_counter(total: int, count: Callable[[], int]) -> Callable[..., None]:
    """Return a dask ``posttask`` callback that reports each finished region write.

    ``count`` is called once per region and returns the regions done so far.
    """
    def posttask(key: object, *_args: object) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith(WRITE):
            done = count()
            if progress_active():
                report("inference", done, total, "regions")

    return posttask


class _ContextPool(ThreadPoolExecutor):
    """A thread pool whose tasks run in the submitter's context (srlib's CPU cap)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def _compute_one(wave: list, done: int, total: int) -> int:
    """Compute one wave in this thread, reporting each finished region."""
    from ..config import distributed_client

    if not progress_active():
        dask.compute(*wave)
        return done + len(wave)
    client = distributed_client()
    if client is not None:
        from distributed import as_completed

        for future in as_completed(client.compute(wave)):
            future.result()  # raises the task's error
            done += 1
            report("inference", done, total, "regions")
        return done
    with Callback(posttask=_region_counter(total, itertools.count(done + 1).__next__)):
        dask.compute(*wave)
    return done + len(wave)


def _pipelined(threads: int) -> bool:
    """Whether waves may overlap: dask's threaded scheduler, no callbacks of the caller's."""
    from ..config import distributed_client

    return (threads > 1 and distributed_client() is None and not Callback.active
            and dask.base.get_scheduler() in (None, dask.threaded.get))  # None: the default


def compute_waves(path: str, waves: list[list], done: int, total: int, threads: int) -> int:
    """Compute the waves of region writes of the store at ``path``; return regions done.

    Overlapping (see the module) on dask's threaded scheduler with more than one thread;
    else one wave after another, on whatever scheduler is configured (a distributed
    client, the synchronous one). A wave's error stops the other wave in flight from
    writing further regions, waits for it and is raised. A stop (a signal's
    :class:`srlib.Terminated` in this thread) does not wait: the threads finish the
    regions they hold, as on dask's own pool, and :func:`.zarr_store.wait_for_writers`
    waits for them.
    """
    key = os.path.abspath(path)
    with _aborted_lock:
        _aborted.discard(key)
    if not _pipelined(threads) or len(waves) < 2:
        for wave in waves:
            done = _compute_one(wave, done, total)
        return done
    pool = _ContextPool(threads, thread_name_prefix="srlib-region")
    drivers = _ContextPool(2, thread_name_prefix="srlib-wave")
    counted = [done]
    lock = threading.Lock()

    def run(wave: list, draining: threading.Event) -> None:
        left = [len(wave)]

        def on_region() -> int:
            with lock:
                counted[0] += 1
                left[0] -= 1
                if left[0] < threads:  # threads idle from now on: the next wave may start
                    draining.set()
                return counted[0]

        posttask = _region_counter(total, on_region)
        try:
            dask.compute(*wave, scheduler="threads", pool=pool,
                         callbacks=[Callback(posttask=posttask)._callback])
        finally:
            draining.set()

    in_flight: list[tuple[Future, threading.Event]] = []
    try:
        for wave in waves:
            if in_flight:
                in_flight[-1][1].wait()  # the last wave leaves threads idle
                while len(in_flight) > 1 or (in_flight and in_flight[0][0].done()):
                    in_flight.pop(0)[0].result()  # raises a finished wave's error
            draining = threading.Event()
            in_flight.append((drivers.submit(run, wave, draining), draining))
        for future, _ in in_flight:
            future.result()
    except Exception as err:
        with _aborted_lock:  # the other wave in flight writes no further region
            _aborted.add(key)
        if not isinstance(err, Terminated):  # a stop unwinds now: its grace is short
            for future, _ in in_flight:
                future.exception()  # wait for it; the first error is the one raised
        raise
    finally:
        # a stop does not wait; the pools' threads end with their tasks
        drivers.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=False)
    return done + sum(len(w) for w in waves)
