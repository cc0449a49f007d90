"""Models behind :func:`srlib.super_resolve`: a spec per model, weights loaded per worker.

Use :func:`load_model` to build a :class:`ModelSpec` from a name, a checkpoint file or a
``torch.nn.Module``; pass it (or just ``"bicubic"``) as ``model=`` to ``super_resolve``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..bands import OUTPUT_BANDS, S2_BANDS
from ..errors import ModelError
from .bicubic import Bicubic
from .checkpoint import load_state_dict, read_checkpoint
from .spec import ModelSpec, loaded_module, module_token, spec_identity
from .stats import BandStats, Stats, default_s2_stats, read_stats
from .swin2sr import Swin2SR

__all__ = [
    "SWIN2SR_LIGHT",
    "SWIN2SR_SMALL",
    "BandStats",
    "ModelSpec",
    "Stats",
    "load_model",
    "loaded_module",
    "read_stats",
    "spec_identity",
]

#: A small Swin2SR for CPU tests and benchmarks (10 bands in, 4 out, x10).
SWIN2SR_SMALL: dict[str, Any] = {
    "img_size": 64,
    "window_size": 8,
    "embed_dim": 24,
    "depths": (2, 2),
    "num_heads": (2, 2),
    "mlp_ratio": 2.0,
    "upsampler": "pixelshuffledirect",
    "resi_connection": "1conv",
}


#: The lightweight-SR configuration of the Swin2SR paper (10 bands in, 4 out, x10).
SWIN2SR_LIGHT: dict[str, Any] = {
    "img_size": 64,
    "window_size": 8,
    "embed_dim": 60,
    "depths": (6, 6, 6, 6),
    "num_heads": (6, 6, 6, 6),
    "mlp_ratio": 2.0,
    "upsampler": "pixelshuffledirect",
    "resi_connection": "1conv",
}


def _build_bicubic(scale: int, channels: tuple[int, ...]) -> torch.nn.Module:
    return Bicubic(scale, list(channels))


def _build_swin2sr(arch: dict[str, Any], checkpoint: str | None, seed: int) -> torch.nn.Module:
    if checkpoint is None:
        torch.manual_seed(seed)
        return Swin2SR(**arch)
    module = Swin2SR(**arch)
    state = read_checkpoint(checkpoint)
    if not isinstance(state, dict):
        raise ModelError(f"{checkpoint} is a TorchScript module; load it with "
                         "srlib.load_model(torch.jit.load(path), ...) instead")
    load_state_dict(module, state, f"checkpoint {checkpoint}")
    return module


def _build_given(module: torch.nn.Module) -> torch.nn.Module:
    return module


def _digest(obj: object) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:12]


def _file_token(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def load_model(
    model: str | torch.nn.Module | ModelSpec = "bicubic",
    *,
    checkpoint: str | Path | None = None,
    stats: str | Path | Mapping | Stats | None = None,
    scale: int = 10,
    bands_in: tuple[str, ...] = S2_BANDS,
    bands_out: tuple[str, ...] = OUTPUT_BANDS,
    patch_size: int | None = None,
    overlap: int | None = None,
    halo: int | None = None,
    blend: str | None = None,
    random_weights: bool = False,
    seed: int = 0,
    **arch: Any,
) -> ModelSpec:
    """Build the :class:`ModelSpec` of a model.

    Parameters
    ----------
    model : {"bicubic", "swin2sr"}, torch.nn.Module or ModelSpec
        ``"bicubic"``: weight-free interpolation (not super-resolution).
        ``"swin2sr"``: the Swin2SR architecture; needs ``checkpoint`` (and ``stats``) unless
        ``random_weights=True`` (tests, benchmarks). A ``torch.nn.Module`` or TorchScript
        module is used as is: it must map ``(N, len(bands_in), h, w)`` normalised input to
        ``(N, len(bands_out), h * scale, w * scale)``. A ModelSpec is returned unchanged.
    checkpoint : str or Path, optional
        ``.pth`` file: a state dict (bare or under ``model``, ``params``, ``params_ema`` or
        ``state_dict``; ``module.`` prefixes stripped, loaded with ``strict=True``) or a
        TorchScript module.
    stats : str, Path, dict or Stats, optional
        Normalisation statistics (see :func:`srlib.models.read_stats`); generic Sentinel-2
        statistics when omitted.
    scale : int
        Upscaling factor.
    bands_in, bands_out : tuple of str
        Model input channels and output bands, by Earth Search asset key.
    patch_size, overlap, halo : int, optional
        Patch geometry in input pixels (see :class:`ModelSpec`). Swin2SR defaults to
        ``patch_size=img_size``, ``overlap=patch_size // 4``, ``halo=patch_size``; other
        modules to 64, 16, 64.
    blend : {"feather", "trim"}, optional
        Stitching of a given module (default ``"feather"``). ``"trim"`` suits fully
        convolutional models whose receptive radius is ``halo`` input pixels: results are
        then exactly independent of the chunking.
    random_weights : bool
        Allow ``"swin2sr"`` without a checkpoint, seeded by ``seed``.
    **arch
        Swin2SR architecture options (``embed_dim``, ``depths``, ``num_heads``,
        ``window_size``, ``img_size``, ``mlp_ratio``, ``upsampler``, ``resi_connection``);
        defaults to :data:`SWIN2SR_SMALL`.

    Returns
    -------
    ModelSpec
    """
    if isinstance(model, ModelSpec):
        return model
    bands = (tuple(bands_in), tuple(bands_out))
    geometry = {"patch_size": patch_size, "overlap": overlap, "halo": halo}
    if isinstance(model, str) and model == "bicubic":
        return _bicubic_spec(bands, scale, _stats(stats, *bands), geometry)
    if isinstance(model, str) and model == "swin2sr":
        if checkpoint is None and not random_weights:
            raise ModelError(
                "swin2sr needs weights: pass checkpoint='model.pth' and stats='stats.json', "
                "or random_weights=True for an untrained network (tests and benchmarks only)"
            )
        return _swin2sr_spec(bands, scale, _stats(stats, *bands), geometry, arch,
                             checkpoint, seed)
    if isinstance(model, str):
        raise ModelError(f"unknown model {model!r}; use 'bicubic', 'swin2sr', a torch.nn.Module "
                         "or srlib.load_model(...)")
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model must be a name, a torch.nn.Module or a ModelSpec, got "
                         f"{type(model).__name__}")
    return _module_spec(model, bands, scale, _stats(stats, *bands), geometry, blend)


Bands = tuple[tuple[str, ...], tuple[str, ...]]


def _bicubic_spec(bands: Bands, scale: int, stats: Stats, geometry: dict) -> ModelSpec:
    bands_in, bands_out = bands
    missing = [b for b in bands_out if b not in bands_in]
    if missing:
        raise ModelError(f"bicubic copies bands from the input; {missing} are not inputs")
    channels = tuple(bands_in.index(b) for b in bands_out)
    return ModelSpec(
        name="bicubic", bands_in=bands_in, bands_out=bands_out, scale=scale,
        stats=stats, build=functools.partial(_build_bicubic, scale, channels),
        token=f"bicubic-{scale}-{channels}-{_digest(stats)}",
        blend="trim", patch_size=geometry["patch_size"] or 256, halo=geometry["halo"] or 2,
        peak_channels=len(bands_out) * 2,
    )


def _swin2sr_spec(bands: Bands, scale: int, stats: Stats, geometry: dict,
                  arch: dict[str, Any], checkpoint: str | Path | None, seed: int) -> ModelSpec:
    bands_in, bands_out = bands
    cfg = {**SWIN2SR_SMALL, **arch}
    cfg.update(in_chans=len(bands_in), out_chans=len(bands_out), upscale=scale)
    Swin2SR(**{**cfg, "depths": (), "num_heads": ()})  # validate options cheaply
    ckpt = str(Path(checkpoint).resolve()) if checkpoint is not None else None
    if ckpt is not None:
        # Fail on the client, before any graph is built, if the file does not fit.
        _build_swin2sr(cfg, ckpt, seed)
    token = _file_token(Path(ckpt)) if ckpt else f"random{seed}"
    p = geometry["patch_size"] or int(cfg["img_size"])
    if p % int(cfg["window_size"]):
        raise ModelError(f"patch_size {p} must be a multiple of window_size "
                         f"{cfg['window_size']}")
    up = cfg["upsampler"]
    peak = 64 if up in ("pixelshuffle", "pixelshuffle_hf", "nearest+conv") else len(bands_out)
    overlap = geometry["overlap"]
    return ModelSpec(
        name="swin2sr", bands_in=bands_in, bands_out=bands_out, scale=scale, stats=stats,
        build=functools.partial(_build_swin2sr, cfg, ckpt, seed),
        token=f"swin2sr-{token}-{_digest(sorted(cfg.items()))}",
        blend="feather", patch_size=p, overlap=p // 4 if overlap is None else overlap,
        halo=max(geometry["halo"] or p, p), peak_channels=peak,
    )


def _module_spec(model: torch.nn.Module, bands: Bands, scale: int, stats: Stats,
                 geometry: dict, blend: str | None) -> ModelSpec:
    bands_in, bands_out = bands
    halo, overlap = geometry["halo"], geometry["overlap"]
    token = module_token(model, scale, bands_in, bands_out, blend, halo)
    if token.startswith("unidentified-"):
        logging.getLogger("srlib").warning(
            "the identity of %s cannot be established (an attribute without a stable value, "
            "or no source code): its Zarr stores will never be resumed; script it "
            "(torch.jit.script) to make it resumable", type(model).__name__)
    common = dict(
        name=type(model).__name__, bands_in=bands_in, bands_out=bands_out, scale=scale,
        stats=stats, build=functools.partial(_build_given, model), token=f"module-{token}",
    )
    if blend == "trim":
        if halo is None:
            raise ModelError("blend='trim' needs halo= (the model's receptive radius in input "
                             "pixels)")
        return ModelSpec(**common, blend="trim", patch_size=geometry["patch_size"] or 256,
                         halo=halo)
    if blend not in (None, "feather"):
        raise ModelError(f"blend must be 'feather' or 'trim', got {blend!r}")
    p = geometry["patch_size"] or 64
    return ModelSpec(**common, blend="feather", patch_size=p,
                     overlap=p // 4 if overlap is None else overlap, halo=max(halo or p, p))


def _stats(stats: object, bands_in: tuple[str, ...], bands_out: tuple[str, ...]) -> Stats:
    if stats is None:
        return default_s2_stats(bands_in, bands_out)
    if isinstance(stats, Stats):
        return stats
    return read_stats(stats, bands_in=bands_in, bands_out=bands_out)  # type: ignore[arg-type]
