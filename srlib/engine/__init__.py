"""The engine: lazy super-resolution of a scene through dask ``map_overlap``.

Owns :func:`~srlib.engine.superres.super_resolve` (input checks, chunk planning, the
dask graph), the per-block kernel (:mod:`.kernel`: normalise, cut patches, run the model
on the device, stitch, quantise) and batch planning under PyTorch's limits
(:mod:`.batching`). It may import the base modules, :mod:`srlib.scene` and
:mod:`srlib.models`; never the product or operations layers.
"""

from .kernel import KernelConfig, sr_block
from .lanes import forward_all, process_lanes
from .runner import Runner, flush_subnormals, resolve_device
from .stitching import patch_grid
from .superres import input_reflectance, super_resolve

__all__ = ["KernelConfig", "Runner", "flush_subnormals", "forward_all", "input_reflectance",
           "patch_grid", "process_lanes", "resolve_device", "sr_block", "super_resolve"]
