"""The engine: lazy super-resolution of a scene through dask ``map_overlap``.

Owns :func:`~srlib.engine.superres.super_resolve` (input checks, chunk planning, the
dask graph), the per-block kernel (:mod:`.kernel`: normalise, cut patches, run the model
on the device, stitch, quantise) and batch planning under PyTorch's limits
(:mod:`.batching`). It may import the base modules, :mod:`srlib.scene` and
:mod:`srlib.models`; never the product or operations layers.
"""
