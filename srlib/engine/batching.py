"""Batch sizes that respect PyTorch's 2**31-element limit and the device's memory.

Every tensor a model makes must hold fewer than 2**31 elements (32-bit index math in
many CUDA and CPU kernels: upsampling, convolutions, padding; past it they crash or,
worse, return zeros). The largest tensor grows with ``batch x channels x height x width``
at the output resolution, so the batch is bounded by ``(2**31 - 1) // peak_per_sample``.
"""

from __future__ import annotations

import copy

import torch

from ..errors import BatchSizeError
from ..models.spec import ModelSpec
from ..models.swin2sr import WindowAttention

__all__ = ["INDEX_LIMIT", "max_safe_batch", "peak_elements", "plan_batch_size"]

#: Largest element count of one tensor that PyTorch kernels index safely.
INDEX_LIMIT = 2**31 - 1

_PEAKS: dict[tuple[str, int], int] = {}


def _measure_on_meta(spec: ModelSpec, patch: int) -> int:
    """Largest module output (elements per sample) in a meta-device forward pass.

    A module that counts its own (a ``peak_elements(patch)`` method, as
    :class:`~srlib.models.bicubic.Bicubic`) is asked instead: PyTorch loads its meta
    kernels on their first use, ~1.5 s of every process that plans a batch.
    """
    module = spec.build()
    own = getattr(module, "peak_elements", None)
    if callable(own):
        return int(own(patch))
    module = copy.deepcopy(module).to("meta")
    # fused attention (SDPA) hides its attention map from the hooks, and its math backend
    # makes one too: measure the explicit path
    for m in module.modules():
        if isinstance(m, WindowAttention):
            m.sdpa = False
    peak = 0

    def hook(_mod: torch.nn.Module, _inp: object, out: object) -> None:
        nonlocal peak
        outs = out if isinstance(out, tuple | list) else (out,)
        for t in outs:
            if isinstance(t, torch.Tensor):
                peak = max(peak, t.numel())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.inference_mode():
            module(torch.empty((1, len(spec.bands_in), patch, patch), device="meta"))
    finally:
        for h in handles:
            h.remove()
    return peak


def peak_elements(spec: ModelSpec, patch: int) -> int:
    """Elements of the largest tensor the model makes for one input patch.

    The maximum of the input, the output at ``peak_channels`` channels, and (when the
    module allows it) every module output of a meta-device forward pass, which costs no
    memory and no compute.

    Parameters
    ----------
    spec : ModelSpec
        The model.
    patch : int
        Input patch side in pixels.

    Returns
    -------
    int
    """
    key = (spec.token, patch)
    if key not in _PEAKS:
        hr = (patch * spec.scale) ** 2
        analytic = max(len(spec.bands_in) * patch**2,
                       max(spec.peak_channels, len(spec.bands_out)) * hr)
        try:
            measured = _measure_on_meta(spec, patch)
        except Exception:  # TorchScript or ops without meta kernels: stay analytic
            measured = 0 if spec.peak_channels else 64 * hr
        _PEAKS[key] = max(analytic, measured)
    return _PEAKS[key]


def max_safe_batch(spec: ModelSpec, patch: int) -> int:
    """Largest batch whose every tensor stays below 2**31 elements (0 if none does)."""
    return INDEX_LIMIT // peak_elements(spec, patch)


def check_batch_size(spec: ModelSpec, patch: int, batch_size: int | None) -> int:
    """Validate a requested batch size before any compute; return the safe maximum.

    Raises
    ------
    BatchSizeError
        When even one patch, or the requested batch, would exceed the 2**31 limit.
    """
    safe = max_safe_batch(spec, patch)
    if safe < 1:
        smaller = patch
        while smaller > 8 and max_safe_batch(spec, smaller) < 1:
            smaller //= 2
        raise BatchSizeError(
            f"one {patch} px patch of {spec.name} makes a tensor of {peak_elements(spec, patch):,} "
            f"elements, over PyTorch's 2**31 limit; use patch_size={smaller} or smaller"
        )
    if batch_size is not None:
        if batch_size < 1:
            raise BatchSizeError(f"batch_size must be a positive integer, got {batch_size}")
        if batch_size > safe:
            raise BatchSizeError(
                f"batch_size={batch_size} with {patch} px patches of {spec.name} makes a tensor "
                f"of {batch_size * peak_elements(spec, patch):,} elements, over PyTorch's 2**31 "
                f"limit; the largest safe batch_size is {safe}"
            )
    return safe


def plan_batch_size(peak: int, device: torch.device, *, safe: int) -> int:
    """Choose a batch size from free device memory, capped at the 2**31-safe ``safe``.

    ``peak`` is the largest activation of one sample in elements. On CUDA about half of
    the free memory is budgeted at ~8 float32 copies of it per sample. On the CPU the
    batch is at most 2: beyond it, larger batches run slower on the CPU (cache effects;
    the figures are in benchmarks/README.md); a 512 MiB budget per task bounds it further.
    """
    per_sample = peak * 4 * 8
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget, cap = free // 2, 256
    else:
        budget, cap = 512 * 2**20, 2
    return max(1, min(safe, cap, budget // per_sample))
