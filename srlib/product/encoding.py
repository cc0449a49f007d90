"""How each output variable is stored: one table, looked up by every writer and reader.

A super-resolved product holds four reflectance bands and a quality band. In the Zarr
store each keeps the engine's dtype and nodata; in the COG every band is int16 with one
nodata value (-32768), which a GeoTIFF requires, so the quality band's code 0 ("no
valid input") is written as -32768 there. Overviews reduce reflectance by the mean of
the valid pixels and quality by the most frequent valid code (an average of codes would
be meaningless). Writers (:mod:`.zarr_store`, :mod:`.cog`) and the pyramid look these
rules up here instead of testing variable names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import DTypeLike

from ..bands import OUTPUT_BANDS, OUTPUT_NODATA, TILE, Quality

__all__ = ["ENCODINGS", "OVERVIEWS", "TILE", "Encoding", "encoding"]

#: Group of the overview pyramid inside a store (``overviews/1/red``, ...).
OVERVIEWS = "overviews"


@dataclass(frozen=True)
class Encoding:
    """The storage rules of one output variable.

    Parameters
    ----------
    zarr_dtype : str
        NumPy dtype in the Zarr store (the engine's).
    zarr_nodata : int
        Nodata in the Zarr store (the engine's value).
    cog_dtype : str
        NumPy dtype of the variable in the COG and in the overview levels.
    cog_nodata : int
        Nodata in the COG and the overview levels.
    reducer : {"mean", "mode"}
        Overview reduction: mean of valid pixels, or most frequent valid code.
    lut : tuple of (int, int), optional
        Value mapping from the store to the COG (GDAL's VRT ``LUT``), when they differ.
    """

    zarr_dtype: str
    zarr_nodata: int
    cog_dtype: str = "int16"
    cog_nodata: int = OUTPUT_NODATA
    reducer: Literal["mean", "mode"] = "mean"
    lut: tuple[tuple[int, int], ...] | None = None

    def to_cog(self, block: np.ndarray) -> np.ndarray:
        """Map a block of stored values to the COG's values (dtype and nodata).

        The block itself where nothing changes (a band already int16): the callers only
        read the result, and a copy costs a pass through memory per band and block.
        """
        out = block.astype(self.cog_dtype, copy=self.lut is not None)
        if self.lut is not None:
            for src, dst in self.lut:
                if src != dst:
                    out[block == src] = dst
        return out

    @property
    def reduce(self) -> Callable[..., np.ndarray]:
        """The 2 x 2 overview reduction, called as ``reduce(block, nodata)``."""
        from .pyramid import mean2x2, mode2x2

        return mode2x2 if self.reducer == "mode" else mean2x2


_QUALITY_LUT = ((int(Quality.NODATA), OUTPUT_NODATA),
                *((int(q), int(q)) for q in Quality if q != Quality.NODATA))

#: Encoding of every output variable by name.
ENCODINGS: dict[str, Encoding] = {
    **{band: Encoding("int16", OUTPUT_NODATA) for band in OUTPUT_BANDS},
    "quality": Encoding("uint8", int(Quality.NODATA), reducer="mode", lut=_QUALITY_LUT),
}


def encoding(name: str, *, dtype: DTypeLike, nodata: int | None = None) -> Encoding:
    """Return the encoding of variable ``name`` stored as ``dtype`` with ``nodata``.

    A variable of the table is encoded by its entry; any other array (a derivative's
    uint8 RGB, say) keeps its own dtype and nodata, averaged in the overviews.
    """
    value = OUTPUT_NODATA if nodata is None else int(nodata)
    found = ENCODINGS.get(name)
    if found is not None and np.dtype(dtype) == np.dtype(found.zarr_dtype) \
            and value == found.zarr_nodata:
        return found
    return Encoding(str(np.dtype(dtype)), value, cog_dtype=str(np.dtype(dtype)),
                    cog_nodata=value)
