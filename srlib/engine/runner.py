"""The model runner: a device, the model loaded once per process, batches through it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError, ModelError
from ..models.spec import ModelSpec, loaded_module
from .batching import INDEX_LIMIT, plan_batch_size

__all__ = ["AUTOCAST", "KernelConfig", "Runner", "flush_subnormals", "resolve_device"]

#: Autocast dtypes of the CUDA precisions (the CPU always runs float32).
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    lanes: int | None = None  #: CPU passes at once (None: one per core; 0: sequential)
    #: Where blending, de-normalisation and quantisation run: "device" (in torch, on the
    #: model's device) or "host" (numpy); None: on the device on CUDA, else on the host.
    post: str | None = None


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


class Runner:
    """Runs batches of patches through the module on one device."""

    def __init__(self, cfg: KernelConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.module = loaded_module(cfg.spec, str(self.device))
        self.cuda = self.device.type == "cuda"
        #: results stay torch tensors on the device, finished there (see .stitching)
        self.on_device = cfg.post == "device" or (cfg.post is None and self.cuda)

    def upload(self, patches: np.ndarray) -> torch.Tensor:
        """Return a batch as a tensor on the device (pinned and copied asynchronously)."""
        tensor = torch.from_numpy(np.ascontiguousarray(patches))
        if self.cuda:
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def batch_size(self, patch: int) -> int:
        """Patches of side ``patch`` per forward pass (given, or planned for the device)."""
        if self.cfg.batch_size is not None:
            return self.cfg.batch_size
        peak = math.ceil(self.cfg.peak_per_pixel * patch * patch)
        safe = min(self.cfg.safe_batch, INDEX_LIMIT // max(peak, 1))
        return plan_batch_size(peak, self.device, safe=max(safe, 1))

    def __call__(self, patches: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Run one batch ``(n, bands_in, h, w)``; return ``(n, bands_out, h * s, w * s)``.

        float32; a tensor on the device when :attr:`on_device`, else a numpy array.
        """
        spec = self.cfg.spec
        tensor = patches if isinstance(patches, torch.Tensor) else self.upload(patches)
        dtype = AUTOCAST.get(self.cfg.precision) if self.cuda else None
        # results finished on the device are updated in place afterwards, which
        # inference-mode tensors refuse outside inference mode: no_grad there
        grad_off = torch.no_grad() if self.on_device else torch.inference_mode()
        with grad_off, torch.autocast(
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
        return out.float() if self.on_device else out.float().cpu().numpy()
