"""The scene layer: Sentinel-2 L2A inputs as lazy xarray cubes on a checked grid.

Owns the STAC search and odc-stac loading (:mod:`.sources`), the bundled sample scenes
(:mod:`.sample`) and the georeferencing checks and zoomed output grid (:mod:`.grid`).
It may import only the base modules (:mod:`srlib.errors`, :mod:`srlib.bands`,
:mod:`srlib.config`).
"""
