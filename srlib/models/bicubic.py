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

    def peak_elements(self, patch: int) -> int:
        """Elements per sample of the largest tensor :meth:`forward` makes.

        For a ``patch`` px input: the output, the padded input or the rows upsampled, on
        the one-strip path (the CPU's strips are smaller). srlib's batch limits take it
        instead of a meta-device pass, whose first use costs a process ~1.5 s.
        """
        c, s = len(self.channels), self.scale
        return c * max((patch * s) ** 2, (patch + 4) ** 2, patch * s * (patch + 4))

    def _along(self, xp: torch.Tensor, dim: int, out: torch.Tensor) -> None:
        """Upsample ``xp``, padded by 2 along ``dim`` (2 or 3), into ``out`` (scaled)."""
        n = xp.shape[dim] - 4
        shifted = [xp.narrow(dim, j, n) for j in range(5)]
        shape = list(shifted[0].shape)
        shape.insert(dim + 1, self.scale)
        phases = out.view(shape)  # (..., n, scale, ...): one view per output phase
        acc, term = torch.empty_like(shifted[0]), torch.empty_like(shifted[0])
        # the same products and the same sums in the same order as
        # ``acc = shifted[0] * w[0]; acc = acc + shifted[j] * w[j]``, written in place:
        # two buffers instead of ~100 temporaries (a page fault storm where malloc hands
        # large blocks back to the OS at once, as in dask's worker processes)
        for phase in range(self.scale):
            w = self.taps[phase]
            torch.mul(shifted[0], w[0], out=acc)
            for j in range(1, 5):
                torch.mul(shifted[j], w[j], out=term)
                acc.add_(term)
            phases.select(dim + 1, phase).copy_(acc)

    def _strip(self, xp: torch.Tensor, out: torch.Tensor) -> None:
        """Upsample rows ``xp`` (padded by 2 on every side) into ``out``."""
        n, c, h, w = xp.shape
        tall = xp.new_empty((n, c, (h - 4) * self.scale, w))  # rows upsampled
        self._along(xp, 2, tall)
        self._along(tall, 3, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``(N, C, H, W)`` to ``(N, len(channels), H * scale, W * scale)``.

        Strip by strip of input rows, so that a strip's intermediates stay in the CPU's
        cache (one strip on a GPU, in a trace or a compile): each output value is still
        the same sum, 1.7x faster on the CPU than whole passes, whose ten-fold
        intermediates went through memory ten times.
        """
        x = x.index_select(1, self.channels)
        n, c, h, w = x.shape
        s = self.scale
        out = x.new_empty((n, c, h * s, w * s))
        xp = nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
        if _one_strip(x):
            self._strip(xp, out)
            return out
        rows = max(1, _STRIP_BYTES // (n * c * s * (w + 4) * x.element_size()))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            self._strip(xp[:, :, r0 : r1 + 4], out[:, :, r0 * s : r1 * s])
        return out


#: Bytes of one strip's row-upsampled intermediate (see :meth:`Bicubic.forward`).
_STRIP_BYTES = 512 << 10


def _one_strip(x: torch.Tensor) -> bool:
    """Whether to upsample in one strip: on a GPU, or in a trace or a compile.

    A trace or a compile would freeze the strip loop into a graph for one input size.
    """
    compiling = getattr(torch.compiler, "is_compiling", lambda: False)()
    return x.device.type != "cpu" or torch.jit.is_tracing() or bool(compiling)


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
