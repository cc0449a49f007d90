"""srlib: super-resolve Sentinel-2 L2A scenes 10x at scale.

Lazy, dask-backed xarray in and out::

    import srlib
    ds = srlib.sample_scene()
    sr = srlib.super_resolve(ds)          # lazy: nothing computed yet
    report = srlib.super_resolve_to_cog(ds, "out/product.tif")  # Zarr, COG, QC
"""

from __future__ import annotations

from .bands import OUTPUT_BANDS, OUTPUT_NODATA, S2_BANDS, Quality
from .engine.kernel import flush_subnormals
from .engine.superres import super_resolve
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
from .models import ModelSpec, load_model
from .product.cog import to_cog
from .product.pipeline import super_resolve_to_cog
from .product.qc import CheckResult, QCReport, check_quality
from .product.zarr_store import open_zarr, to_zarr
from .progress import job_progress
from .scene.sample import sample_scene
from .scene.sources import EARTH_SEARCH, S3Options, load_items, load_s2, search_items

__version__ = "0.1.0"

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
