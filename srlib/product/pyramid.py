"""Overview pyramid kernels: 2 x 2 reductions that respect nodata and quality codes.

Reflectance: the mean of the valid pixels of each 2 x 2 block, rounded half away from
zero in integer arithmetic (exact on every platform); nodata where none is valid.
Quality: the most frequent valid code of the block (ties go to the higher code, so cloud
outranks clear); nodata only where the whole block is nodata. Odd edges are padded with
nodata, which matches GDAL's overview sizes (``ceil(n / 2)``).
"""

from __future__ import annotations

import math

import numpy as np

from ..bands import OUTPUT_NODATA, TILE, Quality

__all__ = ["levels_needed", "mean2x2", "mode2x2"]


def levels_needed(height: int, width: int, *, tile: int = TILE) -> int:
    """Halvings until the larger side is at most ``tile`` (GDAL's rounding: ceil)."""
    n, size = 0, max(height, width)
    while size > tile:
        size = math.ceil(size / 2)
        n += 1
    return n


def _pad_even(block: np.ndarray, fill: int) -> np.ndarray:
    h, w = block.shape
    if h % 2 or w % 2:
        block = np.pad(block, ((0, h % 2), (0, w % 2)), constant_values=fill)
    return block


def _quads(block: np.ndarray) -> tuple[np.ndarray, ...]:
    return block[0::2, 0::2], block[0::2, 1::2], block[1::2, 0::2], block[1::2, 1::2]


def mean2x2(block: np.ndarray, nodata: int = OUTPUT_NODATA) -> np.ndarray:
    """Mean of the valid pixels of each 2 x 2 block (nodata where none is valid).

    Rounded half away from zero in integer arithmetic: exact on every platform.
    """
    padded = _pad_even(block, nodata)
    dtype = block.dtype if block.dtype != bool else np.int16
    if not (padded == nodata).any():  # the common case: every pixel valid
        # the sum of each column pair of the row-pair sums: two passes over the block
        # instead of four, and (2 * sum + 4) // 8 as the shift (sum + 2) >> 2, the same
        # integers (floor division by 4 of an int32, negative ones included)
        pairs = padded[0::2].astype(np.int32)  # 4 * 32768 + 2 fits comfortably
        pairs += padded[1::2]
        total = pairs[:, 0::2] + pairs[:, 1::2]
        total += 2
        total >>= 2
        return total.astype(dtype)
    quads = _quads(padded)
    valid = [q != nodata for q in quads]
    total = np.zeros(quads[0].shape, dtype=np.int32)
    count = np.zeros(quads[0].shape, dtype=np.int32)
    for q, v in zip(quads, valid, strict=True):
        total += np.where(v, q, 0)
        count += v
    out = np.full(total.shape, nodata, dtype=np.int32)
    ok = count > 0
    out[ok] = (2 * total[ok] + count[ok]) // (2 * count[ok])
    return out.astype(dtype)


def mode2x2(block: np.ndarray, nodata: int = OUTPUT_NODATA) -> np.ndarray:
    """Most frequent valid quality code of each 2 x 2 block (ties -> the higher code)."""
    quads = _quads(_pad_even(block.astype(np.int16), nodata))
    shape = quads[0].shape
    if all(np.array_equal(quads[0], q) for q in quads[1:]):  # uniform blocks: common
        return quads[0].copy()
    best = np.full(shape, nodata, dtype=np.int16)
    best_count = np.zeros(shape, dtype=np.int8)
    for code in sorted((int(c) for c in Quality if c != Quality.NODATA), reverse=True):
        count = sum((q == code).view(np.int8) for q in quads)
        better = count > best_count
        best[better], best_count[better] = code, count[better]
    return best
