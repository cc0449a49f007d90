"""Memory housekeeping: glibc's heaps reused and trimmed, Python's collector kept short."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..config import available_memory

__all__ = ["KEEP_FREE", "frozen_heap", "release_free_memory", "tune_malloc"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _glibc(name: str, restype: Any = ctypes.c_int) -> Callable[..., Any] | None:
    try:
        fn = getattr(ctypes.CDLL(None), name)  # glibc (Linux); absent elsewhere
    except (OSError, AttributeError):
        return None
    fn.restype = restype
    return fn


_MALLOC_TRIM = _glibc("malloc_trim")
_MALLOPT = _glibc("mallopt")
_MALLINFO2 = _glibc("mallinfo2", _MallInfo2)  # glibc >= 2.33
#: mallopt's parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
#: Free heap memory kept for the next blocks, at most (and at most 1/8 of the memory available).
KEEP_FREE = 1 << 30
_tuned = False


def tune_malloc() -> bool:
    """Have glibc reuse the blocks' memory rather than map it afresh; once per process.

    By default glibc maps every allocation above a moving threshold (at most 32 MB)
    afresh, gives each thread's heap (64 MB) back when it empties, and trims what is
    free at the top of a heap: a block's temporaries were new, zero-filled pages every
    time, about 900,000 page faults per demo ``to_zarr`` and half its CPU time in the
    kernel on 2 CPUs. Fixed here: allocations up to 32 MB come from one heap (one arena:
    the threads' heaps were the churn) that keeps its free memory, and
    :func:`release_free_memory` trims it when more than :data:`KEEP_FREE` is free. Set
    ``SRLIB_TUNE_MALLOC=0`` to keep glibc's defaults. Returns whether it tuned now.
    """
    global _tuned
    if _tuned or _MALLOPT is None or os.environ.get("SRLIB_TUNE_MALLOC", "1") == "0":
        return False
    _tuned = True
    _MALLOPT(_M_MMAP_THRESHOLD, 32 << 20)
    _MALLOPT(_M_TRIM_THRESHOLD, 2**31 - 1)
    _MALLOPT(_M_ARENA_MAX, 1)
    return True


def _free_heap_bytes() -> int | None:
    """Free bytes glibc holds in its heaps (``None`` where it cannot tell)."""
    return None if _MALLINFO2 is None else int(_MALLINFO2().fordblks)


def _keep_free() -> int:
    """Free heap bytes kept: :data:`KEEP_FREE`, or an eighth of the memory left if less.

    "Left" as :func:`srlib.config.available_memory` sees it: the page cache counts as
    available (after a Zarr stage it holds most of the machine, and the free pages alone
    made every block trim), and a cgroup's limit (SLURM's ``--mem``) caps it.
    """
    available = available_memory()
    return KEEP_FREE if available is None else min(KEEP_FREE, available // 8)


def release_free_memory() -> None:
    """Give the free pages of glibc's heaps back to the OS after a block, when many.

    A block frees hundreds of MB of temporaries of every size (patches, model outputs,
    strips). Kept for the next block they cost nothing; but fragments build up, and
    the peak RSS of a long run grew with its blocks. ``malloc_trim`` returns them, a
    millisecond against a block's seconds, once more than :data:`KEEP_FREE` (or an
    eighth of the memory still available) is free: every block trimmed (as before
    :func:`tune_malloc`) meant new pages for every block. Where glibc cannot say how much
    is free (before 2.33), every block trims. Dask's nanny sets
    ``MALLOC_TRIM_THRESHOLD_`` in its workers for the same purpose, at a higher price:
    every temporary above 128 KB is then a fresh mapping
    (:func:`srlib.ops.slurm.dask_cluster` drops it).
    """
    if _MALLOC_TRIM is None:
        return
    free = _free_heap_bytes()
    if free is None or free > _keep_free():
        _MALLOC_TRIM(0)


_frozen = 0
_frozen_lock = threading.Lock()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep Python's full collections off the objects that exist on entry, until exit.

    With torch, xarray and dask imported a process holds about a million objects, and
    each full (oldest-generation) collection walks them all: ~0.2 s holding the GIL,
    which stalls every thread writing regions (one such pause per demo ``to_zarr``, 3% of
    its time on 2 CPUs). ``gc.freeze`` moves them to the permanent generation, which
    collections skip, and ``gc.unfreeze`` gives them back at the end: nothing is kept
    that would have been collected, only later. Nested and concurrent uses unfreeze
    once, when the last one exits.
    """
    global _frozen
    with _frozen_lock:
        if _frozen == 0:
            gc.freeze()
        _frozen += 1
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen -= 1
            if _frozen == 0:
                gc.unfreeze()
