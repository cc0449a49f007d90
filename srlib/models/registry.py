"""The registry of architectures: one entry per file, looked up by name.

An architecture registers a frozen dataclass of its options and a function that turns
those options, the bands, scale, statistics, patch geometry and weights into a
:class:`~srlib.models.spec.ModelSpec`. :func:`srlib.load_model` is a short dispatch over
this registry; adding an architecture means adding one module that calls
:func:`register_architecture`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .spec import ModelSpec
from .stats import Stats

__all__ = ["Architecture", "BuildRequest", "architectures", "get_architecture",
           "register_architecture"]


@dataclass(frozen=True)
class BuildRequest:
    """What an architecture needs to build a spec, besides its own options."""

    bands_in: tuple[str, ...]
    bands_out: tuple[str, ...]
    scale: int
    stats: Stats
    patch_size: int | None = None
    overlap: int | None = None
    halo: int | None = None
    blend: str | None = None
    checkpoint: Path | None = None
    random_weights: bool = False
    seed: int = 0
    name: str | None = None
    version: str = ""
    checkpoint_sha256: str = ""


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its options (a frozen dataclass) and its spec builder."""

    name: str
    config: type
    build_spec: Callable[[Any, BuildRequest], ModelSpec]

    def options(self) -> list[str]:
        """Names of the options the architecture takes."""
        return [f.name for f in dataclasses.fields(self.config)]

    def make_config(self, options: Mapping[str, Any]) -> Any:
        """Return the architecture's options from a mapping; misspelt names are refused.

        Raises
        ------
        ModelError
            An unknown option (the valid ones are listed) or an unusable value.
        """
        valid = self.options()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ModelError(f"{self.name} has no option {unknown}; its options are {valid}")
        try:
            return self.config(**options)
        except (TypeError, ValueError) as err:
            raise ModelError(f"{self.name}: {err}") from err


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(name: str, config: type,
                          build_spec: Callable[[Any, BuildRequest], ModelSpec]) -> Architecture:
    """Register an architecture under ``name`` (its module calls this at import)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"{name}: the config must be a dataclass")
    entry = Architecture(name, config, build_spec)
    _REGISTRY[name] = entry
    return entry


def get_architecture(name: str) -> Architecture:
    """Return the architecture registered under ``name``.

    Raises
    ------
    ModelError
        No such architecture; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        from .card import shipped_cards

        raise ModelError(f"unknown model {name!r}; use a model card (.json, or a shipped one: "
                         f"{sorted(shipped_cards())}), an architecture ({architectures()}), a "
                         "torch.nn.Module or srlib.load_model(...)") from None


def architectures() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_REGISTRY)
