"""The one-call path: super-resolve, stream to Zarr, convert to COG, gate on QC."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from ..engine.kernel import resolve_device
from ..engine.superres import super_resolve
from ..errors import DiskSpaceError, QCFailed, add_step
from ..models import compile_seconds, load_model, provenance
from ..progress import size_text
from .cog import to_cog
from .qc import QCReport, check_quality
from .stac_item import describe_product
from .zarr_store import holds_product, is_complete, remove_store, spill_dir, to_zarr

__all__ = ["super_resolve_to_cog"]

log = logging.getLogger("srlib")


def super_resolve_to_cog(
    ds: xr.Dataset | xr.DataArray,
    cog_path: str | os.PathLike,
    *,
    model: Any = "bicubic",
    zarr_path: str | os.PathLike | None = None,
    thresholds: Mapping[str, Any] | None = None,
    resume: bool = True,
    stac: bool = False,
    cog_tiles: bool | None = None,
    **options: Any,
) -> QCReport:
    """Super-resolve ``ds`` into a quality-checked COG at ``cog_path``.

    Stages: :func:`srlib.super_resolve` (lazy), :func:`srlib.to_zarr` (inference and
    write, resumable), :func:`srlib.to_cog` (to a staging file beside the target) and
    :func:`srlib.check_quality`. The COG is moved to ``cog_path`` only if QC passed; the
    Zarr store is kept for inspection either way, and the QC report is written as JSON
    beside the store (and beside the COG on success).

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        The scene (see :func:`srlib.super_resolve`).
    cog_path : str or PathLike
        Final product path.
    model : str, ModelSpec or torch.nn.Module
        Passed to ``super_resolve``.
    zarr_path : str or PathLike, optional
        Intermediate store (default: ``cog_path`` with suffix ``.zarr``).
    thresholds : mapping, optional
        QC threshold overrides.
    resume : bool
        Resume an interrupted Zarr store of the same product. A store at ``zarr_path``
        that holds another product (another input, model, stats...) is never reused: it
        is written afresh.
    stac : bool
        Also write the quicklooks and the STAC Item beside the COG
        (:func:`srlib.product.stac_item.describe_product`), listed in the report's
        ``files``.
    cog_tiles : bool, optional
        Compress the COG's full-resolution tiles while the store is written
        (:func:`srlib.to_zarr`'s ``cog_tiles``), so that the COG's main cost overlaps
        inference. By default when the model runs on a GPU, whose blocks leave the CPUs
        free; not on the CPU, where the two compete for the same cores (12% slower on 2
        cores, measured: benchmarks/README.md).
    **options
        Further ``super_resolve`` options (``chunks``, ``device``, ``batch_size``, ...).

    Returns
    -------
    QCReport
        The passed report, with ``timings`` in seconds.

    Raises
    ------
    DiskSpaceError
        Before anything is computed, when the store and the COG would not fit.
    QCFailed
        When a check failed; no file is left at ``cog_path``.
    """
    cog_path = Path(cog_path)
    zarr_path = Path(zarr_path) if zarr_path else cog_path.with_suffix(".zarr")
    staging = cog_path.with_name(f".{cog_path.stem}.staging{cog_path.suffix}")
    staging.unlink(missing_ok=True)  # left by a killed run
    t0 = time.perf_counter()
    spec = load_model(model, scale=options.get("scale", 10))  # loaded (and verified) once
    sr = super_resolve(ds, spec, **options)
    device = resolve_device(options.get("device"))
    if resume and zarr_path.exists() and not holds_product(zarr_path, sr):
        log.warning("%s holds another product (other input, model, stats or geometry); "
                    "writing it afresh", zarr_path)
        resume = False
    check_disk_space(sr, zarr_path, cog_path, store_done=resume and is_complete(zarr_path))
    log.info("super-resolving %s px into %s", dict(sr.sizes), zarr_path)
    with _stage("inference"):
        to_zarr(sr, zarr_path, resume=resume,
                cog_tiles=device.type == "cuda" if cog_tiles is None else cog_tiles)
    t1 = time.perf_counter()
    log.info("writing COG %s", cog_path)
    try:
        with _stage("writing"):
            to_cog(zarr_path, staging)
        shutil.rmtree(spill_dir(zarr_path), ignore_errors=True)  # copied into the COG
        t2 = time.perf_counter()
        inference_key = "gpu_s" if device.type == "cuda" else "cpu_s"
        timings = {inference_key: t1 - t0, "zarr_s": t1 - t0, "cog_s": t2 - t1,
                   "total_s": t2 - t0}
        if options.get("compile", spec.compile):  # compiled in this process (not on workers)
            compiled = compile_seconds(spec, str(device))
            if compiled is not None:
                timings["compile_s"] = compiled
        with _stage("qc"):
            report = check_quality(staging, timings=timings, thresholds=thresholds, source=ds,
                                   coverage=ds.attrs.get("data_coverage"))
        report.path = str(cog_path)
        report.model = provenance(spec)
        report.timings["qc_s"] = time.perf_counter() - t2
        report.to_json(zarr_path.with_suffix(".qc.json"))
        if not report.passed:
            log.error("QC failed, no product written:\n%s", report.to_table())
            raise QCFailed(report.failed, report)
        os.replace(staging, cog_path)
        report.to_json(cog_path.with_suffix(".qc.json"))
        report.files = [cog_path, cog_path.with_suffix(".qc.json")]
        log.info("QC passed: %s", cog_path)
        if stac:
            with _stage("stac"):
                report.files += describe_product(
                    cog_path, ds=ds if isinstance(ds, xr.Dataset) else None,
                    properties={"srlib:model": report.model})
        return report
    finally:
        staging.unlink(missing_ok=True)


#: Compressed size over raw size, as measured on real output (FIELD-NOTES: a quarter tile
#: of 30 GB raw gave a 17 GB Zarr and a 15.6 GB COG); with a margin.
SIZE_RATIO = 0.65


def estimate_bytes(sr: xr.Dataset) -> int:
    """Return the estimated size of the Zarr store, or of the COG, of a lazy product.

    Both hold the same pixels and overviews at about the same compression.
    """
    raw = sum(int(sr[v].size) * 2 for v in sr.data_vars)  # int16 in the COG
    return int(raw * 4 / 3 * SIZE_RATIO)


def disk_needs(sr: xr.Dataset, *, store_done: bool = False) -> tuple[int, int]:
    """Return the estimated bytes of the Zarr store and of the COG.

    The store's include the full resolution's COG tiles compressed beside it meanwhile;
    a complete store that is reused (``store_done``) needs none.
    """
    cog_bytes = estimate_bytes(sr)
    return (0 if store_done else cog_bytes + cog_bytes * 3 // 4), cog_bytes


def check_disk_space(sr: xr.Dataset, zarr_path: Path, cog_path: Path, *,
                     store_done: bool = False) -> None:
    """Refuse to start when the Zarr store and the COG would not fit on their disks.

    A store that is complete and will be reused (``store_done``) needs no more space; the
    COG is counted on its own disk, and on the store's when both share one.

    Raises
    ------
    DiskSpaceError
        Naming the estimated sizes, the free space and the path.
    """
    zarr_bytes, cog_bytes = disk_needs(sr, store_done=store_done)
    needs: dict[Path, int] = {}
    for path, size in ((zarr_path, zarr_bytes), (cog_path, cog_bytes)):
        folder = existing_folder(path)
        device = next((p for p in needs if os.stat(p).st_dev == os.stat(folder).st_dev), folder)
        needs[device] = needs.get(device, 0) + size
    for folder, size in needs.items():
        free = shutil.disk_usage(folder).free
        if size > free:
            raise DiskSpaceError(
                f"the product needs about {size_text(size)} in {folder} (Zarr "
                f"{size_text(zarr_bytes)}, COG {size_text(cog_bytes)}) but "
                f"{size_text(free)} are free: free space there or write elsewhere "
                "(--out, zarr_path=)")


def existing_folder(path: Path) -> Path:
    """Return the nearest folder above ``path`` that exists (where it will be written)."""
    for parent in Path(path).absolute().parents:
        if parent.is_dir():
            return parent
    return Path.cwd()


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """Record on an exception the pipeline stage it came from (for notifications)."""
    from ..failpoints import hit

    try:
        hit({"writing": "cog"}.get(name, name))
        yield
    except Exception as err:
        add_step(err, name)
        raise


def remove_product(cog_path: str | os.PathLike) -> None:
    """Delete a product, its QC JSON and its Zarr store (default names)."""
    cog_path = Path(cog_path)
    cog_path.unlink(missing_ok=True)
    cog_path.with_suffix(".qc.json").unlink(missing_ok=True)
    remove_store(cog_path.with_suffix(".zarr"))
