"""``super_resolve``: lazy super-resolution of an xarray scene through dask ``map_overlap``."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import replace

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import torch
import xarray as xr
from affine import Affine
from dask.base import tokenize

from ..bands import OUTPUT_NODATA, REFLECTANCE_SCALE, TILE, Quality
from ..errors import InputError
from ..models import ModelSpec, load_model, spec_identity
from ..scene.grid import check_grid, zoom_coords, zoom_transform
from .batching import check_batch_size, peak_elements
from .kernel import KernelConfig, resolve_device, sr_block

__all__ = ["default_chunk", "super_resolve"]



def default_chunk(scale: int, target: int = 2560) -> int:
    """Input chunk whose output side is a multiple of 512 px near ``target`` px."""
    base = math.lcm(TILE, scale) // scale
    return base * max(1, round(target / scale / base))


def _plan(n: int, chunk: int, halo: int) -> tuple[int, ...]:
    """Chunks of ``chunk`` with a last one of at least ``halo`` (merged otherwise)."""
    sizes = [chunk] * (n // chunk)
    rest = n - chunk * len(sizes)
    if rest:
        if sizes and rest < halo:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return tuple(sizes)


def _chunk_sizes(chunks: int | Mapping[str, int] | tuple[int, int] | None,
                 spec: ModelSpec) -> tuple[int, int]:
    scale = spec.scale

    def _side(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise InputError(f"chunks must be positive whole numbers of input pixels (an int, "
                             f"{{'y': .., 'x': ..}} or (y, x)), got {chunks!r}")
        return int(value)

    if chunks is None:
        # Patch-blended models recompute the patches that straddle chunk borders, about
        # (1 + patch / chunk)**2 of the work: larger chunks keep that overhead near 1.25.
        c = default_chunk(scale, 5120 if spec.blend == "feather" else 2560)
        return c, c
    if isinstance(chunks, Mapping):
        unknown = set(chunks) - {"y", "x"}
        if unknown:
            raise InputError(f"chunks has unknown dims {sorted(unknown)}; use 'y' and 'x'")
        default = default_chunk(scale)
        return _side(chunks.get("y", default)), _side(chunks.get("x", default))
    if isinstance(chunks, tuple | list) and len(chunks) == 2:
        return _side(chunks[0]), _side(chunks[1])
    return _side(chunks), _side(chunks)


def _spatial_dims(obj: xr.DataArray | xr.Dataset) -> tuple[str, str]:
    try:
        return obj.rio.y_dim, obj.rio.x_dim
    except Exception as err:
        raise InputError(f"the input needs spatial dims named (y, x): {err}") from err


def _squeeze(arr: xr.DataArray, keep: tuple[str, ...], name: str) -> xr.DataArray:
    for dim in list(arr.dims):
        if dim in keep:
            continue
        if arr.sizes[dim] != 1:
            raise InputError(
                f"{name} has dimension {dim!r} of size {arr.sizes[dim]}; super_resolve takes one "
                f"scene: select one with .isel({dim}=0) or loop over {dim}"
            )
        arr = arr.squeeze(dim, drop=True)
    return arr.transpose(*keep)


def _reflectance(arr: xr.DataArray, attrs: Mapping) -> da.Array:
    """Lazy float32 reflectance x 10000 with NaN at nodata."""
    kind = np.dtype(arr.dtype)
    if kind == np.bool_ or kind.kind not in "iuf" or (kind.kind in "iu" and kind.itemsize < 2):
        raise InputError(f"band {arr.name} is {kind}; Sentinel-2 reflectance must be integer "
                         "DN of 16 bits or more (uint16, int16, ...) or float reflectance: "
                         "convert it with .astype('uint16') or .astype('float32')")
    data = arr.data if isinstance(arr.data, da.Array) else da.from_array(arr.data, chunks=-1)
    data = data.astype(np.float32)
    nodata = arr.rio.nodata if arr.rio.nodata is not None else attrs.get("nodata")
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        data = da.where(data == np.float32(nodata), np.float32(np.nan), data)
    factors = {}
    for key, default in (("scale_factor", REFLECTANCE_SCALE), ("add_offset", 0.0)):
        value = attrs.get(key, default)
        try:
            factors[key] = float(value)
        except (TypeError, ValueError):
            factors[key] = float("nan")
        if not math.isfinite(factors[key]) or (key == "scale_factor" and factors[key] == 0):
            raise InputError(f"band {arr.name}: attribute {key}={value!r} is not a usable "
                             f"number; set it (e.g. ds[{str(arr.name)!r}].attrs[{key!r}] = "
                             f"{default}) or drop it for the default {default}")
    scale = factors["scale_factor"] / REFLECTANCE_SCALE
    offset = factors["add_offset"] / REFLECTANCE_SCALE
    if scale != 1.0 or offset != 0.0:
        data = data * np.float32(scale) + np.float32(offset)
    return data


def _bands(ds: xr.Dataset | xr.DataArray, bands: tuple[str, ...]
           ) -> tuple[list[da.Array], da.Array | None, xr.DataArray]:
    """Per-band reflectance arrays, the SCL array (or None) and a template DataArray."""
    if not isinstance(ds, xr.Dataset | xr.DataArray):
        raise InputError(f"super_resolve takes an xarray Dataset or DataArray, got "
                         f"{type(ds).__name__}")
    ydim, xdim = _spatial_dims(ds)
    if isinstance(ds, xr.DataArray):
        if "band" not in ds.dims:
            raise InputError("a DataArray input needs a 'band' dimension labelled with band "
                             f"names such as {list(bands)}; or pass a Dataset")
        names = [str(b) for b in ds["band"].values]
        available = {b: ds.sel(band=b) for b in names}
        attrs_of = {b: ds.attrs for b in names}
    else:
        available = {str(k): v for k, v in ds.data_vars.items()}
        attrs_of = {b: v.attrs for b, v in available.items()}
    missing = [b for b in bands if b not in available]
    if missing:
        raise InputError(
            f"the input lacks bands {missing} that the model needs; it has {sorted(available)}. "
            "Load them too (srlib.load_s2 loads all ten by default), or use a model whose "
            "bands_in match"
        )
    template = _squeeze(available[bands[0]], (ydim, xdim), bands[0])
    if 0 in template.shape:
        raise InputError(f"the input is empty (shape {dict(template.sizes)}); "
                         "check the crop or AOI")
    out = []
    for b in bands:
        arr = _squeeze(available[b], (ydim, xdim), b)
        if arr.shape != template.shape:
            raise InputError(f"band {b} has shape {arr.shape}, {bands[0]} has {template.shape}; "
                             "resample all bands onto one grid first")
        out.append(_reflectance(arr, attrs_of[b]))
    scl = None
    if "scl" in available:
        arr = _squeeze(available["scl"], (ydim, xdim), "scl")
        data = arr.data if isinstance(arr.data, da.Array) else da.from_array(arr.data, chunks=-1)
        scl = data.astype(np.float32)
    return out, scl, template


def input_reflectance(ds: xr.Dataset | xr.DataArray, bands: tuple[str, ...]) -> list[da.Array]:
    """Lazy 2-D float32 reflectance x 10000 of ``bands`` of a scene (NaN at nodata)."""
    arrays, _scl, _template = _bands(ds, bands)
    return arrays


def _cluster_gpu_resources(device: str | torch.device | None) -> dict[str, float] | None:
    """``{"GPU": 1}`` where the active distributed client's workers advertise GPUs."""
    if device is not None and torch.device(device).type == "cpu":
        return None
    from ..config import distributed_client

    client = distributed_client()
    if client is None:
        return None
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {"GPU": 1} if any("GPU" in w.get("resources", {}) for w in workers) else None


