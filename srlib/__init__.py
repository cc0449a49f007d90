"""srlib: super-resolve Sentinel-2 L2A scenes 10x at scale.

Lazy, dask-backed xarray in and out::

    import srlib
    ds = srlib.sample_scene()
    sr = srlib.super_resolve(ds)          # lazy: nothing computed yet
    report = srlib.super_resolve_to_cog(ds, "out/product.tif")  # Zarr, COG, QC
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .bands import OUTPUT_BANDS, OUTPUT_NODATA, S2_BANDS, Quality
from .errors import (
    BatchSizeError,
    DiskSpaceError,
    IncompleteStoreError,
    InputError,
    ModelError,
    NoSceneFound,
    QCFailed,
    SourceError,
    SrlibError,
    SrlibWarning,
    StatsMismatchWarning,
    Terminated,
)
from .progress import job_progress

try:  # one version source: the package metadata (pyproject.toml)
    __version__ = version("srlib")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

#: Where each public name lives; imported on first use, so that ``import srlib`` (and
#: ``srlib --help``) does not import torch, dask or GDAL until something needs them.
_LAZY = {
    "flush_subnormals": ".engine.kernel", "super_resolve": ".engine.superres",
    "ModelSpec": ".models", "load_model": ".models", "to_cog": ".product.cog",
    "super_resolve_to_cog": ".product.pipeline", "CheckResult": ".product.qc",
    "QCReport": ".product.qc", "check_quality": ".product.qc",
    "open_zarr": ".product.zarr_store", "to_zarr": ".product.zarr_store",
    "sample_scene": ".scene.sample", "EARTH_SEARCH": ".scene.sources",
    "S3Options": ".scene.sources", "load_items": ".scene.sources",
    "load_s2": ".scene.sources", "search_items": ".scene.sources",
}

if TYPE_CHECKING:
    from .engine.kernel import flush_subnormals
    from .engine.superres import super_resolve
    from .models import ModelSpec, load_model
    from .product.cog import to_cog
    from .product.pipeline import super_resolve_to_cog
    from .product.qc import CheckResult, QCReport, check_quality
    from .product.zarr_store import open_zarr, to_zarr
    from .scene.sample import sample_scene
    from .scene.sources import EARTH_SEARCH, S3Options, load_items, load_s2, search_items


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name in ("engine", "models", "product", "scene", "ops"):
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'srlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

__all__ = [
    "EARTH_SEARCH",
    "OUTPUT_BANDS",
    "OUTPUT_NODATA",
    "S2_BANDS",
    "BatchSizeError",
    "DiskSpaceError",
    "CheckResult",
    "IncompleteStoreError",
    "InputError",
    "ModelError",
    "ModelSpec",
    "NoSceneFound",
    "QCFailed",
    "QCReport",
    "Quality",
    "S3Options",
    "SourceError",
    "SrlibError",
    "SrlibWarning",
    "StatsMismatchWarning",
    "Terminated",
    "__version__",
    "check_quality",
    "flush_subnormals",
    "job_progress",
    "load_items",
    "load_model",
    "load_s2",
    "open_zarr",
    "sample_scene",
    "search_items",
    "super_resolve",
    "super_resolve_to_cog",
    "to_cog",
    "to_zarr",
]
