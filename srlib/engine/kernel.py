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

import ctypes
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from ..bands import OUTPUT_NODATA, Quality, scl_to_quality
from ..errors import InputError, ModelError
from ..models.spec import ModelSpec, loaded_module
from .batching import INDEX_LIMIT, plan_batch_size

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
    """``None`` picks CUDA when available, else the CPU; anything unusable is refused.

    Raises
    ------
    InputError
        Not a device name, not ``cpu``/``cuda[:N]``, or CUDA asked for where there is none.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"device={device!r} is not a device: use 'cpu', 'cuda' or 'cuda:N', "
                         "or leave it unset to choose automatically") from err
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device={device!r}: srlib runs on 'cpu' or 'cuda[:N]'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} but this machine has no CUDA device; use 'cpu' "
                         "or leave it unset to choose automatically")
    return dev


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


def flush_subnormals() -> bool:
    """Make CPU model threads flush subnormal floats to zero; call once, before computing.

    Subnormal activations (e.g. from zero-filled nodata pixels) run many times slower than
    normal floats on x86 CPUs (benchmarks/README.md has the figures). Values below
    1.2e-38 cannot change an int16
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
        if not isinstance(out, torch.Tensor):
            raise ModelError(
                f"model {spec.name} returned a {type(out).__name__}, not a tensor; its forward "
                "must return one (N, bands_out, h * scale, w * scale) tensor: wrap it to "
                "return only the image")
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
    """Concurrent forward passes of one block: the process's lanes on the CPU, else 0.

    A GPU runs its batches in the calling thread (0).
    """
    return _process_lanes().lanes if run.device.type == "cpu" else 0


class _Lanes:
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


_LANES: _Lanes | None = None
_LANES_LOCK = threading.Lock()


def _process_lanes() -> _Lanes:
    global _LANES
    with _LANES_LOCK:
        if _LANES is None:
            _LANES = _Lanes()
        return _LANES


def _forget_lanes() -> None:  # a forked child has none of its parent's threads
    global _LANES
    _LANES = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_lanes)


def _forward_all(run: _Runner, batches: Sequence[_T], make: Callable[[_T], np.ndarray],
                 consume: Callable[[_T, np.ndarray], None],
                 prepare: Callable[[np.ndarray], np.ndarray] = lambda r: r) -> None:
    """Run every batch through the model and hand each result to ``consume``, in order.

    ``make`` builds a batch's input patches; ``prepare`` post-processes the model's
    output patch by patch (in the lanes, in parallel); ``consume`` adds it to the block.
    The forward passes run in parallel lanes (see :class:`_Lanes`) while the calling
    thread consumes their results strictly in batch order, so float sums (feather
    blending) are the same whatever the number of lanes and the block is bit-for-bit
    reproducible. The lanes stop taking batches while ``lanes`` results wait, which bounds
    the memory that finished batches hold.
    """
    n = min(_lanes(run), len(batches))
    if n == 0:
        for batch in batches:
            consume(batch, prepare(run(make(batch))))
        return
    lanes = _process_lanes()
    n = lanes.take(n)
    changed, failed = threading.Condition(), threading.Event()
    todo: Iterator[tuple[int, _T]] = iter(enumerate(batches))
    done: dict[int, np.ndarray] = {}

    def lane() -> None:
        try:
            while not failed.is_set():
                with changed:
                    changed.wait_for(lambda: len(done) < n or failed.is_set())
                    i, batch = next(todo, (-1, None))
                if batch is None:
                    return
                result = prepare(run(make(batch)))
                with changed:
                    done[i] = result
                    changed.notify_all()
        except BaseException:
            failed.set()  # the other lanes stop after their batch, the caller at once
            raise
        finally:
            lanes.give()  # this lane's core, as soon as it has no batch left
            with changed:
                changed.notify_all()

    futures = [lanes.pool.submit(lane) for _ in range(n)]
    try:
        for turn, batch in enumerate(batches):
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