def super_resolve(
    ds: xr.Dataset | xr.DataArray,
    model: str | ModelSpec | torch.nn.Module = "bicubic",
    *,
    scale: int = 10,
    chunks: int | Mapping[str, int] | tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    precision: str = "bf16",
    resources: Mapping[str, float] | None = None,
    postprocess: str | None = None,
    compile: bool | None = None,
) -> xr.Dataset:
    """Super-resolve a Sentinel-2 L2A scene, lazily.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        A scene like :func:`srlib.sample_scene`: variables named by Earth Search asset
        keys with dims ``(y, x)`` or ``(time, y, x)`` with one time, or a DataArray with a
        ``band`` dimension labelled by those names. A projected CRS is required. Integer
        DN are converted with the ``scale_factor``/``add_offset`` attributes (default
        1e-4 and 0); ``nodata`` (or ``_FillValue``) and NaN mark nodata. An ``scl``
        variable, when present, feeds the quality band.
    model : str, ModelSpec or torch.nn.Module
        ``"bicubic"`` (default, interpolation, not super-resolution), a spec from
        :func:`srlib.load_model`, or a module (wrapped with ``load_model(module)``).
    scale : int
        Upscaling factor; must equal the model's.
    chunks : int, dict or tuple, optional
        Input chunk size in pixels (``{"y": .., "x": ..}``); by default the input chunk
        whose output is 2560 px (five 512 px COG tiles; 5120 px for patch-blended models
        such as Swin2SR, which recompute the patches straddling chunk borders). The result does not
        depend on it (exactly for bicubic; within the documented tolerance for Swin2SR).
    device : str, optional
        ``"cuda"``, ``"cuda:1"``, ``"cpu"``; by default CUDA where the worker has it.
    batch_size : int, optional
        Patches per forward pass; by default planned from free device memory. A value
        that would overflow PyTorch's 2**31-element limit raises BatchSizeError here,
        before any compute, naming the largest safe value.
    precision : {"bf16", "fp16", "fp32"}
        Autocast precision on CUDA (the CPU always runs float32).
    resources : dict, optional
        Dask worker resources each model task holds on a ``dask.distributed`` cluster.
        By default ``{"GPU": 1}`` when the active client's workers advertise a ``GPU``
        resource (``dask worker --resources GPU=1``, as :func:`srlib.ops.slurm.dask_cluster`
        starts them) and ``device`` is not ``"cpu"``: one model task per GPU at a time,
        never more. Graph optimisation (low-level fusion) drops the annotation:
        computing the result directly needs
        ``dask.config.set({"optimization.fuse.active": False})``; :func:`srlib.to_zarr`
        keeps it by computing unoptimised blocks.
    postprocess : {"device", "host"}, optional
        Where patches are blended, de-normalised and quantised: ``"device"`` in torch on
        the model's device (only int16 comes back to the host; the next batch is prepared
        while the device runs), ``"host"`` in numpy. By default on the device on CUDA and
        on the host on the CPU. The two agree to 1 DN (bit for bit on the CPU).
    compile : bool, optional
        Run the model through ``torch.compile`` (once per worker process and device, on
        its first batches; the time is logged). By default the model card's ``compile``
        field (False when it has none). Compiled kernels round differently (float32
        outputs within 1e-5), so a compiled product is a different product for resume.

    Returns
    -------
    xarray.Dataset
        Lazy ``red, green, blue, nir`` (int16 reflectance x 10000, nodata -32768) and
        ``quality`` (uint8, :class:`srlib.Quality`), on the grid ``scale`` times finer
        with the same CRS and bounds.

    Raises
    ------
    InputError
        Missing bands, wrong dims, no or geographic CRS, empty input, scale mismatch.
    ModelError, BatchSizeError
        An unusable model or batch size.
    """
    spec = _checked_model(model, scale=scale, precision=precision, device=device)
    if compile is not None and bool(compile) != spec.compile:
        spec = replace(spec, compile=bool(compile))
    if postprocess not in (None, "device", "host"):
        raise InputError(f"postprocess must be 'device' or 'host' (or unset for the device "
                         f"on CUDA), got {postprocess!r}")
    bands, scl, template = _bands(ds, spec.bands_in)  # also refuses non-xarray, empty input
    transform, crs = check_grid(ds)
    shape = (int(template.shape[0]), int(template.shape[1]))
    safe = check_batch_size(spec, spec.patch_size, batch_size)
    stack, ychunks, xchunks = _input_stack([*bands, scl] if scl is not None else bands,
                                           shape, spec, chunks)
    cfg = KernelConfig(
        spec=spec, n_bands=len(bands), has_scl=scl is not None,
        device=None if device is None else str(device), batch_size=batch_size,
        safe_batch=safe, precision=precision,
        peak_per_pixel=peak_elements(spec, spec.patch_size) / spec.patch_size**2,
        y_starts=tuple(np.cumsum((0, *ychunks[:-1])).tolist()),
        x_starts=tuple(np.cumsum((0, *xchunks[:-1])).tolist()), post=postprocess,
    )
    if resources is None:
        resources = _cluster_gpu_resources(device)
    annotate = dask.annotate(resources=dict(resources)) if resources \
        else contextlib.nullcontext()
    with annotate:  # the model tasks (and their halo reads) hold the resources
        out = da.map_overlap(
            sr_block, stack,
            depth={0: 0, 1: spec.halo, 2: spec.halo}, boundary="reflect", trim=False,
            allow_rechunk=False, align_arrays=False,
            chunks=((len(spec.bands_out) + 1,), tuple(c * scale for c in ychunks),
                    tuple(c * scale for c in xchunks)),
            dtype=np.int16, meta=np.empty((0, 0, 0), dtype=np.int16),
            name=f"srlib-{spec.name}-" + tokenize(stack.name, spec_identity(spec), cfg.device,
                                                  precision, batch_size, postprocess),
            cfg=cfg,
        )
    if stack.shape[1:] != shape:  # drop the mirrored padding
        out = out[:, : shape[0] * scale, : shape[1] * scale]
    return _output_dataset(out, ds, spec, transform, crs, shape)


