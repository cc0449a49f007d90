"""Band names, quality codes and the output encoding of srlib products."""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["TILE",
    "OUTPUT_BANDS",
    "OUTPUT_NODATA",
    "REFLECTANCE_SCALE",
    "S2_BANDS",
    "SCL_TO_QUALITY",
    "Quality",
    "scl_to_quality",
]

#: Sentinel-2 L2A spectral bands used as model input, named as Earth Search v1 asset keys.
S2_BANDS: tuple[str, ...] = (
    "blue",  # B02, 10 m
    "green",  # B03, 10 m
    "red",  # B04, 10 m
    "rededge1",  # B05, 20 m
    "rededge2",  # B06, 20 m
    "rededge3",  # B07, 20 m
    "nir",  # B08, 10 m
    "nir08",  # B8A, 20 m
    "swir16",  # B11, 20 m
    "swir22",  # B12, 20 m
)

#: Earth Search v1 asset key of each Sentinel-2 band file name.
S2_FILE_BANDS: dict[str, str] = {
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B11": "swir16",
    "B12": "swir22",
    "SCL": "scl",
}

#: Reflectance bands of every srlib product, in COG band order.
OUTPUT_BANDS: tuple[str, ...] = ("red", "green", "blue", "nir")

#: Reflectance is stored as int16 ``round(reflectance * 10000)``.
REFLECTANCE_SCALE: float = 1e-4

#: Nodata of the int16 reflectance bands (never a value a valid pixel can take).
OUTPUT_NODATA: int = -32768

#: Side of the product's tiles in pixels: COG tiles, Zarr chunks and the unit that engine
#: chunks are whole multiples of, so that regions, chunks and tiles align.
TILE: int = 512


class Quality(enum.IntEnum):
    """Codes of the ``quality`` band (uint8).

    ``NODATA`` marks pixels whose reflectance is nodata; every other code marks a valid
    pixel. Codes other than ``CLEAR`` come from the Scene Classification Layer (SCL) when
    the input has one; without SCL a valid pixel is ``CLEAR``.
    """

    NODATA = 0  #: no valid input (nodata in any band, or SCL 0 no-data / 1 saturated)
    CLEAR = 1  #: valid, no flag (SCL 2, 4, 5, 7, or no SCL)
    CLOUD = 2  #: SCL 8 and 9 (medium/high cloud probability) and 10 (thin cirrus)
    CLOUD_SHADOW = 3  #: SCL 3
    SNOW = 4  #: SCL 11 (snow or ice)
    WATER = 5  #: SCL 6


#: SCL class -> quality code.
SCL_TO_QUALITY: dict[int, Quality] = {
    0: Quality.NODATA,
    1: Quality.NODATA,
    2: Quality.CLEAR,
    3: Quality.CLOUD_SHADOW,
    4: Quality.CLEAR,
    5: Quality.CLEAR,
    6: Quality.WATER,
    7: Quality.CLEAR,
    8: Quality.CLOUD,
    9: Quality.CLOUD,
    10: Quality.CLOUD,
    11: Quality.SNOW,
}

_LUT = np.full(256, Quality.CLEAR, dtype=np.uint8)
for _scl, _q in SCL_TO_QUALITY.items():
    _LUT[_scl] = _q


def scl_to_quality(scl: np.ndarray) -> np.ndarray:
    """Map SCL classes (any numeric dtype; NaN means "no SCL") to quality codes.

    Parameters
    ----------
    scl : numpy.ndarray
        Scene classification values.

    Returns
    -------
    numpy.ndarray
        uint8 quality codes; NaN or out-of-range classes give ``CLEAR``.
    """
    finite = np.isfinite(scl)
    idx = np.where(finite, scl, 2).astype(np.int64)
    idx = np.where((idx >= 0) & (idx < 256), idx, 2)
    return _LUT[idx]