class _Output:
    """The block's int16 output, finished region by region as the model produces it.

    A region of model output (normalised float32) is final once no other patch adds to
    it; it is then de-normalised, quantised and written here at once, so a block
    never holds a float32 copy of its whole output and its peak memory is the int16 output
    plus one row of patches.
    """

    def __init__(self, spec: ModelSpec, quality: np.ndarray) -> None:
        self.s = spec.scale
        self.quality = quality  # core quality at input resolution, uint8
        h, w = quality.shape
        self.out = np.empty((len(spec.bands_out) + 1, h * self.s, w * self.s), dtype=np.int16)
        self.mean, self.std = spec.stats.output.arrays()

    def emit(self, hr: np.ndarray, y0: int, x0: int) -> None:
        """Finish ``hr`` (bands, rows, cols) into the output at output pixel (y0, x0).

        ``y0``, ``x0`` and the extent of ``hr`` are multiples of the scale. ``hr`` is
        overwritten.
        """
        s = self.s
        h, w = hr.shape[1:]
        q = self.quality[y0 // s : (y0 + h) // s, x0 // s : (x0 + w) // s]
        step = max(1, _STRIP // s)  # input rows per strip: strips stay in cache
        for i in range(0, q.shape[0], step):
            qs = np.repeat(np.repeat(q[i : i + step], s, axis=0), s, axis=1)
            r0, r1 = i * s, i * s + qs.shape[0]
            _finish(hr[:, r0:r1], qs, self.out[:, y0 + r0 : y0 + r1, x0 : x0 + w],
                    self.mean, self.std)


def _run_trim(x: np.ndarray, run: _Runner, spec: ModelSpec, out: _Output) -> None:
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

    _forward_all(run, batches, make, consume)


def _grid(start: int, length: int, patch: int, stride: int) -> list[int]:
    """Scene-anchored patch origins ``k * stride`` whose patch touches [start, start+length)."""
    first = math.ceil((start - patch + 1) / stride)
    last = (start + length - 1) // stride
    return [k * stride for k in range(first, last + 1)]


def _run_feather(x: np.ndarray, run: _Runner, spec: ModelSpec, gy: int, gx: int,
                 out: _Output) -> None:
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
    weight = ramp[:, None] * ramp[None, :]
    ph = p * s  # window height: one patch
    acc = np.zeros((len(spec.bands_out), ph, hx), dtype=np.float32)
    origins = [(py, px) for py in _grid(gy, hy // s, p, stride)
               for px in _grid(gx, hx // s, p, stride)]
    bs = run.batch_size(p)
    top = (origins[0][0] - gy) * s  # core row of the window's first row (may be < 0)

    def flush(end: int) -> None:
        """Finish the window's rows above core row ``end`` and slide it down to there."""
        nonlocal top
        lo, hi = max(top, 0), min(end, hy)
        if hi > lo:
            out.emit(acc[:, lo - top : hi - top], lo, 0)
        d = min(end - top, ph)
        acc[:, : ph - d] = acc[:, d:]
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

    _forward_all(run, [origins[i : i + bs] for i in range(0, len(origins), bs)], make, consume,
                 prepare)
    flush(hy)


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
    halo = spec.halo
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
    out = _Output(spec, quality[halo:-halo, halo:-halo])
    if spec.blend == "trim":
        _run_trim(xn, run, spec, out)
    else:
        iy, ix = block_info[None]["chunk-location"][1:] if block_info else (0, 0)
        _run_feather(xn, run, spec, cfg.y_starts[iy], cfg.x_starts[ix], out)
    del x, xn, valid, quality
    _release_free_memory()
    return out.out


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc (Linux); absent elsewhere
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _release_free_memory() -> None:
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


_STRIP = 64  # output rows finished at once (4 bands x 64 x 5120 float32: 5 MiB)


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
