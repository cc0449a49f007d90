"""Stitching a block's output from model patches: trimmed tiles or feathered patches.

``trim``: a local patch grid whose borders of ``halo`` input pixels are discarded.
``feather``: a scene-anchored grid of overlapping patches blended with linear ramps, so
results do not depend on the chunking. Either way each region of output is finished
(de-normalised, quantised, flagged) as soon as no other patch adds to it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..bands import OUTPUT_NODATA, Quality
from ..models.spec import ModelSpec
from .lanes import forward_all
from .runner import Runner

__all__ = ["Output", "finish_tensor", "patch_grid", "run_feather", "run_trim"]


def _ramp(n: int, width: int) -> np.ndarray:
    """Feather weights along one axis: linear ramps of ``width`` at both ends.

    Patches ``n - width`` apart overlap by ``width``, where one ramps down as the next
    ramps up: ``(n - i - 0.5) / width + (i - (n - width) + 0.5) / width = 1``. The
    weights of every patch that covers a pixel therefore sum to one (to float rounding)
    when ``width <= n / 2`` (see ModelSpec's check), in 2-D too, as products of these.
    """
    if width <= 0:
        return np.ones(n, dtype=np.float32)
    i = np.arange(n, dtype=np.float64)
    return np.minimum(np.minimum(i + 0.5, n - i - 0.5) / width, 1.0).astype(np.float32)


def _even_tiles(length: int, max_core: int) -> list[tuple[int, int]]:
    """Split ``[0, length)`` into near-equal cores of at most ``max_core``."""
    n = max(1, math.ceil(length / max_core))
    edges = [round(i * length / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


class Output:
    """The block's int16 output, finished region by region as the model produces it.

    A region of model output (normalised float32) is final once no other patch adds to
    it; it is then de-normalised, quantised and written here at once, so a block
    never holds a float32 copy of its whole output and its peak memory is the int16 output
    plus one row of patches.
    """

    def __init__(self, spec: ModelSpec, quality: np.ndarray,
                 device: torch.device | None = None) -> None:
        self.s = spec.scale
        self.quality = quality  # core quality at input resolution, uint8
        h, w = quality.shape
        self.out = np.empty((len(spec.bands_out) + 1, h * self.s, w * self.s), dtype=np.int16)
        self.mean, self.std = spec.stats.output.arrays()
        if device is not None:  # finishing on the device: its copies, made once
            self.quality_t = torch.from_numpy(quality).to(device)
            self.mean_t = torch.from_numpy(self.mean).to(device)
            self.std_t = torch.from_numpy(self.std).to(device)

    def emit(self, hr: np.ndarray | torch.Tensor, y0: int, x0: int) -> None:
        """Finish ``hr`` (bands, rows, cols) into the output at output pixel (y0, x0).

        ``y0``, ``x0`` and the extent of ``hr`` are multiples of the scale. ``hr`` is
        overwritten. A tensor is finished on its device and only int16 comes back.
        """
        s = self.s
        h, w = hr.shape[1:]
        if isinstance(hr, torch.Tensor):
            qt = self.quality_t[y0 // s : (y0 + h) // s, x0 // s : (x0 + w) // s]
            qt = qt.repeat_interleave(s, dim=0).repeat_interleave(s, dim=1)
            done = finish_tensor(hr, qt, self.mean_t, self.std_t)
            self.out[:, y0 : y0 + h, x0 : x0 + w] = done.cpu().numpy()
            return
        q = self.quality[y0 // s : (y0 + h) // s, x0 // s : (x0 + w) // s]
        step = max(1, _STRIP // s)  # input rows per strip: strips stay in cache
        for i in range(0, q.shape[0], step):
            qs = np.repeat(np.repeat(q[i : i + step], s, axis=0), s, axis=1)
            r0, r1 = i * s, i * s + qs.shape[0]
            _finish(hr[:, r0:r1], qs, self.out[:, y0 + r0 : y0 + r1, x0 : x0 + w],
                    self.mean, self.std)


def run_trim(x: np.ndarray, run: Runner, spec: ModelSpec, out: Output, *,
             lanes: int | None = None) -> None:
    """Local patch grid; each patch's border of ``halo`` input pixels is discarded."""
    halo, s = spec.halo, spec.scale
    _, ly, lx = x.shape
    hy, hx = ly - 2 * halo, lx - 2 * halo
    core = spec.patch_size - 2 * halo
    tiles = [(ty, tx) for ty in _even_tiles(hy, core) for tx in _even_tiles(hx, core)]
    groups: dict[tuple[int, int], list[tuple[tuple[int, int], tuple[int, int]]]] = {}
    for ty, tx in tiles:
        groups.setdefault((ty[1] - ty[0], tx[1] - tx[0]), []).append((ty, tx))
    batches = []
    for (cy, cx), members in groups.items():
        bs = run.batch_size(max(cy, cx) + 2 * halo)
        batches += [(cy, cx, members[i : i + bs]) for i in range(0, len(members), bs)]

    def make(batch: tuple) -> np.ndarray:
        return np.stack([x[:, y0 : y1 + 2 * halo, x0 : x1 + 2 * halo]
                         for (y0, y1), (x0, x1) in batch[2]])

    def consume(batch: tuple, result: np.ndarray) -> None:
        cy, cx, members = batch
        for k, ((y0, _), (x0, _)) in enumerate(members):  # a tile is final at once
            out.emit(result[k, :, halo * s : (halo + cy) * s, halo * s : (halo + cx) * s],
                     y0 * s, x0 * s)

    # each tile is final at once and owns its pixels: the lanes finish it themselves
    forward_all(run, batches, make, consume, lanes=lanes, ordered=False)


def patch_grid(start: int, length: int, patch: int, stride: int) -> list[int]:
    """Scene-anchored patch origins ``k * stride`` whose patch touches [start, start+length)."""
    first = math.ceil((start - patch + 1) / stride)
    last = (start + length - 1) // stride
    return [k * stride for k in range(first, last + 1)]


def run_feather(x: np.ndarray, run: Runner, spec: ModelSpec, gy: int, gx: int,
                out: Output, *, lanes: int | None = None) -> None:
    """Scene-anchored patch grid blended with linear ramps: chunking-independent.

    The ramps of neighbouring patches sum to one (see :func:`_ramp`), so the blend is a
    plain sum of weighted patches. The lanes weight each patch; the sums live in a
    window one patch high, filled row by row of the grid. When the next row of patches
    starts, the rows above it have every contribution and are finished into ``out``,
    and the window slides down. Each pixel's sum is taken in patch order, whatever the
    chunking or the number of lanes: the same bytes.
    """
    halo, s, p = spec.halo, spec.scale, spec.patch_size
    stride = p - spec.overlap
    _, ly, lx = x.shape
    hy, hx = (ly - 2 * halo) * s, (lx - 2 * halo) * s  # core, output pixels
    ramp = _ramp(p * s, spec.overlap * s)
    weight: Any = ramp[:, None] * ramp[None, :]  # on the device with the window, if any
    ph = p * s  # window height: one patch
    acc: Any = np.zeros((len(spec.bands_out), ph, hx), dtype=np.float32)
    if run.on_device:  # the window and the weights live beside the model's output
        acc, weight = torch.from_numpy(acc).to(run.device), torch.from_numpy(weight).to(
            run.device)
    origins = [(py, px) for py in patch_grid(gy, hy // s, p, stride)
               for px in patch_grid(gx, hx // s, p, stride)]
    bs = run.batch_size(p)
    top = (origins[0][0] - gy) * s  # core row of the window's first row (may be < 0)

    def flush(end: int) -> None:
        """Finish the window's rows above core row ``end`` and slide it down to there."""
        nonlocal top
        lo, hi = max(top, 0), min(end, hy)
        if hi > lo:
            out.emit(acc[:, lo - top : hi - top], lo, 0)
        d = min(end - top, ph)
        acc[:, : ph - d] = acc[:, d:].clone() if run.on_device else acc[:, d:]
        acc[:, ph - d :] = 0
        top = end

    def make(chunk: list[tuple[int, int]]) -> np.ndarray:
        return np.stack([
            x[:, py - gy + halo : py - gy + halo + p, px - gx + halo : px - gx + halo + p]
            for py, px in chunk
        ])

    def prepare(result: np.ndarray) -> np.ndarray:
        result *= weight
        return result

    def consume(chunk: list[tuple[int, int]], result: np.ndarray) -> None:
        for k, (py, px) in enumerate(chunk):
            oy, ox = (py - gy) * s, (px - gx) * s  # patch origin, core output pixels
            if oy != top:
                flush(oy)
            x0, x1 = max(ox, 0), min(ox + ph, hx)
            y1 = min(ph, hy - oy)  # window rows the patch covers inside the core
            acc[:, :y1, x0:x1] += result[k, :, :y1, x0 - ox : x1 - ox]

    forward_all(run, [origins[i : i + bs] for i in range(0, len(origins), bs)], make, consume,
                prepare, lanes=lanes)
    flush(hy)


_STRIP = 64  # output rows finished at once (4 bands x 64 x 5120 float32: 5 MiB)


def finish_tensor(hr: torch.Tensor, q: torch.Tensor, out_mean: torch.Tensor,
                  out_std: torch.Tensor) -> torch.Tensor:
    """Return ``hr`` de-normalised, rounded and clipped, with quality, as int16 (torch).

    The same steps as the host's :func:`_finish`, on ``hr``'s device: ``(bands + 1, h,
    w)`` int16 with the reflectance bands (nodata where ``q`` is nodata or the model gave
    NaN or inf) and the quality codes last. ``hr`` is overwritten.
    """
    hr *= out_std
    hr += out_mean
    bad = ~torch.isfinite(hr.sum(dim=0))
    q = torch.where(bad, torch.full_like(q, Quality.NODATA), q)
    hr.masked_fill_(bad, 0.0)
    torch.round(hr, out=hr)  # half to even, as numpy's rint
    hr.clamp_(OUTPUT_NODATA + 1, 32767)
    out = torch.empty((hr.shape[0] + 1, *hr.shape[1:]), dtype=torch.int16, device=hr.device)
    out[:-1] = hr.to(torch.int16).masked_fill_(q == Quality.NODATA, OUTPUT_NODATA)
    out[-1] = q.to(torch.int16)
    return out


def _finish(hr: np.ndarray, q: np.ndarray, out: np.ndarray, out_mean: np.ndarray,
            out_std: np.ndarray) -> None:
    """De-normalise, round and clip ``hr`` into ``out`` (bands + quality), in place."""
    hr *= out_std
    hr += out_mean
    bad = ~np.isfinite(hr.sum(axis=0))  # a model's NaN or inf never looks valid
    if bad.any():
        q[bad] = Quality.NODATA
        hr[:, bad] = 0.0
    np.rint(hr, out=hr)
    np.clip(hr, OUTPUT_NODATA + 1, 32767, out=hr)
    out[:-1] = hr
    nodata = q == Quality.NODATA
    if nodata.any():
        out[:-1, nodata] = OUTPUT_NODATA
    out[-1] = q
