"""The product layer: from a lazy super-resolved Dataset to checked files.

Owns the resumable Zarr store and its overview pyramid (:mod:`.zarr_store`,
:mod:`.pyramid`), the COG writer (:mod:`.cog`), the quality checks (:mod:`.qc`), the
derivatives, STAC Item and quicklooks written beside a product, the product manifest
(:mod:`.manifest`) and the one-call path :func:`~srlib.product.pipeline.super_resolve_to_cog`.
It may import the base modules, :mod:`srlib.scene`, :mod:`srlib.models` and
:mod:`srlib.engine`; never :mod:`srlib.ops`.
"""
