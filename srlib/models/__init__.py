"""Models behind :func:`srlib.super_resolve`: a spec per model, weights loaded per worker.

Use :func:`load_model` to build a :class:`ModelSpec` from a model card (``.json``, see
:mod:`.card`), a registered architecture's name (:mod:`.registry`: ``bicubic``,
``swin2sr``, ``torchscript``; one module each) or a ``torch.nn.Module``; pass it (or
just ``"bicubic"``) as ``model=`` to ``super_resolve``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..bands import OUTPUT_BANDS, S2_BANDS
from ..errors import ModelError
from . import torchscript  # noqa: F401  (registers the architecture)
from .bicubic import Bicubic, BicubicConfig
from .card import is_card, load_card, write_model_card
from .registry import BuildRequest, architectures, get_architecture, register_architecture
from .spec import (
    Compiled,
    ModelSpec,
    compile_seconds,
    loaded_module,
    module_token,
    provenance,
    spec_identity,
)
from .stats import BandStats, Stats, default_s2_stats, read_stats
from .swin2sr import Swin2SR, Swin2SRConfig

__all__ = [
    "SWIN2SR_LIGHT",
    "SWIN2SR_SMALL",
    "BandStats",
    "Bicubic",
    "BicubicConfig",
    "ModelSpec",
    "Stats",
    "Swin2SR",
    "Swin2SRConfig",
    "architectures",
    "get_architecture",
    "load_model",
    "Compiled",
    "compile_seconds",
    "loaded_module",
    "provenance",
    "read_stats",
    "register_architecture",
    "spec_identity",
    "write_model_card",
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


def _build_given(module: torch.nn.Module) -> torch.nn.Module:
    return module


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
    model : str, path, torch.nn.Module or ModelSpec
        A model card (a ``.json`` path, see :mod:`srlib.models.card`): everything comes
        from the card, and the other arguments are ignored. Or the name of a registered
        architecture (:func:`architectures`): ``"bicubic"`` (weight-free interpolation, not
        super-resolution), ``"swin2sr"`` (needs ``checkpoint`` and ``stats`` unless
        ``random_weights=True``, for tests and benchmarks) or ``"torchscript"`` (the file
        in ``checkpoint``). A ``torch.nn.Module`` or TorchScript module is used as is: it
        must map ``(N, len(bands_in), h, w)`` normalised input to
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
        The architecture's options (for Swin2SR the fields of :class:`Swin2SRConfig`,
        whose defaults are :data:`SWIN2SR_SMALL`); a misspelt option raises ModelError
        naming the valid ones.

    Returns
    -------
    ModelSpec
    """
    if isinstance(model, ModelSpec):
        return model
    if is_card(model):
        return load_card(model)
    bands = (tuple(bands_in), tuple(bands_out))
    if isinstance(model, str):
        entry = get_architecture(model)
        request = BuildRequest(
            bands_in=bands[0], bands_out=bands[1], scale=scale,
            stats=_stats(stats, *bands), patch_size=patch_size, overlap=overlap, halo=halo,
            blend=blend, checkpoint=Path(checkpoint) if checkpoint is not None else None,
            random_weights=random_weights, seed=seed)
        return entry.build_spec(entry.make_config(arch), request)
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model must be a name, a model card, a torch.nn.Module or a "
                         f"ModelSpec, got {type(model).__name__}")
    if checkpoint is not None:
        raise ModelError("a module given as an object carries its own weights: a checkpoint "
                         "would be ignored; load it into the module first, or use a card")
    geometry = {"patch_size": patch_size, "overlap": overlap, "halo": halo}
    return _module_spec(model, bands, scale, _stats(stats, *bands), geometry, blend)


Bands = tuple[tuple[str, ...], tuple[str, ...]]


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
    common: dict[str, Any] = dict(
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