def _checked_model(model: str | ModelSpec | torch.nn.Module, *, scale: int, precision: str,
                   device: str | torch.device | None) -> ModelSpec:
    """Return the model's spec once scale, precision and device are known to fit it."""
    spec = load_model(model, scale=scale)
    if spec.scale != scale:
        raise InputError(f"scale={scale} but model {spec.name} upsamples by {spec.scale}; "
                         f"pass scale={spec.scale}")
    if precision not in ("bf16", "fp16", "fp32"):
        raise InputError(f"precision must be 'bf16', 'fp16' or 'fp32', got {precision!r}")
    if device is not None:
        resolve_device(device)
    return spec


def _input_stack(arrays: list[da.Array], shape: tuple[int, int], spec: ModelSpec,
                 chunks: int | Mapping[str, int] | tuple[int, int] | None
                 ) -> tuple[da.Array, tuple[int, ...], tuple[int, ...]]:
    """Stack the bands, mirror an input smaller than the halo up to it, chunk it.

    Returns the stack and its y and x chunks (each at least the halo).
    """
    halo = spec.halo
    stack = da.stack(arrays, axis=0)
    # reflect padding needs the halo: mirrored here, cropped from the output
    py, px = max(shape[0], halo), max(shape[1], halo)
    while stack.shape[1:] != (py, px):  # mirror in steps: a pad may not exceed the size
        grow_y = min(py - stack.shape[1], stack.shape[1])
        grow_x = min(px - stack.shape[2], stack.shape[2])
        stack = da.pad(stack, ((0, 0), (0, grow_y), (0, grow_x)), mode="symmetric")
    cy, cx = _chunk_sizes(chunks, spec)
    ychunks, xchunks = _plan(py, max(cy, halo), halo), _plan(px, max(cx, halo), halo)
    return stack.rechunk(((stack.shape[0],), ychunks, xchunks)), ychunks, xchunks


