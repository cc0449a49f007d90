"""Swin2SR (Conde et al., 2022): SwinV2 blocks for image super-resolution.

Written for srlib with the state-dict layout of the public reference implementation
(``mv-lab/swin2sr``, ``models/network_swin2sr.py``), so that its checkpoints load with
``strict=True``. Differences, all backwards compatible with the reference layout:

- ``out_chans`` may differ from ``in_chans`` (10 Sentinel-2 bands in, 4 out);
- :class:`Upsample` (``pixelshuffle``, ``pixelshuffle_hf``) handles any scale whose prime
  factors are 2, 3 and 5, as one conv + pixel-shuffle stage per factor in ascending
  order (scale 10 is 2 then 5); for 2**n and 3 this is the reference's exact layout;
- ``nearest+conv`` likewise gets one ``conv_up{i}`` per prime factor (the reference
  supports only x4, which keeps its ``conv_up1``/``conv_up2``);
- ``pixelshuffle_hf`` returns the final (sum) image only, not the reference's 3-tuple.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..hashing import sha256_file
from .checkpoint import load_state_dict, read_checkpoint
from .registry import BuildRequest, register_architecture
from .spec import ModelSpec

__all__ = ["UPSAMPLERS", "Swin2SR", "Swin2SRConfig", "prime_factors"]

UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "pixelshuffle_hf", "nearest+conv", "")


def prime_factors(scale: int) -> list[int]:
    """Split ``scale`` into ascending factors of 2, 3 and 5, or raise ModelError."""
    factors, rest = [], scale
    for f in (2, 3, 5):
        while rest % f == 0:
            factors.append(f)
            rest //= f
    if rest != 1 or scale < 2:
        raise ModelError(
            f"Swin2SR upsampling by {scale} is not supported: the scale must be a product of "
            "2, 3 and 5 (for example 2, 3, 4, 5, 6, 8, 10)"
        )
    return factors


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c)


def _window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


class Mlp(nn.Module):
    """Two-layer perceptron of a transformer block."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP."""
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Scaled-cosine window attention with a continuous position bias (SwinV2)."""

    relative_coords_table: torch.Tensor
    relative_position_index: torch.Tensor

    def __init__(self, dim: int, window: int, heads: int, qkv_bias: bool = True,
                 pretrained_window: int = 0) -> None:
        super().__init__()
        self.dim, self.window, self.heads = dim, window, heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True), nn.Linear(512, heads, bias=False)
        )
        span = torch.arange(-(window - 1), window, dtype=torch.float32)
        table = torch.stack(torch.meshgrid(span, span, indexing="ij")).permute(1, 2, 0)
        table = table.contiguous().unsqueeze(0)  # 1, 2W-1, 2W-1, 2
        norm = (pretrained_window if pretrained_window > 0 else window) - 1
        table = table / max(norm, 1) * 8
        table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
        self.register_buffer("relative_coords_table", table)
        pos = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                         indexing="ij")).flatten(1)
        rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += window - 1
        rel[:, :, 1] += window - 1
        rel[:, :, 0] *= 2 * window - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias: nn.Parameter | None
        self.v_bias: nn.Parameter | None
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)
        #: attention through torch's fused scaled_dot_product_attention (same outputs to
        #: float rounding); False: the explicit softmax(QK^T)V of the reference code
        self.sdpa = True

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within windows: ``x`` is ``(windows * batch, tokens, dim)``."""
        bw, n, c = x.shape
        bias = None
        if self.q_bias is not None and self.v_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(bw, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.heads)
        bias_pos = table[self.relative_position_index.view(-1)].view(n, n, -1)
        position = 16 * torch.sigmoid(bias_pos.permute(2, 0, 1))  # heads, n, n
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        if self.sdpa:
            return self._fused(q, k, v, scale, position, mask)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * scale
        attn = attn + position.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = self.softmax(attn)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))

    def _fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
               position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attend as :meth:`forward` does, through ``scaled_dot_product_attention``.

        Swin V2's cosine attention: the per-head logit scale goes into the normalised
        queries (SDPA's own ``scale`` is 1), the position bias and the shift mask are its
        additive ``attn_mask``, broadcast over the windows of each image.
        """
        bw, heads, n, d = q.shape
        q = F.normalize(q, dim=-1) * scale
        k = F.normalize(k, dim=-1)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=position.to(q.dtype),
                                                 scale=1.0)
        else:
            nw = mask.shape[0]
            shape = (bw // nw, nw, heads, n, d)
            bias = (position.unsqueeze(0) + mask.unsqueeze(1)).to(q.dtype)  # nw, heads, n, n
            out = F.scaled_dot_product_attention(q.view(shape), k.view(shape), v.view(shape),
                                                 attn_mask=bias, scale=1.0).view(bw, heads, n, d)
        return self.proj(out.transpose(1, 2).reshape(bw, n, heads * d))


def _shift_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    img = torch.zeros((1, h, w, 1))
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for wsl in cuts:
            img[:, hs, wsl, :] = label
            label += 1
    windows = _window_partition(img, window).view(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class SwinTransformerBlock(nn.Module):
    """SwinV2 block with residual post-normalisation and an optional cyclic shift."""

    attn_mask: torch.Tensor | None

    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int,
                 shift: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = _shift_mask(*resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask)
        self._masks: dict[tuple[int, int, str], torch.Tensor] = {}

    def _mask_for(self, size: tuple[int, int], device: torch.device) -> torch.Tensor | None:
        if self.shift == 0:
            return None
        if size == tuple(self.resolution):
            return self.attn_mask
        key = (*size, str(device))
        if key not in self._masks:
            self._masks[key] = _shift_mask(*size, self.window, self.shift).to(device)
        return self._masks[key]

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Apply the block to tokens ``(batch, h * w, dim)``."""
        h, w = size
        b, _, c = x.shape
        y = x.view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = _window_partition(y, self.window).view(-1, self.window * self.window, c)
        win = self.attn(win, mask=self._mask_for((h, w), x.device))
        y = _window_reverse(win.view(-1, self.window, self.window, c), self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.norm1(y.reshape(b, h * w, c))
        return x + self.norm2(self.mlp(x))


class BasicLayer(nn.Module):
    """A stack of Swin blocks alternating plain and shifted windows."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, heads: int,
                 window: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, resolution, heads, window,
                                 0 if i % 2 == 0 else window // 2, mlp_ratio, qkv_bias)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Apply every block."""
        for block in self.blocks:
            x = block(x, size)
        return x


class PatchEmbed(nn.Module):
    """Image to tokens: a ``patch_size`` strided convolution, then an optional LayerNorm."""

    def __init__(self, dim: int, patch_size: int = 1, norm: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return tokens ``(batch, h * w, dim)``."""
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


def _unembed(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, size[0], size[1])


def _resi_conv(dim: int, kind: str) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ModelError(f"resi_connection must be '1conv' or '3conv', got {kind!r}")


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers, a convolution and a skip connection."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, heads: int,
                 window: int, mlp_ratio: float, qkv_bias: bool, patch_size: int,
                 resi_connection: str) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, resolution, depth, heads, window, mlp_ratio,
                                         qkv_bias)
        self.conv = _resi_conv(dim, resi_connection)
        self.patch_embed = PatchEmbed(dim, patch_size, norm=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Apply the residual group to tokens ``x``."""
        y = _unembed(self.residual_group(x, size), size)
        return self.patch_embed(self.conv(y)) + x


class Upsample(nn.Sequential):
    """Conv + pixel-shuffle per factor of the scale (2**n and 3 as in the reference)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        factors = [2] * int(math.log2(scale)) if scale & (scale - 1) == 0 else prime_factors(scale)
        layers: list[nn.Module] = []
        for f in factors:
            layers += [nn.Conv2d(num_feat, f * f * num_feat, 3, 1, 1), nn.PixelShuffle(f)]
        super().__init__(*layers)


class UpsampleOneStep(nn.Sequential):
    """One conv + one pixel-shuffle straight to the output channels (lightweight SR)."""

    def __init__(self, scale: int, num_feat: int, out_chans: int) -> None:
        super().__init__(nn.Conv2d(num_feat, scale * scale * out_chans, 3, 1, 1),
                         nn.PixelShuffle(scale))


class Swin2SR(nn.Module):
    """Swin2SR super-resolution network.

    Parameters mirror the reference (``img_size`` is the training patch size, which fixes
    the stored shift masks; other sizes work, their masks are computed on the fly), plus
    ``out_chans`` (defaults to ``in_chans``).

    Parameters
    ----------
    img_size : int
        Training patch size in input pixels.
    in_chans, out_chans : int
        Input and output channels.
    embed_dim : int
        Token width.
    depths, num_heads : sequence of int
        Blocks and heads per residual group.
    window_size : int
        Attention window (the input is reflect-padded to a multiple of it).
    mlp_ratio : float
        MLP hidden width over ``embed_dim``.
    upscale : int
        Scale factor (any product of 2, 3 and 5; 1 with ``upsampler=""``).
    img_range : float
        Multiplier applied after subtracting the mean (1.0 for normalised inputs).
    upsampler : str
        One of ``pixelshuffle``, ``pixelshuffledirect``, ``pixelshuffle_hf``,
        ``nearest+conv`` or ``""`` (restoration without upscaling).
    resi_connection : {"1conv", "3conv"}
        Convolution at the end of each residual group.
    """

    mean_in: torch.Tensor
    mean_out: torch.Tensor

    def __init__(self, img_size: int = 64, patch_size: int = 1, in_chans: int = 3,
                 out_chans: int | None = None, embed_dim: int = 96,
                 depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 ape: bool = False, patch_norm: bool = True, upscale: int = 2,
                 img_range: float = 1.0, upsampler: str = "",
                 resi_connection: str = "1conv") -> None:
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ModelError(f"upsampler {upsampler!r} is not supported; use one of {UPSAMPLERS}")
        if len(depths) != len(num_heads):
            raise ModelError("depths and num_heads must have the same length")
        out_chans = in_chans if out_chans is None else out_chans
        if upsampler == "" and (upscale != 1 or out_chans != in_chans):
            raise ModelError("upsampler='' restores without upscaling: needs upscale=1 and "
                             "out_chans == in_chans")
        if upsampler != "" and upscale != 1:
            prime_factors(upscale)
        num_feat = 64
        self.in_chans, self.out_chans = in_chans, out_chans
        self.img_range, self.upscale, self.upsampler = img_range, upscale, upsampler
        self.window_size = window_size
        rgb = torch.tensor((0.4488, 0.4371, 0.4040)).view(1, 3, 1, 1)
        self.register_buffer("mean_in", rgb if in_chans == 3 else torch.zeros(1, 1, 1, 1),
                             persistent=False)
        self.register_buffer("mean_out", rgb if in_chans == out_chans == 3
                             else torch.zeros(1, 1, 1, 1), persistent=False)
        res = (img_size // patch_size, img_size // patch_size)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_size, norm=patch_norm)
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res[0] * res[1], embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)

        def groups() -> nn.ModuleList:
            return nn.ModuleList(
                RSTB(embed_dim, res, d, h, window_size, mlp_ratio, qkv_bias, patch_size,
                     resi_connection)
                for d, h in zip(depths, num_heads, strict=True)
            )

        self.layers = groups()
        if upsampler == "pixelshuffle_hf":
            self.layers_hf = groups()
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)

        if upsampler in ("pixelshuffle", "pixelshuffle_hf", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
        if upsampler in ("pixelshuffle", "pixelshuffle_hf"):
            self.upsample: nn.Module = Upsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
        if upsampler == "pixelshuffle_hf":
            self.upsample_hf = Upsample(upscale, num_feat)
            self.conv_first_hf = nn.Sequential(nn.Conv2d(num_feat, embed_dim, 3, 1, 1),
                                               nn.LeakyReLU(inplace=True))
            self.conv_after_body_hf = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
            self.conv_before_upsample_hf = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                         nn.LeakyReLU(inplace=True))
            self.conv_last_hf = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = UpsampleOneStep(upscale, embed_dim, out_chans)
        elif upsampler == "nearest+conv":
            self.up_factors = prime_factors(upscale)
            for i, _ in enumerate(self.up_factors, start=1):
                self.add_module(f"conv_up{i}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        elif upsampler == "":
            self.conv_last = nn.Conv2d(embed_dim, out_chans, 3, 1, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def _features(self, x: torch.Tensor, layers: nn.ModuleList) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        for layer in layers:
            x = layer(x, size)
        return _unembed(self.norm(x), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Super-resolve ``(N, in_chans, H, W)`` to ``(N, out_chans, H*s, W*s)``."""
        h, w = x.shape[2:]
        ws = self.window_size
        x = F.pad(x, (0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws), mode="reflect")
        x = (x - self.mean_in.type_as(x)) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            res = self.conv_after_body(self._features(first, self.layers)) + first
            x = x + self.conv_last(res)
        else:
            x = self.conv_first(x)
            x = self.conv_after_body(self._features(x, self.layers)) + x
            if self.upsampler == "pixelshuffle":
                x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
            elif self.upsampler == "pixelshuffle_hf":
                before = self.conv_before_upsample(x)
                out = self.conv_last(self.upsample(before))
                hf = self.conv_first_hf(before)
                hf = self.conv_after_body_hf(self._features(hf, self.layers_hf)) + hf
                hf = self.conv_last_hf(self.upsample_hf(self.conv_before_upsample_hf(hf)))
                x = out + hf
            elif self.upsampler == "pixelshuffledirect":
                x = self.upsample(x)
            else:  # nearest+conv
                x = self.conv_before_upsample(x)
                for i, f in enumerate(self.up_factors, start=1):
                    up = F.interpolate(x, scale_factor=f, mode="nearest")
                    x = self.lrelu(getattr(self, f"conv_up{i}")(up))
                x = self.conv_last(self.lrelu(self.conv_hr(x)))
        x = x / self.img_range + self.mean_out.type_as(x)
        return x[:, :, : h * self.upscale, : w * self.upscale]


@dataclass(frozen=True)
class Swin2SRConfig:
    """The options of a Swin2SR network (defaults: :data:`srlib.models.SWIN2SR_SMALL`).

    ``in_chans``, ``out_chans`` and ``upscale`` come from the model's bands and scale.
    """

    img_size: int = 64
    window_size: int = 8
    embed_dim: int = 24
    depths: tuple[int, ...] = (2, 2)
    num_heads: tuple[int, ...] = (2, 2)
    mlp_ratio: float = 2.0
    upsampler: str = "pixelshuffledirect"
    resi_connection: str = "1conv"
    qkv_bias: bool = True
    ape: bool = False
    patch_norm: bool = True
    img_range: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler {self.upsampler!r} is not one of {UPSAMPLERS}")
        if self.resi_connection not in ("1conv", "3conv"):
            raise ValueError(f"resi_connection {self.resi_connection!r} is not 1conv or 3conv")
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads must have the same length")
        for name in ("img_size", "window_size", "embed_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer")

    def network(self, in_chans: int, out_chans: int, upscale: int) -> dict[str, Any]:
        """Keyword arguments of :class:`Swin2SR`."""
        return {**dataclasses.asdict(self), "in_chans": in_chans, "out_chans": out_chans,
                "upscale": upscale}


def _build(arch: dict[str, Any], checkpoint: str | None, seed: int) -> nn.Module:
    if checkpoint is None:
        torch.manual_seed(seed)
        return Swin2SR(**arch)
    module = Swin2SR(**arch)
    state = read_checkpoint(checkpoint)
    if not isinstance(state, dict):
        raise ModelError(f"{checkpoint} is a TorchScript module; use architecture "
                         "'torchscript' (or srlib.load_model(torch.jit.load(path), ...))")
    load_state_dict(module, state, f"checkpoint {checkpoint}")
    return module


def _spec(config: Swin2SRConfig, req: BuildRequest) -> ModelSpec:
    if req.checkpoint is None and not req.random_weights:
        raise ModelError(
            "swin2sr needs weights: give a model card (srlib.load_model('card.json')), or "
            "checkpoint='model.pth' and stats='stats.json', or random_weights=True for an "
            "untrained network (tests and benchmarks only)")
    arch = config.network(len(req.bands_in), len(req.bands_out), req.scale)
    Swin2SR(**{**arch, "depths": (), "num_heads": ()})  # check the options cheaply
    ckpt = str(Path(req.checkpoint).resolve()) if req.checkpoint is not None else None
    if ckpt is not None:
        if config.upsampler == "nearest+conv" and req.scale != 4:
            raise ModelError(
                f"a nearest+conv checkpoint cannot show its scale (its layers are the same "
                f"at x4 and x{req.scale}), and the reference trains it only at x4: use it "
                "with scale=4, or retrain with pixelshuffle or pixelshuffledirect")
        _build(arch, ckpt, req.seed)  # fail on the client, before any graph, if it misfits
    sha = req.checkpoint_sha256 or (sha256_file(ckpt) if ckpt else "")
    p = req.patch_size or config.img_size
    if p % config.window_size:
        raise ModelError(f"patch_size {p} must be a multiple of window_size "
                         f"{config.window_size}")
    wide = config.upsampler in ("pixelshuffle", "pixelshuffle_hf", "nearest+conv")
    return ModelSpec(
        name=req.name or "swin2sr", bands_in=req.bands_in, bands_out=req.bands_out,
        scale=req.scale, stats=req.stats, build=functools.partial(_build, arch, ckpt, req.seed),
        token=f"swin2sr-{sha[:16] if sha else f'random{req.seed}'}-"
              f"{hashlib.sha256(repr(sorted(arch.items())).encode()).hexdigest()[:12]}",
        blend="feather", patch_size=p,
        overlap=p // 4 if req.overlap is None else req.overlap,
        halo=max(req.halo or p, p), peak_channels=64 if wide else len(req.bands_out),
        architecture="swin2sr", config=tuple(sorted(dataclasses.asdict(config).items())),
        version=req.version, checkpoint=ckpt, checkpoint_sha256=sha,
    )


register_architecture("swin2sr", Swin2SRConfig, _spec)
