"""Model cards: one JSON file that names a model everywhere.

A card fully describes a model: which registered architecture and options, scale and
bands, the weights (path relative to the card, or absolute) and their SHA-256, which is
verified before loading, the normalisation statistics (inline, or a path), and the
patch geometry where it differs from the architecture's defaults. Example::

    {
      "name": "s2-swin2sr-demo",
      "version": "1",
      "architecture": "swin2sr",
      "config": {"img_size": 16, "window_size": 8, "embed_dim": 24, "depths": [2, 2],
                 "num_heads": [2, 2], "mlp_ratio": 2.0,
                 "upsampler": "pixelshuffledirect", "resi_connection": "1conv"},
      "scale": 10,
      "bands_in": ["coastal", "blue", ...],
      "bands_out": ["red", "green", "blue", "nir"],
      "checkpoint": "weights.pth",
      "sha256": "3f1c...",
      "stats": {"input": {"mean": [...], "std": [...]},
                "output": {"mean": [...], "std": [...]}},
      "patch_size": 16
    }

Optional: ``description``, ``overlap``, ``halo``, ``blend``, ``rate_mpx_per_s`` (output
megapixels per second measured on a GPU, used for SLURM time limits), ``compile``
(``true``: run the model through ``torch.compile``, as ``--compile`` does), ``metrics``
(``srlib bench --write-card``: the figures, the scenes and srlib's version; named in
the STAC Items of products made with the card).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeGuard

from ..errors import ModelError
from ..files import write_atomic
from ..hashing import sha256_file
from .registry import BuildRequest, get_architecture
from .spec import ModelSpec
from .stats import Stats, read_stats

__all__ = ["CARD_FIELDS", "is_card", "load_card", "read_card", "record_metrics",
           "shipped_cards", "write_model_card"]

_REQUIRED = ("name", "version", "architecture", "scale", "bands_in", "bands_out", "stats")
_OPTIONAL = ("config", "checkpoint", "sha256", "patch_size", "overlap", "halo", "blend",
             "description", "rate_mpx_per_s", "compile", "metrics")
#: Every field a card may have.
CARD_FIELDS = (*_REQUIRED, *_OPTIONAL)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def shipped_cards() -> dict[str, Path]:
    """Return the model cards that ship with srlib (``data/models/<name>/card.json``)."""
    from importlib import resources

    root = Path(str(resources.files("srlib") / "data" / "models"))
    return {p.parent.name: p for p in sorted(root.glob("*/card.json"))}


def is_card(model: object) -> TypeGuard[str | os.PathLike]:
    """Whether ``model`` names a model card: a ``.json`` path or a shipped card's name."""
    if isinstance(model, str) and model in shipped_cards():
        return True
    return isinstance(model, str | os.PathLike) and str(model).lower().endswith(".json")


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a card's fields (not its weights).

    Raises
    ------
    ModelError
        Not a readable JSON object, a missing or unknown field, or a bad name.
    """
    path = Path(path)
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"model card {path} does not exist") from None
    except (OSError, ValueError) as err:
        raise ModelError(f"model card {path} is not readable JSON: {err}") from None
    if not isinstance(card, dict):
        raise ModelError(f"model card {path} must hold a JSON object")
    missing = [k for k in _REQUIRED if k not in card]
    unknown = sorted(set(card) - set(CARD_FIELDS))
    if missing or unknown:
        raise ModelError(f"model card {path}: missing fields {missing}, unknown fields "
                         f"{unknown}; a card has {list(_REQUIRED)} and may have "
                         f"{list(_OPTIONAL)}")
    if not isinstance(card["name"], str) or not _NAME.match(card["name"]):
        raise ModelError(f"model card {path}: name {card['name']!r} must be letters, digits, "
                         "'.', '_' or '-'")
    if not isinstance(card["scale"], int) or card["scale"] < 1:
        raise ModelError(f"model card {path}: scale must be a positive integer")
    if not isinstance(card.get("compile", False), bool):
        raise ModelError(f"model card {path}: compile must be true or false, got "
                         f"{card['compile']!r}")
    return card


def _stats(value: object, base: Path, bands_in: tuple[str, ...],
           bands_out: tuple[str, ...]) -> Stats:
    if isinstance(value, str):
        value = base / value
    return read_stats(value, bands_in=bands_in, bands_out=bands_out)  # type: ignore[arg-type]


def load_card(path: str | os.PathLike) -> ModelSpec:
    """Build the spec of the model a card describes, after checking its weights' SHA-256.

    Raises
    ------
    ModelError
        A bad card, weights missing or not matching ``sha256``, options the architecture
        does not take, or weights that do not fit it.
    """
    path = shipped_cards().get(str(path), Path(path)).resolve()
    card = read_card(path)
    arch = get_architecture(str(card["architecture"]))
    config = arch.make_config(card.get("config") or {})
    bands_in, bands_out = tuple(card["bands_in"]), tuple(card["bands_out"])
    checkpoint = None
    sha = ""
    if card.get("checkpoint"):
        checkpoint = Path(card["checkpoint"])
        checkpoint = checkpoint if checkpoint.is_absolute() else path.parent / checkpoint
        if not checkpoint.is_file():
            raise ModelError(f"model card {path}: checkpoint {checkpoint} does not exist")
        sha = sha256_file(checkpoint)
        expected = card.get("sha256")
        if not expected:
            raise ModelError(f"model card {path}: give the checkpoint's sha256 ({sha}); it is "
                             "verified before loading")
        if sha != expected:
            raise ModelError(f"model card {path}: {checkpoint.name} has SHA-256 {sha}, the card "
                             f"says {expected}: the weights are not the ones the card names")
    request = BuildRequest(
        bands_in=bands_in, bands_out=bands_out, scale=card["scale"],
        stats=_stats(card["stats"], path.parent, bands_in, bands_out),
        patch_size=card.get("patch_size"), overlap=card.get("overlap"), halo=card.get("halo"),
        blend=card.get("blend"), checkpoint=checkpoint, name=card["name"],
        version=str(card["version"]), checkpoint_sha256=sha)
    spec = arch.build_spec(config, request)
    if card.get("metrics"):
        spec = replace(spec, metrics=json.dumps(card["metrics"]))
    return replace(spec, compile=True) if card.get("compile") else spec


def write_model_card(spec: ModelSpec, path: str | os.PathLike, *,
                     version: str | None = None, description: str | None = None,
                     rate_mpx_per_s: float | None = None) -> Path:
    """Write the card of a spec (built by an architecture of the registry).

    The checkpoint is recorded relative to the card when it lies beside or below it,
    with its SHA-256; the statistics inline; the patch geometry in full.

    Raises
    ------
    ModelError
        A spec that no architecture built (a module given as an object).
    """
    if not spec.architecture:
        raise ModelError(f"{spec.name} was not built from a registered architecture; save it "
                         "with torch.jit.save and write a card with architecture "
                         "'torchscript'")
    path = Path(path).resolve()
    card: dict[str, Any] = {
        "name": spec.name, "version": version if version is not None else spec.version or "1",
        "architecture": spec.architecture, "config": dict(spec.config), "scale": spec.scale,
        "bands_in": list(spec.bands_in), "bands_out": list(spec.bands_out),
    }
    if spec.checkpoint:
        ckpt = Path(spec.checkpoint).resolve()
        try:
            card["checkpoint"] = str(ckpt.relative_to(path.parent))
        except ValueError:
            card["checkpoint"] = str(ckpt)
        card["sha256"] = spec.checkpoint_sha256 or sha256_file(ckpt)
    card["stats"] = {
        "input": {"bands": list(spec.stats.input.bands), "mean": list(spec.stats.input.mean),
                  "std": list(spec.stats.input.std)},
        "output": {"bands": list(spec.stats.output.bands),
                   "mean": list(spec.stats.output.mean), "std": list(spec.stats.output.std)}}
    card.update(patch_size=spec.patch_size, overlap=spec.overlap, halo=spec.halo,
                blend=spec.blend)
    if description:
        card["description"] = description
    if rate_mpx_per_s:
        card["rate_mpx_per_s"] = rate_mpx_per_s
    if spec.compile:
        card["compile"] = True
    return write_atomic(path, json.dumps(card, indent=2) + "\n")


def record_metrics(path: str | os.PathLike, results: list[dict[str, Any]]) -> Path:
    """Record ``srlib bench``'s figures in the card at ``path`` (``metrics``, atomically).

    The figures of the card's model (the first method of each scene) and of the
    baselines, the scenes and srlib's version; the card's other fields are unchanged.
    """
    from importlib.metadata import version

    card_path = Path(path)
    card = read_card(card_path)
    model = card["name"]
    card["metrics"] = {
        "srlib": version("srlib"),
        "scenes": sorted({r["scene"] for r in results}),
        "model": {r["scene"]: {"wald": r["wald"], "consistency": r["consistency"],
                               "speed": r["speed"]}
                  for r in results if r["method"] == model},
        "baselines": {f"{r['scene']}/{r['method']}": {"psnr": r["wald"]["psnr"],
                                                     "sam_deg": r["wald"]["sam_deg"],
                                                     "ergas": r["wald"]["ergas"]}
                      for r in results if r["method"] != model},
    }
    return write_atomic(card_path, json.dumps(card, indent=2) + "\n")
