"""Bicubic interpolation: a deterministic, weight-free baseline.

This is **not** super-resolution: it adds no detail. It is the reference for speed, for
the output path, and for checking that the pipeline does not depend on the chunking.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from .registry import BuildRequest, register_architecture
from .spec import ModelSpec

__all__ = ["Bicubic", "BicubicConfig", "cubic_weights"]


def cubic_weights(scale: int, a: float = -0.5) -> np.ndarray:
    """Return the 4 Keys-cubic taps for each of the ``scale`` output phases.

    Output pixel ``i`` of an input pixel ``k`` sits at input coordinate
    ``k + (i + 0.5) / scale - 0.5`` (pixel-centre alignment, as GDAL and PyTorch with
    ``align_corners=False``); its taps are input pixels ``k - 2 .. k + 1`` for the left
    phases and ``k - 1 .. k + 2`` for the right ones, expressed here relative to
    ``k - 2 .. k + 2`` (5 taps, one always zero).
    """
    weights = np.zeros((scale, 5), dtype=np.float64)
    for phase in range(scale):
        t = (phase + 0.5) / scale - 0.5  # offset from pixel k, in (-0.5, 0.5)
        for j, tap in enumerate(range(-2, 3)):
            d = abs(t - tap)
            if d < 1:
                w = (a + 2) * d**3 - (a + 3) * d**2 + 1
            elif d < 2:
                w = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
            else:
                w = 0.0
            weights[phase, j] = w
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


class Bicubic(nn.Module):
    """Separable bicubic upsampling of selected channels, with a 2-pixel receptive radius.

    Every output value is the same fixed-order sum of 5 x 5 taps wherever the block
    boundaries fall, so results are bit-identical for any chunking. Edge pixels need
    2 pixels of context, which srlib's halo (reflect-padded at the scene edge) supplies;
    the module itself replicates edges for standalone use.

    Parameters
    ----------
    scale : int
        Upscaling factor.
    channels : list of int
        Input channels to upsample, in output order.
    """

    channels: torch.Tensor
    taps: torch.Tensor

    def __init__(self, scale: int, channels: list[int]) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("channels", torch.tensor(channels, dtype=torch.long), persistent=False)
        self.register_buffer("taps", torch.from_numpy(cubic_weights(scale)), persistent=False)

    def _along(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        pad = (2, 2, 0, 0) if dim == 3 else (0, 0, 2, 2)  # F.pad lists the last dim first
        xp = nn.functional.pad(x, pad, mode="replicate")
        shifted = [xp.narrow(dim, j, n) for j in range(5)]
        shape = list(x.shape)
        shape.insert(dim + 1, self.scale)
        out = x.new_empty(shape)  # (..., n, scale, ...)
        acc, term = torch.empty_like(shifted[0]), torch.empty_like(shifted[0])
        # the same products and the same sums in the same order as
        # ``acc = shifted[0] * w[0]; acc = acc + shifted[j] * w[j]``, written in place:
        # three buffers instead of ~100 temporaries (a page fault storm where malloc hands
        # large blocks back to the OS at once, as in dask's worker processes)
        for phase in range(self.scale):
            w = self.taps[phase]
            torch.mul(shifted[0], w[0], out=acc)
            for j in range(1, 5):
                torch.mul(shifted[j], w[j], out=term)
                acc.add_(term)
            out.select(dim + 1, phase).copy_(acc)
        shape = list(x.shape)
        shape[dim] = n * self.scale
        return out.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``(N, C, H, W)`` to ``(N, len(channels), H * scale, W * scale)``."""
        x = x.index_select(1, self.channels)
        return self._along(self._along(x, 2), 3)


@dataclass(frozen=True)
class BicubicConfig:
    """Bicubic takes no options."""


def _build(scale: int, channels: tuple[int, ...]) -> nn.Module:
    return Bicubic(scale, list(channels))


def _spec(config: BicubicConfig, req: BuildRequest) -> ModelSpec:
    if req.checkpoint is not None:
        raise ModelError("bicubic has no weights: a checkpoint would be ignored; drop it, or "
                         "name the architecture the checkpoint belongs to")
    missing = [b for b in req.bands_out if b not in req.bands_in]
    if missing:
        raise ModelError(f"bicubic copies bands from the input; {missing} are not inputs")
    channels = tuple(req.bands_in.index(b) for b in req.bands_out)
    digest = hashlib.sha256(repr(req.stats).encode()).hexdigest()[:12]
    return ModelSpec(
        name=req.name or "bicubic", bands_in=req.bands_in, bands_out=req.bands_out,
        scale=req.scale, stats=req.stats, build=functools.partial(_build, req.scale, channels),
        token=f"bicubic-{req.scale}-{channels}-{digest}",
        blend="trim", patch_size=req.patch_size or 256, halo=req.halo or 2,
        peak_channels=len(req.bands_out) * 2, architecture="bicubic", version=req.version,
    )


register_architecture("bicubic", BicubicConfig, _spec)
