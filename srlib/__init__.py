"""srlib: super-resolve Sentinel-2 L2A scenes 10x at scale.

Lazy, dask-backed xarray in and out::

    import srlib
    ds = srlib.sample_scene()
    sr = srlib.super_resolve(ds)          # lazy: nothing computed yet
"""

from __future__ import annotations

from .bands import OUTPUT_BANDS, OUTPUT_NODATA, S2_BANDS, Quality
from .errors import (
    BatchSizeError,
    IncompleteStoreError,
    InputError,
    ModelError,
    QCFailed,
    SrlibError,
    SrlibWarning,
    StatsMismatchWarning,
)
from .models import ModelSpec, load_model
from .sample import sample_scene
from .superres import super_resolve

__version__ = "0.1.0"

__all__ = [
    "OUTPUT_BANDS",
    "OUTPUT_NODATA",
    "S2_BANDS",
    "BatchSizeError",
    "IncompleteStoreError",
    "InputError",
    "ModelError",
    "ModelSpec",
    "QCFailed",
    "Quality",
    "SrlibError",
    "SrlibWarning",
    "StatsMismatchWarning",
    "__version__",
    "load_model",
    "sample_scene",
    "super_resolve",
]
