"""TorchScript models: a serialised module whose file is its identity.

The module maps ``(N, len(bands_in), h, w)`` normalised input to
``(N, len(bands_out), h * scale, w * scale)``. It is loaded from its file once per worker
process (never pickled into the graph), and its SHA-256 is its identity.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..hashing import sha256_file
from .checkpoint import read_checkpoint
from .registry import BuildRequest, register_architecture
from .spec import ModelSpec

__all__ = ["TorchScriptConfig"]


@dataclass(frozen=True)
class TorchScriptConfig:
    """A TorchScript model takes no options: its file holds code and weights."""


def _build(path: str) -> torch.nn.Module:
    module = read_checkpoint(path)
    if not isinstance(module, torch.jit.ScriptModule):
        raise ModelError(f"{path} is not a TorchScript module; give its architecture "
                         "(e.g. swin2sr) in the model card instead")
    return module


def _spec(config: TorchScriptConfig, req: BuildRequest) -> ModelSpec:
    if req.checkpoint is None:
        raise ModelError("a torchscript model needs its file: give 'checkpoint' in the card")
    path = str(Path(req.checkpoint).resolve())
    _build(path)  # fail on the client if the file is not a TorchScript module
    sha = req.checkpoint_sha256 or sha256_file(path)
    common: dict[str, Any] = dict(name=req.name or "torchscript", bands_in=req.bands_in,
                  bands_out=req.bands_out, scale=req.scale, stats=req.stats,
                  build=functools.partial(_build, path), token=f"ts-{sha[:16]}",
                  architecture="torchscript", version=req.version, checkpoint=path,
                  checkpoint_sha256=sha)
    if req.blend == "trim":
        if req.halo is None:
            raise ModelError("blend 'trim' needs halo (the model's receptive radius in input "
                             "pixels)")
        return ModelSpec(**common, blend="trim", patch_size=req.patch_size or 256,
                         halo=req.halo)
    if req.blend not in (None, "feather"):
        raise ModelError(f"blend must be 'feather' or 'trim', got {req.blend!r}")
    p = req.patch_size or 64
    return ModelSpec(**common, blend="feather", patch_size=p,
                     overlap=p // 4 if req.overlap is None else req.overlap,
                     halo=max(req.halo or p, p))


register_architecture("torchscript", TorchScriptConfig, _spec)
