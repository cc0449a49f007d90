"""srlib: super-resolve Sentinel-2 L2A scenes 10x at scale.

Lazy, dask-backed xarray in and out::

    import srlib
    ds = srlib.sample_scene()
    sr = srlib.super_resolve(ds)          # lazy: nothing computed yet
    report = srlib.super_resolve_to_cog(ds, "out/product.tif")  # Zarr, COG, QC
"""

from __future__ import annotations

from .bands import OUTPUT_BANDS, OUTPUT_NODATA, S2_BANDS, Quality
from .cog import to_cog
from .errors import (
    BatchSizeError,
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
from .kernel import flush_subnormals
from .models import ModelSpec, load_model
from .pipeline import super_resolve_to_cog
from .qc import CheckResult, QCReport, check_quality
from .sample import sample_scene
from .sources import S3Options, load_items, load_s2
from .superres import super_resolve
from .zarr_io import open_zarr, to_zarr

__version__ = "0.1.0"

__all__ = [
    "OUTPUT_BANDS",
    "OUTPUT_NODATA",
    "S2_BANDS",
    "BatchSizeError",
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
    "load_items",
    "load_model",
    "load_s2",
    "open_zarr",
    "sample_scene",
    "super_resolve",
    "super_resolve_to_cog",
    "to_cog",
    "to_zarr",
]
