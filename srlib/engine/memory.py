"""Giving a block's freed memory back to the operating system (glibc's heaps)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

__all__ = ["release_free_memory"]


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc (Linux); absent elsewhere
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> None:
    """Give the free pages of glibc's heaps back to the OS, after each block.

    A block frees hundreds of MB of temporaries of every size (patches, model outputs,
    strips), which glibc keeps in its heaps, fragmented, for the next block: the peak RSS
    of a run then grows with the number of blocks. ``malloc_trim`` returns them, for a
    millisecond against a block's seconds. Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` in
    its workers for the same purpose, at a higher price: every temporary above 128 KB is
    then a fresh mapping (:func:`srlib.ops.slurm.dask_cluster` drops it).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


