"""The per-block super-resolution kernel that dask runs on each chunk (CPU or GPU).

One call gets one chunk plus its halo, shaped ``(bands [+ scl], h + 2 halo, w + 2 halo)``
as float32 reflectance x 10000 with NaN for nodata, and returns the chunk's output
``(len(bands_out) + 1, h * scale, w * scale)`` int16: reflectance bands, then quality.
Steps: normalise with the model's stats, fill nodata with the band mean (so it cannot
poison valid neighbours), cut patches, run them in batches on the device under
``torch.inference_mode`` (autocast on CUDA), stitch (trim or feather), de-normalise,
quantise, and write nodata wherever the input pixel was nodata.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from .bands import OUTPUT_NODATA, Quality, scl_to_quality
from .batching import INDEX_LIMIT, plan_batch_size
from .errors import ModelError
from .models.spec import ModelSpec, loaded_module

__all__ = ["KernelConfig", "resolve_device", "sr_block"]

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
_T = TypeVar("_T")


@dataclass(frozen=True)
class KernelConfig:
    """What every block task needs; small and picklable (the model loads per worker)."""

    spec: ModelSpec
    n_bands: int
    has_scl: bool
    device: str | None
    batch_size: int | None
    safe_batch: int
    peak_per_pixel: float
    precision: str
    y_starts: tuple[int, ...]
    x_starts: tuple[int, ...]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _ramp(n: int, width: int) -> np.ndarray:
    """Feather weights along one axis: linear ramps of ``width`` at both ends."""
    if width <= 0:
        return np.ones(n, dtype=np.float32)
    i = np.arange(n, dtype=np.float64)
    w = np.minimum(i + 0.5, n - i - 0.5) / width
    return np.clip(w, 1e-3, 1.0).astype(np.float32)


def _even_tiles(length: int, max_core: int) -> list[tuple[int, int]]:
    """Split ``[0, length)`` into near-equal cores of at most ``max_core``."""
    n = max(1, math.ceil(length / max_core))
    edges = [round(i * length / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


def flush_subnormals() -> bool:
    """Make CPU model threads flush subnormal floats to zero; call once, before computing.

    Subnormal activations (e.g. from zero-filled nodata pixels) run many times slower than
    normal floats on x86 CPUs: the lightweight Swin2SR at 512 px took 38.5 s with them and
    27.9 s without (benchmarks/README.md). Values below 1.2e-38 cannot change an int16
    output. The setting belongs to the calling thread and to the threads it starts later
    (dask's and torch's pools), which is why it must come first; the ``srlib`` command
    does this at start-up. It changes float behaviour for other code in the process too,
    so the library never does it on its own.

    Returns
    -------
    bool
        Whether the CPU supports it (False: nothing changed).
    """
    return bool(torch.set_flush_denormal(True))


class _Runner:
    """Runs batches of patches through the module on one device."""

    def __init__(self, cfg: KernelConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.module = loaded_module(cfg.spec, str(self.device))
        self.cuda = self.device.type == "cuda"

    def batch_size(self, patch: int) -> int:
        if self.cfg.batch_size is not None:
            return self.cfg.batch_size
        peak = math.ceil(self.cfg.peak_per_pixel * patch * patch)
        safe = min(self.cfg.safe_batch, INDEX_LIMIT // max(peak, 1))
        return plan_batch_size(peak, self.device, safe=max(safe, 1))

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        spec = self.cfg.spec
        tensor = torch.from_numpy(np.ascontiguousarray(patches))
        if self.cuda:
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        dtype = _AUTOCAST.get(self.cfg.precision) if self.cuda else None
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        ):
            out = self.module(tensor)
        n, _, h, w = patches.shape
        expected = (n, len(spec.bands_out), h * spec.scale, w * spec.scale)
        if tuple(out.shape) != expected:
            raise ModelError(
                f"model {spec.name} returned shape {tuple(out.shape)} for input "
                f"{tuple(patches.shape)}; expected {expected} (bands_out={list(spec.bands_out)}, "
                f"scale={spec.scale})"
            )
        return out.float().cpu().numpy()


def _lanes(run: _Runner) -> int:
    """Concurrent forward passes of one block: on the CPU one per torch thread.

    On a few cores, one single-threaded pass per core beats one pass spread over every
    core (PyTorch's intra-op threads meet at a barrier after every operator). Passes of
    one thread also make CPU output independent of the thread count: the same bytes from
    a laptop, a dask LocalCluster or a SLURM job. The count is the calling thread's
    ``torch.get_num_threads()``; OpenMP keeps that setting per thread, so the lanes' own
    setting never leaks to the caller. A GPU runs its batches in the calling thread (0).
    """
    return max(1, torch.get_num_threads()) if run.device.type == "cpu" else 0


_SLOTS: threading.BoundedSemaphore | None = None
_SLOTS_LOCK = threading.Lock()


def _cpu_slots() -> threading.BoundedSemaphore:
    """Process-wide bound on CPU forward passes in flight: one per usable core.

    Blocks that run at once (dask threads) each start their lanes, but only this many
    passes run together, so cores are never oversubscribed and memory holds at most one
    batch per core, however many blocks are in flight.
    """
    global _SLOTS
    with _SLOTS_LOCK:
        if _SLOTS is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            _SLOTS = threading.BoundedSemaphore(max(1, cores or os.cpu_count() or 1))
        return _SLOTS


def _forward_all(run: _Runner, batches: Sequence[_T], make: Callable[[_T], np.ndarray],
                 consume: Callable[[_T, torch.Tensor], None]) -> None:
    """Run every batch through the model and hand each result to ``consume``, in order.

    ``make`` builds a batch's input patches, ``consume`` adds its output to the block.
    The forward passes run in parallel lanes (see :func:`_lanes`); results are consumed
    strictly in batch order, one at a time, so float sums (feather blending) are the same
    whatever the number of lanes and the block is bit-for-bit reproducible.
    """
    lanes = min(_lanes(run), len(batches))
    if lanes == 0:
        for batch in batches:
            consume(batch, torch.from_numpy(run(make(batch))))
        return
    lock, failed, slots = threading.Lock(), threading.Event(), _cpu_slots()
    todo: Iterator[tuple[int, _T]] = iter(enumerate(batches))
    done: dict[int, torch.Tensor] = {}
    turn = 0  # index of the next batch to consume

    def lane() -> None:
        nonlocal turn
        torch.set_num_threads(1)  # this thread only: the caller's setting is untouched
        while not failed.is_set():
            with lock:
                i, batch = next(todo, (-1, None))
            if batch is None:
                return
            try:
                with slots:
                    done[i] = torch.from_numpy(run(make(batch)))
            except BaseException:
                failed.set()  # the other lanes stop after their batch
                raise
            with lock:  # consume whatever is next in order
                while turn in done:
                    consume(batches[turn], done.pop(turn))
                    turn += 1

    with ThreadPoolExecutor(lanes, thread_name_prefix="srlib-lane") as pool:
        for future in [pool.submit(lane) for _ in range(lanes)]:
            future.result()  # re-raise a lane's error


def _run_trim(x: np.ndarray, run: _Runner, spec: ModelSpec) -> np.ndarray:
    """Local patch grid; each patch's border of ``halo`` input pixels is discarded."""
    halo, s = spec.halo, spec.scale
    _, ly, lx = x.shape
    hy, hx = ly - 2 * halo, lx - 2 * halo
    out = np.empty((len(spec.bands_out), hy * s, hx * s), dtype=np.float32)
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

    def consume(batch: tuple, result: torch.Tensor) -> None:
        cy, cx, members = batch
        for k, ((y0, _), (x0, _)) in enumerate(members):
            out[:, y0 * s : (y0 + cy) * s, x0 * s : (x0 + cx) * s] = result[
                k, :, halo * s : (halo + cy) * s, halo * s : (halo + cx) * s
            ].numpy()

    _forward_all(run, batches, make, consume)
    return out


def _grid(start: int, length: int, patch: int, stride: int) -> list[int]:
    """Scene-anchored patch origins ``k * stride`` whose patch touches [start, start+length)."""
    first = math.ceil((start - patch + 1) / stride)
    last = (start + length - 1) // stride
    return [k * stride for k in range(first, last + 1)]


def _run_feather(x: np.ndarray, run: _Runner, spec: ModelSpec, gy: int, gx: int) -> np.ndarray:
    """Scene-anchored patch grid blended with linear ramps: chunking-independent."""
    halo, s, p = spec.halo, spec.scale, spec.patch_size
    stride = p - spec.overlap
    _, ly, lx = x.shape
    hy, hx = ly - 2 * halo, lx - 2 * halo
    ramp = _ramp(p * s, spec.overlap * s)
    weight = ramp[:, None] * ramp[None, :]
    acc = np.zeros((len(spec.bands_out), hy * s, hx * s), dtype=np.float32)
    wsum = np.zeros((hy * s, hx * s), dtype=np.float32)
    origins = [(py, px) for py in _grid(gy, hy, p, stride) for px in _grid(gx, hx, p, stride)]
    bs = run.batch_size(p)
    # accumulate through torch views of the same memory: one fused multiply-add per
    # patch, no temporaries
    acc_t, wsum_t, weight_t = map(torch.from_numpy, (acc, wsum, weight))

    def make(chunk: list[tuple[int, int]]) -> np.ndarray:
        return np.stack([
            x[:, py - gy + halo : py - gy + halo + p, px - gx + halo : px - gx + halo + p]
            for py, px in chunk
        ])

    def consume(chunk: list[tuple[int, int]], result: torch.Tensor) -> None:
        for k, (py, px) in enumerate(chunk):
            # patch extent in core-relative output pixels, clipped to the core
            oy, ox = (py - gy) * s, (px - gx) * s
            y0, y1 = max(oy, 0), min(oy + p * s, hy * s)
            x0, x1 = max(ox, 0), min(ox + p * s, hx * s)
            w = weight_t[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
            acc_t[:, y0:y1, x0:x1].addcmul_(result[k, :, y0 - oy : y1 - oy, x0 - ox : x1 - ox],
                                            w)
            wsum_t[y0:y1, x0:x1] += w

    _forward_all(run, [origins[i : i + bs] for i in range(0, len(origins), bs)], make, consume)
    acc_t.div_(wsum_t)
    return acc


def sr_block(block: np.ndarray, block_info: dict | None = None, *,
             cfg: KernelConfig) -> np.ndarray:
    """Super-resolve one chunk with its halo (see the module docstring).

    Parameters
    ----------
    block : numpy.ndarray
        ``(n_bands [+ 1], h + 2 halo, w + 2 halo)`` float32.
    block_info : dict, optional
        Dask's block information; the output chunk location anchors the patch grid.
    cfg : KernelConfig
        Model, device and grid configuration.

    Returns
    -------
    numpy.ndarray
        ``(len(bands_out) + 1, h * scale, w * scale)`` int16.
    """
    spec = cfg.spec
    halo, s = spec.halo, spec.scale
    x = np.asarray(block[: cfg.n_bands], dtype=np.float32)
    valid = np.isfinite(x).all(axis=0)
    if cfg.has_scl:
        quality = np.where(valid, scl_to_quality(block[cfg.n_bands]), Quality.NODATA)
    else:
        quality = np.where(valid, Quality.CLEAR, Quality.NODATA)
    quality = quality.astype(np.uint8)
    mean, std = spec.stats.input.arrays()
    xn = (x - mean) / std
    xn[:, quality == Quality.NODATA] = 0.0  # the band mean: neutral for the neighbours

    run = _Runner(cfg)
    if spec.blend == "trim":
        hr = _run_trim(xn, run, spec)
    else:
        iy, ix = block_info[None]["chunk-location"][1:] if block_info else (0, 0)
        hr = _run_feather(xn, run, spec, cfg.y_starts[iy], cfg.x_starts[ix])

    q = quality[halo:-halo, halo:-halo]
    q = np.repeat(np.repeat(q, s, axis=0), s, axis=1)
    out = np.empty((hr.shape[0] + 1, *hr.shape[1:]), dtype=np.int16)
    out_mean, out_std = spec.stats.output.arrays()
    for r0 in range(0, hr.shape[1], _STRIP):  # strips stay in cache through every step
        rows = slice(r0, r0 + _STRIP)
        _finish(hr[:, rows], q[rows], out[:, rows], out_mean, out_std)
    return out


_STRIP = 64  # output rows post-processed at once (4 bands x 64 x 5120 float32: 5 MiB)


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
