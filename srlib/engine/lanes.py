"""CPU forward passes in parallel single-threaded lanes, results consumed in order.

One process-wide pool of lane threads (one per usable core), which the blocks that dask
runs take in turns; :func:`forward_all` runs a block's batches in them and hands the
results to the calling thread strictly in batch order, so the output does not depend on
the number of lanes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numpy as np
import torch

from .runner import Runner

__all__ = ["Lanes", "current_lanes", "forward_all", "lane_count", "process_lanes",
           "reset_process_lanes"]

_T = TypeVar("_T")
#: A batch's output patches: a numpy array, or a tensor on the device (``Runner``); the
#: blocks' ``prepare`` and ``consume`` know which their runner gives
Patches = Any


def lane_count(run: Runner, lanes: int | None) -> int:
    """Return the concurrent forward passes of one block.

    ``lanes`` if set; else the process's lanes on the CPU, and 0 (the calling thread, one
    batch after another) on a GPU.
    """
    if lanes is not None:
        return lanes
    return process_lanes().lanes if run.device.type == "cpu" else 0


class Lanes:
    """The process's lane threads, one per CPU forward pass in flight, and the free ones.

    On a few cores, one single-threaded pass per core beats one pass spread over every
    core (PyTorch's intra-op threads meet at a barrier after every operator). Passes of
    one thread also make CPU output independent of the thread count: the same bytes from
    a laptop, a dask LocalCluster or a SLURM job.

    There are as many lanes as ``torch.get_num_threads()`` in the thread that runs the
    first block (at most the usable cores): set it, or ``OMP_NUM_THREADS`` (dask's
    worker processes get 1), before computing. It is read once, because torch gives every
    thread started afterwards the last count set anywhere in the process, so a thread's
    own count says nothing after the lanes set theirs to 1. The lanes are started at once
    and that process-wide count is then put back.

    A block takes all the lanes it needs at once and each lane comes back when it runs
    out of batches. Blocks that dask runs at the same time therefore take turns instead
    of sharing the cores: one block finishes, and its output is written while the next
    one computes, rather than both finishing late together with two outputs in memory.
    The threads live as long as the process: a new pool per block gave every block new
    threads, each with its own malloc arena, and fragmented memory.
    """

    def __init__(self) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        threads = torch.get_num_threads()
        self.lanes = max(1, min(cores or os.cpu_count() or 1, threads))
        self.free = self.lanes
        self.changed = threading.Condition()
        started = threading.Barrier(self.lanes + 1)
        self.pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="srlib-lane",
                                       initializer=_single_threaded)
        for _ in range(self.lanes):
            self.pool.submit(started.wait)
        started.wait()
        torch.set_num_threads(threads)  # the count new threads get, as it was

    def take(self, n: int) -> int:
        """Wait until ``n`` lanes (at most all) are free, take them, return how many."""
        n = min(n, self.lanes)
        with self.changed:
            self.changed.wait_for(lambda: self.free >= n)
            self.free -= n
        return n

    def give(self) -> None:
        """Give one lane back."""
        with self.changed:
            self.free += 1
            self.changed.notify_all()


def _single_threaded() -> None:
    """Make torch run single-threaded in this thread, for good.

    torch sets a thread's count from the process-wide one at the thread's first parallel
    operator, unless it has already done so: ``get_num_threads`` does it first.
    """
    torch.get_num_threads()
    torch.set_num_threads(1)


_LANES: Lanes | None = None
_PREFETCH: ThreadPoolExecutor | None = None  # the thread that prepares a GPU's next batch
_LANES_LOCK = threading.Lock()


def process_lanes() -> Lanes:
    """Return the process's lanes, started on first use."""
    global _LANES
    with _LANES_LOCK:
        if _LANES is None:
            _LANES = Lanes()
        return _LANES


def reset_process_lanes() -> None:
    """Forget the process's lanes: the next block starts new ones, sized afresh.

    Called in a forked child (which has none of its parent's threads); tests call it to
    start lanes for another thread count. Lanes already started keep running until the
    blocks holding them finish.
    """
    global _LANES, _PREFETCH
    with _LANES_LOCK:
        _LANES = _PREFETCH = None


def current_lanes() -> Lanes | None:
    """Return the process's lanes if started, else None."""
    return _LANES


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_process_lanes)


