"""The model seam: a small frozen spec that travels to workers and loads weights once."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..errors import ModelError
from .stats import Stats

__all__ = ["Compiled", "ModelSpec", "compile_seconds", "loaded_module", "module_token",
           "provenance", "spec_identity"]

Blend = Literal["trim", "feather"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything srlib needs to run a model, small and picklable.

    Parameters
    ----------
    name : str
        Human-readable name (``"bicubic"``, ``"swin2sr"``, ...).
    bands_in, bands_out : tuple of str
        Input bands (model channel order) and output bands.
    scale : int
        Upscaling factor.
    stats : Stats
        Normalisation statistics.
    build : callable
        Zero-argument, picklable factory returning the ``torch.nn.Module`` on the CPU.
        Called once per worker process and device (see :func:`loaded_module`).
    token : str
        Deterministic identity of architecture and weights (dask names, the model cache).
    blend : {"trim", "feather"}
        ``"trim"``: the model has a finite receptive field of ``halo`` input pixels; blocks
        are cut into patches overlapping by ``2 * halo`` whose borders are trimmed, which
        gives results independent of the chunking. ``"feather"``: patches of
        ``patch_size`` on a grid anchored to the scene (stride ``patch_size - overlap``)
        are blended with linear ramps over the overlap; ``halo`` must be at least
        ``patch_size`` so that every patch that touches a chunk lies inside its halo.
    patch_size : int
        Input patch side in pixels (the largest for ``"trim"``, the exact one for
        ``"feather"``).
    overlap : int
        Overlap of neighbouring patches for ``"feather"``, at most ``patch_size // 2``
        (where it is larger, the blend ramps of neighbouring patches would not sum to one).
    halo : int
        Context in input pixels added around each dask chunk.
    peak_channels : int
        Channels of the model's largest activation at the output resolution, per sample
        (used by the batch planner with PyTorch's 2**31 element limit). ``0`` lets the
        planner measure it with a meta-device forward pass.
    architecture : str
        The registered architecture (``""`` for a module given as an object).
    config : tuple of (str, object)
        The architecture's options, as sorted items.
    version : str
        The model's version (from its model card).
    checkpoint : str, optional
        Absolute path of the weights file.
    checkpoint_sha256 : str
        SHA-256 of the weights file (verified before loading when a card gives it).
    compile : bool
        Run the module through ``torch.compile`` (compiled once per worker process and
        device, on its first batch; the time it took is logged and kept, see
        :func:`compile_seconds`).
    metrics : str
        The figures ``srlib bench --write-card`` recorded in the model's card (JSON), named
        in the products' STAC Items; not part of the model's identity.
    """

    name: str
    bands_in: tuple[str, ...]
    bands_out: tuple[str, ...]
    scale: int
    stats: Stats
    build: Callable[[], torch.nn.Module] = field(repr=False)
    token: str
    blend: Blend = "trim"
    patch_size: int = 256
    overlap: int = 0
    halo: int = 2
    peak_channels: int = 0
    architecture: str = ""
    config: tuple[tuple[str, object], ...] = ()
    version: str = ""
    checkpoint: str | None = None
    checkpoint_sha256: str = ""
    compile: bool = False
    metrics: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.stats.input.bands) != len(self.bands_in):
            raise ModelError(f"{self.name}: stats cover {len(self.stats.input.bands)} input bands, "
                             f"the model takes {len(self.bands_in)}")
        if self.scale < 1:
            raise ModelError(f"{self.name}: scale must be a positive integer, got {self.scale}")
        if self.blend == "feather":
            if not 0 <= self.overlap <= self.patch_size // 2:
                raise ModelError(f"{self.name}: overlap {self.overlap} must be in "
                                 f"[0, patch_size // 2 = {self.patch_size // 2}]: the blend "
                                 "ramps of neighbouring patches must sum to one")
            if self.halo < self.patch_size:
                raise ModelError(f"{self.name}: feather blending needs halo >= patch_size")
        elif self.patch_size <= 2 * self.halo:
            raise ModelError(f"{self.name}: patch_size {self.patch_size} must exceed 2 * halo")


_CACHE: dict[tuple[str, str, bool], torch.nn.Module | Compiled] = {}
_LOCK = threading.Lock()
log = logging.getLogger("srlib")


