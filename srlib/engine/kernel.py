"""The per-block super-resolution kernel that dask runs on each chunk (CPU or GPU).

One call gets one chunk plus its halo, shaped ``(bands [+ scl], h + 2 halo, w + 2 halo)``
as float32 reflectance x 10000 with NaN for nodata, and returns the chunk's output
``(len(bands_out) + 1, h * scale, w * scale)`` int16: reflectance bands, then quality.
Steps: normalise with the model's stats, fill nodata with the band mean (so it cannot
poison valid neighbours), cut patches, run them in batches on the device under
``torch.inference_mode`` (autocast on CUDA), stitch (trim or feather), de-normalise,
quantise, and write nodata wherever the input pixel was nodata. The parts live in
:mod:`.runner` (device and model), :mod:`.lanes` (parallel CPU passes),
:mod:`.stitching` (patches to output) and :mod:`.memory` (heaps given back).
"""

from __future__ import annotations

import numpy as np

from ..bands import Quality, scl_to_quality
from ..errors import InputError
from . import memory
from .runner import KernelConfig, Runner, flush_subnormals, resolve_device
from .stitching import Output, run_feather, run_trim

__all__ = ["KernelConfig", "PLAUSIBLE_MEDIAN", "flush_subnormals", "resolve_device", "sr_block"]

#: The range a block's median valid input (reflectance x 10000, every band) must fall in.
#: Real scenes sit far inside (deep water ~50, snow ~10000); outside it the input's
#: scale is wrong: reflectance (0-1) read as DN gave an all-zero product, DN read as
#: reflectance one saturated at 32767, both with every pixel marked clear.
PLAUSIBLE_MEDIAN = (3.0, 30000.0)


def check_scale(x: np.ndarray, valid: np.ndarray) -> None:
    """Refuse a block whose values cannot be Sentinel-2 reflectance x 10000.

    ``x`` is ``(bands, h, w)`` after the input's ``scale_factor``/``add_offset``;
    judged on every 4th pixel, once at least 64 are valid (about 0.2 ms a block).
    """
    sample = x[:, ::4, ::4][:, valid[::4, ::4]]
    if sample.size < 64:
        return
    median = float(np.median(sample))
    low, high = PLAUSIBLE_MEDIAN
    if low <= median <= high:
        return
    if np.count_nonzero(sample == 0) * 2 > sample.size:
        # zeros not declared nodata: a product of them would be "clear" zeros
        raise InputError("more than half of a block's input is exactly 0, and 0 is not "
                         "its nodata value: if 0 marks nodata (as in Sentinel-2 L2A), "
                         "declare it (ds[band].rio.write_nodata(0), or attrs['nodata'] = 0 "
                         "on every band)")
    hint = ("if the bands hold reflectance (0-1), set their attrs['scale_factor'] = 1.0"
            if median < low else
            "if the bands hold DN, set their attrs['scale_factor'] = 1e-4 (and add_offset as "
            "the scene's metadata says)")
    raise InputError(f"the input's median is {median:.4g} x 1e-4 reflectance (after its "
                     f"scale_factor and add_offset), where any Sentinel-2 scene has {low:g} "
                     f"to {high:g}: its scale is wrong; {hint}")


def sr_block(block: np.ndarray, block_info: dict | None = None, *,
             cfg: KernelConfig) -> np.ndarray:
    """Super-resolve one chunk with its halo (see the module docstring).

    Parameters
    ----------
    block : numpy.ndarray
        ``(n_bands [+ 1], h + 2 halo, w + 2 halo)`` float32.
    block_info : dict, optional
        Dask's block information; the output chunk location anchors the patch grid.
    cfg : KernelConfig
        Model, device and grid configuration.

    Returns
    -------
    numpy.ndarray
        ``(len(bands_out) + 1, h * scale, w * scale)`` int16.
    """
    memory.tune_malloc()  # once per process, before the block's temporaries
    spec = cfg.spec
    halo = spec.halo
    x = np.asarray(block[: cfg.n_bands], dtype=np.float32)
    valid = np.isfinite(x).all(axis=0)
    check_scale(x, np.asarray(valid))
    if cfg.has_scl:
        quality = np.where(valid, scl_to_quality(block[cfg.n_bands]), Quality.NODATA)
    else:
        quality = np.where(valid, Quality.CLEAR, Quality.NODATA)
    quality = quality.astype(np.uint8)
    mean, std = spec.stats.input.arrays()
    xn = (x - mean) / std
    xn[:, quality == Quality.NODATA] = 0.0  # the band mean: neutral for the neighbours

    run = Runner(cfg)
    out = Output(spec, quality[halo:-halo, halo:-halo], run.device if run.on_device else None)
    if spec.blend == "trim":
        run_trim(xn, run, spec, out, lanes=cfg.lanes)
    else:
        iy, ix = block_info[None]["chunk-location"][1:] if block_info else (0, 0)
        run_feather(xn, run, spec, cfg.y_starts[iy], cfg.x_starts[ix], out, lanes=cfg.lanes)
    del x, xn, valid, quality
    memory.release_free_memory()
    return out.out