def _forward_prefetching(run: Runner, batches: Sequence[_T], make: Callable[[_T], np.ndarray],
                         consume: Callable[[_T, Patches], None],
                         prepare: Callable[[Patches], Patches]) -> None:
    """Run the batches one after another while a thread prepares and uploads the next.

    For a device that finishes its own results (a GPU): the host cuts the next batch's
    patches and starts their copy (pinned, asynchronous) while the device runs the
    current one, so the device does not wait for the host between batches.
    """
    global _PREFETCH
    with _LANES_LOCK:
        if _PREFETCH is None:
            _PREFETCH = ThreadPoolExecutor(1, thread_name_prefix="srlib-prefetch")
    if not batches:
        return
    pending = _PREFETCH.submit(lambda b: run.upload(make(b)), batches[0])
    for i, batch in enumerate(batches):
        tensor = pending.result()
        if i + 1 < len(batches):
            pending = _PREFETCH.submit(lambda b: run.upload(make(b)), batches[i + 1])
        consume(batch, prepare(run(tensor)))


def forward_all(run: Runner, batches: Sequence[_T], make: Callable[[_T], np.ndarray],
                 consume: Callable[[_T, Patches], None],
                 prepare: Callable[[Patches], Patches] = lambda r: r, *,
                 lanes: int | None = None, ordered: bool = True) -> None:
    """Run every batch through the model and hand each result to ``consume``, in order.

    ``make`` builds a batch's input patches; ``prepare`` post-processes the model's
    output patch by patch (in the lanes, in parallel); ``consume`` adds it to the block.
    The forward passes run in parallel lanes (see :class:`Lanes`) while the calling
    thread consumes their results strictly in batch order, so float sums (feather
    blending) are the same whatever the number of lanes and the block is bit-for-bit
    reproducible. The lanes stop taking batches while ``lanes`` results wait, which bounds
    the memory that finished batches hold. ``lanes``: how many (default: one per usable
    core on the CPU; 0 runs the batches one after another in the calling thread).
    ``ordered=False``: ``consume`` does not depend on the order (each batch writes its own
    pixels), so the lanes call it themselves as each batch ends: the calling thread is
    then no serial step that every lane waits for.
    """
    n = min(lane_count(run, lanes), len(batches))
    if n == 0 and run.on_device:
        _forward_prefetching(run, batches, make, consume, prepare)
        return
    if n == 0:
        for batch in batches:
            consume(batch, prepare(run(make(batch))))
        return
    pool = process_lanes()
    n = pool.take(n)
    changed, failed = threading.Condition(), threading.Event()
    todo: Iterator[tuple[int, _T]] = iter(enumerate(batches))
    done: dict[int, Patches] = {}

    def lane() -> None:
        try:
            while not failed.is_set():
                with changed:
                    changed.wait_for(lambda: len(done) < n or failed.is_set())
                    i, batch = next(todo, (-1, None))
                if batch is None:
                    return
                result = prepare(run(make(batch)))
                if not ordered:
                    consume(batch, result)
                    continue
                with changed:
                    done[i] = result
                    changed.notify_all()
        except BaseException:
            failed.set()  # the other lanes stop after their batch, the caller at once
            raise
        finally:
            pool.give()  # this lane's core, as soon as it has no batch left
            with changed:
                changed.notify_all()

    futures = [pool.pool.submit(lane) for _ in range(n)]
    try:
        for turn, batch in enumerate(batches if ordered else ()):
            with changed:
                changed.wait_for(lambda: turn in done or failed.is_set())  # noqa: B023
                if failed.is_set():
                    break
                result = done.pop(turn)
                changed.notify_all()
            consume(batch, result)
    except BaseException:
        failed.set()
        raise
    finally:
        wait(futures)  # every lane has stopped before the block returns or raises
    for future in futures:
        future.result()  # re-raise a lane's error