class Compiled:
    """A module run through ``torch.compile``, with the seconds its compilations took.

    torch compiles on the first call with each new input shape (a block's last, smaller
    batch; a trim model's edge patches), then marks the shape dynamic. Those first calls
    run one at a time, so that threads (CPU lanes) wait for one compilation rather than
    compile the same graph at once; the time they take is added to :attr:`seconds`.
    """

    def __init__(self, module: torch.nn.Module, name: str) -> None:
        self.module = module
        self.name = name
        self.compiled = torch.compile(module)
        self.seconds = 0.0
        self._shapes: set[tuple[int, ...]] = set()
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run the compiled module (compiling first, one thread at a time, for a new shape)."""
        shape = tuple(x.shape)
        if shape not in self._shapes:
            with self._lock:
                if shape not in self._shapes:
                    t0 = time.perf_counter()
                    out = self.compiled(x)
                    took = time.perf_counter() - t0
                    self.seconds += took
                    self._shapes.add(shape)
                    log.info("compiled %s for input %s in %.1f s", self.name, shape, took)
                    return out
        return self.compiled(x)


def loaded_module(spec: ModelSpec, device: str) -> torch.nn.Module | Compiled:
    """Return the spec's module on ``device``, building it once per process.

    Dask workers call this from every task; the first call builds the model and moves it
    to the device, later calls (other blocks, other threads) reuse it. With
    ``spec.compile``, the module is wrapped in :class:`Compiled`.
    """
    key = (spec.token, device, spec.compile)
    module = _CACHE.get(key)
    if module is None:
        with _LOCK:
            module = _CACHE.get(key)
            if module is None:
                module = spec.build().eval().to(device)
                if spec.compile:
                    module = Compiled(module, spec.name)
                _CACHE[key] = module
    return module


def compile_seconds(spec: ModelSpec, device: str) -> float | None:
    """Return the seconds this process spent compiling the spec's module for ``device``.

    None when it was not compiled in this process.
    """
    module = _CACHE.get((spec.token, device, True))
    return module.seconds if isinstance(module, Compiled) else None


def state_token(module: torch.nn.Module, *parts: object) -> str:
    """Hash a module's state dict (names, shapes and bytes) together with ``parts``."""
    digest = hashlib.sha256(repr(parts).encode())
    digest.update(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def module_token(module: torch.nn.Module, *parts: object) -> str:
    """Identity of a module given as an object: what it computes, not just its weights.

    A TorchScript module is hashed by its serialised form (code and weights). A Python
    module by its class's source code, its pickled state (weights and attributes) and
    ``parts``. When neither can be established, a random token is returned: the module
    then runs, but a store it wrote is never resumed (nothing could prove it is the same
    model).
    """
    import inspect
    import io
    import uuid

    digest = hashlib.sha256(repr(parts).encode())
    if isinstance(module, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        digest.update(buffer.getvalue())
        return "ts-" + digest.hexdigest()[:16]
    try:
        for name, sub in module.named_modules():
            digest.update(f"{name}:{type(sub).__module__}.{type(sub).__qualname__}".encode())
            for cls in type(sub).__mro__:
                if cls.__module__.split(".")[0] in ("torch", "builtins"):
                    break
                digest.update(inspect.getsource(cls).encode())
            for key, value in sorted(vars(sub).items()):
                if key.startswith("_") or isinstance(value, torch.nn.Module):
                    continue
                digest.update(key.encode())
                digest.update(_attribute_bytes(value))
        digest.update(state_token(module).encode())
    except (OSError, TypeError, ValueError):
        return "unidentified-" + uuid.uuid4().hex[:16]
    return "py-" + digest.hexdigest()[:16]


def _attribute_bytes(value: object) -> bytes:
    """Deterministic bytes of a module attribute; TypeError when there are none."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().numpy().tobytes()
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return repr(value).encode()
    if isinstance(value, list | tuple):
        return b"[" + b",".join(_attribute_bytes(v) for v in value) + b"]"
    if isinstance(value, dict):
        return b"{" + b",".join(repr(k).encode() + b":" + _attribute_bytes(v)
                                for k, v in sorted(value.items(), key=repr)) + b"}"
    raise TypeError(f"no stable identity for a {type(value).__name__} attribute")


def provenance(spec: ModelSpec) -> dict[str, Any]:
    """Return the model's name, version and checkpoint SHA-256 (for products, records)."""
    out: dict[str, Any] = {"name": spec.name, "version": spec.version,
                           "checkpoint_sha256": spec.checkpoint_sha256,
                           "identity": spec_identity(spec)}
    if spec.metrics:  # srlib bench's figures from the card, where it has them
        recorded = json.loads(spec.metrics)
        wald = {scene: {k: v["wald"][k] for k in ("psnr", "sam_deg", "ergas")}
                for scene, v in recorded.get("model", {}).items()}
        out["metrics"] = {"srlib": recorded.get("srlib"), "scenes": recorded.get("scenes"),
                          "wald": wald, "baselines": recorded.get("baselines")}
    return out


def spec_identity(spec: ModelSpec) -> str:
    """Identity of everything in a spec that changes the output.

    The architecture and weights (``token``), bands, scale, normalisation statistics and
    patch geometry. Used in the product's dask names (hence the Zarr store's identity)
    and in manifests.
    """
    parts: tuple[object, ...] = (spec.token, spec.name, spec.bands_in, spec.bands_out,
                                 spec.scale, repr(spec.stats), spec.blend, spec.patch_size,
                                 spec.overlap, spec.halo)
    if spec.version or spec.checkpoint_sha256:  # (older identities stay as they were)
        parts = (*parts, spec.version, spec.checkpoint_sha256)
    if spec.compile:  # compiled kernels round differently (within 1e-5 in float32)
        parts = (*parts, "compiled")
    return f"{spec.name}-{hashlib.sha256(repr(parts).encode()).hexdigest()[:16]}"