def _output_dataset(out: da.Array, ds: xr.Dataset | xr.DataArray, spec: ModelSpec,
                    transform: Affine, crs: object, shape: tuple[int, int]) -> xr.Dataset:
    """Wrap the lazy output as a Dataset of bands and quality on the zoomed grid."""
    scale = spec.scale
    variables: dict[str, xr.DataArray] = {}
    for i, band in enumerate(spec.bands_out):
        variables[band] = xr.DataArray(
            out[i], dims=("y", "x"),
            attrs={"long_name": f"{band} surface reflectance",
                   "standard_name": "surface_bidirectional_reflectance", "units": "1",
                   "scale_factor": REFLECTANCE_SCALE, "add_offset": 0.0,
                   "nodata": OUTPUT_NODATA},
        )
    variables["quality"] = xr.DataArray(
        out[-1].astype(np.uint8), dims=("y", "x"),
        attrs={"long_name": "quality flags",
               "flag_values": [int(q) for q in Quality],
               "flag_meanings": " ".join(q.name.lower() for q in Quality),
               "nodata": int(Quality.NODATA)},
    )
    result = xr.Dataset(variables, coords=zoom_coords(transform, shape, scale))
    result = result.rio.write_crs(crs).rio.write_transform(zoom_transform(transform, scale))
    for band in spec.bands_out:
        result[band] = result[band].rio.write_nodata(OUTPUT_NODATA, encoded=False)
    result["quality"] = result["quality"].rio.write_nodata(int(Quality.NODATA), encoded=False)
    if "time" in ds.coords and ds["time"].size == 1:
        # the bare value: ds["time"] carries the input's spatial_ref, whose transform is
        # the input grid's, and must not replace the output's
        result = result.assign_coords(time=((), ds["time"].values.reshape(())))
    result.attrs.update({k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float)})
    result.attrs.update(Conventions="CF-1.10", srlib_model=spec.name, srlib_model_token=spec.token,
                        srlib_model_identity=spec_identity(spec), srlib_scale=scale)
    return result
