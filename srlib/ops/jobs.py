"""Production jobs: ``srlib dr`` (one date, one MGRS tile or AOI) and ``srlib pdr``.

Steps of ``dr``, each reported to the notifier on failure (then re-raised): ``load``
(STAC search and lazy load), ``inference``/``writing``/``qc`` (super-resolution, Zarr,
COG and QC against the input through :func:`srlib.super_resolve_to_cog`),
``derivatives``, ``quicklook``, ``stac``, ``manifest`` and ``publish`` (S3, only after QC
passed), and ``database`` when a run is recorded.

Done means delivered: a product is one unit proven by its manifest (see
:mod:`srlib.product.manifest`), written last. A product is skipped only when its manifest is
complete, belongs to the same job (date, tile, AOI, model, version) and every file it
lists is in place (published: as S3 reports the stored bytes); anything else is redone,
and a product that fails QC is never reported done.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import rioxarray  # noqa: F401  (registers the .rio accessor)

from ..errors import DiskSpaceError, InputError, ProductBusy, is_transient, os_error_message
from ..models import ModelSpec, load_model, provenance, spec_identity
from ..product.derivatives import DERIVATIVES, write_derivatives
from ..product.manifest import MANIFEST_SUFFIX, mismatch, verify_local, write_manifest
from ..product.pipeline import super_resolve_to_cog
from ..product.qc import check_quality
from ..product.quicklook import QUICKLOOKS, quicklook_path, write_quicklooks
from ..product.stac_item import describe_product
from ..product.zarr_store import remove_store, wait_for_writers
from ..progress import job_progress, job_stages
from ..progress import report as report_progress
from ..scene.sources import EARTH_SEARCH, MIN_AOI_COVERAGE, load_s2, parse_date
from .db import RequestQueue, RunRecorder
from .devices import check_devices, device_cluster
from .notify import LogNotifier, Notifier, notifier_from_env, step
from .publish import object_store, publish_product, verify_published

__all__ = ["DEFAULT_AOI_NAME", "DEFAULT_NAME", "DrRequest", "JobResult", "aoi_key", "plan_dr",
           "product_name", "run_dr", "run_pdr"]

log = logging.getLogger("srlib")

#: Default product file name of a whole MGRS tile.
DEFAULT_NAME = "S2x10_T{mgrs}_{date:%Y%m%d}_v{version}.tif"
#: Default product file name of an AOI: ``aoi`` is a short key of the snapped bounds.
DEFAULT_AOI_NAME = "S2x10_T{mgrs}_{date:%Y%m%d}_{aoi}_v{version}.tif"
#: The smallest AOI, in input pixels a side (80 m at 10 m): QC cannot judge less.
MIN_AOI_PX = 8
#: Fields a name template may use.
NAME_FIELDS = ("mgrs", "date", "version", "aoi", "request")


def aoi_key(crs: object, bounds: Sequence[float]) -> str:
    """Short stable key (8 hex digits) of an AOI's bounds snapped to the scene grid."""
    text = f"{crs}|" + ",".join(f"{float(b):.3f}" for b in bounds)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _template_fields(template: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise InputError(f"bad product name template {template!r}: {err}") from err


def product_name(template: str, *, mgrs: str, date: dt.date, version: int,
                 aoi: str | None = None, request: int | None = None) -> str:
    """Fill a product name template (fields ``mgrs``, ``date``, ``version``, ``aoi``, ``request``).

    Raises
    ------
    InputError
        Unknown fields; an AOI product whose template has neither ``{aoi}`` nor
        ``{request}`` (products on one tile and date would collide); a name that is not a
        plain ``.tif`` file name inside the output directory.
    """
    fields = _template_fields(template)
    unknown = sorted({f.split(".")[0].split("[")[0] for f in fields} - set(NAME_FIELDS))
    if unknown:
        raise InputError(f"product name template {template!r} has unknown fields {unknown}; "
                         f"use {', '.join('{' + f + '}' for f in NAME_FIELDS)}")
    if aoi is not None and not {"aoi", "request"} & set(fields):
        raise InputError(f"product name template {template!r} has neither {{aoi}} nor "
                         "{request}: AOI products on one tile and date would overwrite each "
                         "other; add one of them")
    try:
        name = template.format(mgrs=mgrs, date=date, version=version, aoi=aoi or "",
                               request="" if request is None else request)
    except (ValueError, KeyError, IndexError, AttributeError) as err:
        raise InputError(f"bad product name template {template!r}: {err}") from err
    if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".tif") \
            or name != os.path.basename(name):
        raise InputError(f"product name {name!r} (from {template!r}) must be a plain file "
                         "name ending in .tif, inside --out: no '/', no leading '.'")
    if not _SAFE_NAME.match(name):
        raise InputError(f"product name {name!r} (from {template!r}) holds characters other "
                         "than letters, digits and . _ - + = , @ (no blanks or quotes); "
                         "change --name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise InputError(f"product name {name[:40]!r}... is {len(name.encode())} bytes; its "
                         f"files need at most {MAX_NAME_BYTES} (file systems allow 255 with "
                         "the suffixes): shorten --name")
    return name


#: Characters a product name may hold (they pass unquoted through shells, URLs and S3).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+=,@-]+$")
#: Longest product name: its longest file (``<stem>.manifest.json``) must fit in 255 bytes.
MAX_NAME_BYTES = 200


def check_output_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and prove it writable; return it.

    Raises
    ------
    InputError
        One line naming the directory and the fix (read-only, no permission, no space).
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".srlib-write-test-{os.getpid()}"
        probe.write_bytes(b"srlib")
        probe.unlink()
    except OSError as err:
        raise InputError(f"cannot write to the output directory {out}: "
                         f"{os_error_message(err) or err}") from None
    return out


#: Seconds a job waits for another job's lock on its product before giving up. A job
#: stopped by SIGTERM holds it until its last region write ends (at most the signal
#: watchdog's 10 s grace, then the process is ended and the lock goes with it).
LOCK_WAIT_S = 60.0


@contextlib.contextmanager
def product_lock(cog: Path, *, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``cog``'s product for the block (one job per product).

    Waits up to ``wait_s`` seconds for a job holding it to end. On the way out, waits
    for this process's threads still writing the product's Zarr store (a job that fails
    or is stopped unwinds before them), so that the next job never writes beside them.

    Raises
    ------
    ProductBusy
        Another job (named in the message) still holds it after ``wait_s``: a transient
        cause, retried later.
    """
    import fcntl
    import socket
    import time

    from ..signals import check_stop

    lock = cog.with_name(f".{cog.name}.lock")
    deadline = time.monotonic() + wait_s
    with open(lock, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    raise ProductBusy(f"another srlib job ({holder}) has been making {cog} "
                                      f"for the last {wait_s:.0f} s; wait for it to finish, "
                                      "or use another --out") from None
                check_stop()
                time.sleep(0.25)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        try:
            yield
        finally:
            wait_for_writers(cog.with_suffix(".zarr"))
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class JobResult:
    """What a job did."""

    status: str  # "done" or "skipped"
    cog: Path | None = None
    published: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    qc: dict[str, Any] | None = None
    run_id: int | None = None
    manifest: Path | None = None
    #: Fraction of the AOI covered by valid data (None for a whole tile)
    coverage: float | None = None
    #: Why the product is only partial (its data cover less of the AOI than the minimum)
    reason: str | None = None

    @property
    def delivered(self) -> str:
        """``partial`` when the data cover less of the AOI than the minimum, else ``done``."""
        return "partial" if self.reason else "done"

    @property
    def outcome(self) -> str:
        """What became of the request: ``done``, ``partial`` or ``skipped``."""
        return self.delivered if self.status == "done" else self.status

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (``srlib dr --json``)."""
        return {"status": self.status, "cog": str(self.cog) if self.cog else None,
                "published": list(self.published), "files": [str(f) for f in self.files],
                "manifest": str(self.manifest) if self.manifest else None,
                "qc_passed": (self.qc or {}).get("passed"), "timings": self.timings,
                "run_id": self.run_id, "coverage": self.coverage, "delivered": self.delivered,
                "reason": self.reason}


def product_files(cog: Path) -> list[Path]:
    """Every file a job may write for the product ``cog`` (whether present or not)."""
    stem = cog.stem
    names = [cog.name, f"{stem}.qc.json", f"{stem}.stac.json", f"{stem}{MANIFEST_SUFFIX}",
             *(f"{stem}_{d}.tif" for d in DERIVATIVES),
             *(quicklook_path(cog, k).name for k in QUICKLOOKS)]
    return [cog.with_name(n) for n in names]


def remove_outputs(cog: Path) -> None:
    """Delete a product's files, manifest first (the Zarr store is kept for resuming)."""
    for path in sorted(product_files(cog), key=lambda p: not p.name.endswith(MANIFEST_SUFFIX)):
        path.unlink(missing_ok=True)


def _model_spec(model: Any, options: dict[str, Any]) -> ModelSpec:
    return load_model(model, scale=options.get("scale", 10))


@dataclass(frozen=True)
class DrRequest:
    """One ``srlib dr`` job: which scene, which product, where it goes.

    Parameters
    ----------
    date : date or str
        Acquisition date (``YYYYMMDD`` or ISO).
    mgrs, aoi : optional
        A whole MGRS tile, or an AOI ``(min_lon, min_lat, max_lon, max_lat)``.
    s2_id, product_id : optional
        Which scene of the date (index), or its exact item id.
    out : path
        Output directory.
    publish : str, optional
        ``s3://bucket/prefix`` to publish to after QC.
    force : bool
        Redo the product even when a complete one exists.
    catalog : str
        STAC API.
    name_template : str, optional
        Product file name (:data:`DEFAULT_NAME` for a tile, :data:`DEFAULT_AOI_NAME` for an
        AOI).
    version : int
        Product version, in the name and the identity.
    derivatives : bool, optional
        Write NDVI, EVI, RGB and NIR COGs (default: for AOIs).
    request : int, optional
        The id of the database request this job serves.
    keep_zarr : bool, optional
        Keep the Zarr intermediate once the product is complete (default: for AOIs, whose
        derivatives are made from it; a whole tile's is about as large as its COG).
    devices : sequence of str, optional
        Run the inference on a local dask cluster of one worker per device
        (``["cuda:0", "cuda:1"]``; ``["cpu", "cpu"]`` stands in for GPUs), see
        :mod:`srlib.ops.devices`. Default: in this process, on ``device``.
    load_options, sr_options : dict
        Further options of :func:`srlib.load_s2` and of :func:`srlib.super_resolve`.
    """

    date: str | dt.date
    mgrs: str | None = None
    aoi: tuple[float, ...] | None = None
    s2_id: int = 0
    product_id: str | None = None
    out: Path = Path("out")
    publish: str | None = None
    force: bool = False
    catalog: str = EARTH_SEARCH
    name_template: str | None = None
    version: int = 1
    derivatives: bool | None = None
    request: int | None = None
    keep_zarr: bool | None = None
    devices: tuple[str, ...] | None = None
    load_options: dict[str, Any] = field(default_factory=dict)
    sr_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, **options: Any) -> DrRequest:
        """Build from keyword options; those that are not fields go to ``sr_options``."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in options.items() if k in names}
        extra = {k: v for k, v in options.items() if k not in names}
        if known.get("aoi") is not None:
            known["aoi"] = tuple(float(v) for v in known["aoi"])
        if known.get("devices") is not None:
            known["devices"] = tuple(check_devices(known["devices"]))
        if "out" in known:
            known["out"] = Path(known["out"])
        known["load_options"] = dict(known.get("load_options") or {})
        known["sr_options"] = {**dict(known.get("sr_options") or {}), **extra}
        return cls(**known)

    @property
    def makes_derivatives(self) -> bool:
        """Whether the job writes derivatives (``derivatives``, by default for AOIs)."""
        return self.derivatives if self.derivatives is not None else self.aoi is not None

    @property
    def keeps_zarr(self) -> bool:
        """Whether the job keeps the Zarr store (``keep_zarr``, by default for AOIs)."""
        return self.keep_zarr if self.keep_zarr is not None else self.aoi is not None

    def inputs(self) -> dict[str, Any]:
        """Return the job's inputs as a JSON-ready dict (recorded with the run)."""
        return {"date": str(self.date), "mgrs": self.mgrs,
                "aoi": list(self.aoi) if self.aoi else None, "s2_id": self.s2_id,
                "product_id": self.product_id, "publish": self.publish,
                "request": self.request, **batch_job()}


def batch_job() -> dict[str, str]:
    """Return the batch job this process runs in (``{"slurm_job": id}``), or ``{}``.

    Recorded with its runs and products, so that ``srlib finalise --job`` finds exactly
    them.
    """
    job = os.environ.get("SLURM_JOB_ID")
    return {"slurm_job": job} if job else {}


def run_dr(job: DrRequest | None = None, /, *, model: Any = "bicubic",
           notifier: Notifier | None = None, db: RunRecorder | None = None,
           progress: str = "off", **options: Any) -> JobResult:
    """Super-resolve one scene into a checked, optionally published product.

    Parameters
    ----------
    job : DrRequest, optional
        The job; or give its fields as keywords (``date=``, ``aoi=``, ``out=``, ...), as
        ``srlib dr`` does. Keywords that are not fields go to :func:`srlib.super_resolve`
        (``device=``, ``chunks=``, ...).
    model : str, ModelSpec or torch.nn.Module
        The model (see :func:`srlib.load_model`).
    notifier : Notifier, optional
        Told about each failing step (default: from the environment).
    db : MetadataDB, optional
        Records the run: inputs, model, versions, timings, QC, outputs and status, linked
        to ``job.request``.
    progress : {"off", "auto", "bar", "log"}
        Show one progress display for the whole job (:func:`srlib.job_progress`).

    Raises
    ------
    srlib.SrlibError
        Any failure (recorded as a failed run with ``db``).
    """
    job = job if job is not None else DrRequest.from_options(**options)
    spec = _model_spec(model, job.sr_options)
    notifier = notifier or notifier_from_env()
    with job_progress(job_stages(model=spec.name, publish=bool(job.publish)), mode=progress):
        devices = job.devices
        if not devices:
            return _run_dr_recorded(job, spec, notifier, db)
        if job.sr_options.get("device") is not None:
            raise InputError("give devices= (--gpus) or device= (--device), not both")
        # each worker sees only its own GPU, where "cuda" (the default) is that GPU
        cpu = devices[0] == "cpu"
        job = replace(job, sr_options={**job.sr_options, "device": "cpu" if cpu else None})
        with contextlib.ExitStack() as stack:
            with step("cluster", notifier, devices=",".join(devices)):
                stack.enter_context(device_cluster(devices))
            return _run_dr_recorded(job, spec, notifier, db)


#: Folder in ``out`` of the batch jobs' journals: one JSON line per dr run of the job
JOURNAL_DIR = ".srlib-jobs"


def journal_path(out: str | os.PathLike, job_id: str) -> Path:
    """Return the journal of SLURM job ``job_id``'s runs in ``out`` (``srlib finalise``)."""
    return Path(out) / JOURNAL_DIR / f"{job_id}.jsonl"


def _journal(job: DrRequest, entry: dict[str, Any]) -> None:
    """Append a run's outcome to its batch job's journal (nothing outside a batch job)."""
    batch = batch_job().get("slurm_job")
    if not batch:
        return
    path = journal_path(job.out, batch)
    line = json.dumps({**entry, "inputs": job.inputs()}, default=str) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:  # one short append: whole lines from parallel runs
            fh.write(line)
    except OSError as err:
        log.warning("could not journal the run in %s: %s", path, err)


def _run_dr_recorded(job: DrRequest, spec: ModelSpec, notifier: Notifier,
                     db: RunRecorder | None) -> JobResult:
    """Run the job, recording the run in ``db`` when given and in its batch job's journal."""
    from .notify import redact

    try:
        result = _run_dr_in_db(job, spec, notifier, db)
    except BaseException as err:
        _journal(job, {"status": "failed", "error": redact(f"{type(err).__name__}: {err}")})
        raise
    _journal(job, {"status": result.outcome,
                   "product": result.cog.name if result.cog else None})
    return result


def _run_dr_in_db(job: DrRequest, spec: ModelSpec, notifier: Notifier,
                  db: RunRecorder | None) -> JobResult:
    if db is None:
        return _run_dr(job, spec, notifier)
    from .notify import redact

    with step("database", notifier):
        run_id = db.start_run(job.inputs(), model=_model_record(spec),
                              versions=_versions(), request_id=job.request)
    try:
        result = _run_dr(job, spec, notifier)
    except Exception as err:
        report = getattr(err, "report", None)
        with contextlib.suppress(Exception), step("database", notifier, run=run_id):
            db.finish_run(run_id, "interrupted" if is_transient(err) else "failed",
                          error=redact(f"{type(err).__name__}: {err}"),
                          qc=report.to_dict() if report is not None else None)
        raise
    with step("database", notifier, run=run_id):
        db.finish_run(run_id, result.outcome, timings=result.timings, qc=result.qc,
                      outputs=result.published or [str(p) for p in result.files],
                      error=result.reason)
    result.run_id = run_id
    return result


def _model_record(spec: ModelSpec) -> str:
    """Return the model as the database records it (``name@version sha256:<hex>``)."""
    text = f"{spec.name}@{spec.version}" if spec.version else spec.name
    return f"{text} sha256:{spec.checkpoint_sha256}" if spec.checkpoint_sha256 else text


def _versions() -> dict[str, str]:
    import rasterio
    import torch

    from .. import __version__

    return {"srlib": __version__, "torch": torch.__version__, "gdal": rasterio.__gdal_version__}


def _identity(ds: Any, *, day: dt.date, tile: str, aoi: str | None, spec: Any,
              version: int, publish: str | None) -> dict[str, Any]:
    """Return what makes a product distinct (``publish``: where its Item's hrefs point)."""
    return {"date": f"{day:%Y%m%d}", "mgrs": tile, "aoi": aoi,
            "bounds": [round(float(b), 3) for b in ds.rio.bounds()],
            "crs": str(ds.rio.crs), "items": list(ds.attrs.get("items", [])),
            "model": spec_identity(spec), "version": version,
            "publish": publish.rstrip("/") if publish else None}


def _run_dr(job: DrRequest, model: ModelSpec, notifier: Notifier) -> JobResult:
    check_output_dir(job.out)
    ds, cog, identity, context = _locate(job, model, notifier)
    with product_lock(cog):
        if job.force:
            remove_outputs(cog)
        else:
            existing = _existing_product(job, cog, identity, notifier)
            if existing is not None:
                return existing
        return _make_product(job, ds, cog, identity, model, notifier, context)


def _locate(job: DrRequest, model: ModelSpec, notifier: Notifier
            ) -> tuple[Any, Path, dict[str, Any], dict[str, Any]]:
    """Find the job's scene (lazily) and name its product: (scene, COG, identity, context)."""
    day = parse_date(job.date)
    template = job.name_template or (DEFAULT_AOI_NAME if job.aoi is not None else DEFAULT_NAME)
    # refuse a bad template before any network call
    product_name(template, mgrs="00AAA", date=day, version=job.version,
                 aoi="0" if job.aoi is not None else None, request=job.request)
    context = {k: v for k, v in {"date": f"{day:%Y%m%d}", "mgrs": job.mgrs,
                                 "aoi": job.aoi}.items() if v is not None}
    with step("load", notifier, **context):
        ds = load_s2(date=day, mgrs=job.mgrs, aoi=job.aoi, s2_id=job.s2_id,
                     product_id=job.product_id, catalog=job.catalog, **job.load_options)
    report_progress("load", 1, 1)
    if job.aoi is not None and min(ds.sizes["y"], ds.sizes["x"]) < MIN_AOI_PX:
        raise InputError(f"aoi {list(job.aoi)} covers only {ds.sizes['y']} x {ds.sizes['x']} "
                         f"input pixels; a product needs at least {MIN_AOI_PX} x {MIN_AOI_PX} "
                         "(its quality checks cannot judge less): enlarge the AOI")
    tile = ds.attrs.get("mgrs") or (job.mgrs or "AOI")
    key = aoi_key(ds.rio.crs, ds.rio.bounds()) if job.aoi is not None else None
    cog = Path(job.out) / product_name(template, mgrs=tile, date=day, version=job.version,
                                       aoi=key, request=job.request)
    identity = _identity(ds, day=day, tile=tile, aoi=key, spec=model, version=job.version,
                         publish=job.publish)
    return ds, cog, identity, context


def plan_dr(job: DrRequest | None = None, /, *, model: Any = "bicubic",
            **options: Any) -> dict[str, Any]:
    """Return what :func:`run_dr` would do, computing nothing (``srlib dr --dry-run``).

    The scene is searched and opened lazily (no pixel is read) and the super-resolution
    graph is built, not run. The plan names the scene, the input and output grids, the
    model, the work (model blocks, Zarr regions), the estimated sizes against the free
    disk, the files the job would write, and whether a complete product is already there
    (the job would then skip it).

    Returns
    -------
    dict
        JSON-ready.
    """
    from ..engine.superres import super_resolve
    from ..product.pipeline import check_disk_space, disk_needs, existing_folder

    job = job if job is not None else DrRequest.from_options(**options)
    spec = _model_spec(model, job.sr_options)
    ds, cog, identity, _ = _locate(job, spec, LogNotifier())
    sr_options = {k: v for k, v in job.sr_options.items() if k != "device"}
    sr = super_resolve(ds, spec, **sr_options)
    blocks = sr["red"].data.numblocks
    zarr_bytes, cog_bytes = disk_needs(sr)
    derived = {f"{cog.stem}_{d}.tif" for d in DERIVATIVES}
    files = [f for f in product_files(cog) if job.makes_derivatives or f.name not in derived]
    try:
        check_disk_space(sr, cog.with_suffix(".zarr"), cog)
        fits = True
    except DiskSpaceError:
        fits = False
    manifest, why = verify_local(cog)
    return {
        "scene": {"items": list(ds.attrs.get("items", [])), "mgrs": ds.attrs.get("mgrs"),
                  "datetime": ds.attrs.get("datetime"), "crs": str(ds.rio.crs),
                  "bounds": [float(b) for b in ds.rio.bounds()],
                  "input_px": [int(ds.sizes["y"]), int(ds.sizes["x"])],
                  "resolution_m": abs(float(ds.rio.resolution()[0]))},
        "output": {"px": [int(sr.sizes["y"]), int(sr.sizes["x"])],
                   "resolution_m": abs(float(sr.rio.resolution()[0])),
                   "bands": [str(v) for v in sr.data_vars],
                   "raw_gb": round(sum(int(sr[v].size) * 2 for v in sr.data_vars) / 1e9, 6)},
        "model": provenance(spec),
        "work": {"model_blocks": int(blocks[0] * blocks[1]),
                 "devices": list(job.devices or [job.sr_options.get("device") or "auto"])},
        "disk": {"zarr_gb": round(zarr_bytes / 1e9, 6), "cog_gb": round(cog_bytes / 1e9, 6),
                 "free_gb": round(shutil.disk_usage(existing_folder(cog)).free / 1e9, 6),
                 "fits": fits, "keep_zarr": job.keeps_zarr},
        "outputs": [str(f) for f in files],
        "publish": job.publish,
        "existing": ("complete: the job would skip it (--force redoes it)"
                     if manifest is not None and not mismatch(manifest, identity)
                     and not job.force else why if manifest is None
                     else "another product or --force: the job would replace it"),
    }


def _existing_product(job: DrRequest, cog: Path, identity: dict[str, Any],
                      notifier: Notifier) -> JobResult | None:
    """Return the result of a complete product of this job already there, if any.

    None when there is none: then whatever is there of an unfinished one is removed.
    A complete local product that is not yet published is published here.
    """
    publish = job.publish
    if publish:
        store = object_store(publish)  # one client for the check and the clean-up
        manifest, why = verify_published(store, cog.name, identity)
        if manifest is not None:
            log.info("%s is published and complete under %s; skipping (--force redoes "
                     "it)", cog.name, publish)
            # a publish stopped after its manifest went up may have left staging behind
            store.remove_staging(cog.stem)
            uris = [f"{publish.rstrip('/')}/{r['name']}" for r in manifest["files"]]
            uris.append(f"{publish.rstrip('/')}/{cog.stem}{MANIFEST_SUFFIX}")
            skipped = JobResult("skipped", cog, published=uris)
            if job.aoi is not None:
                _record_coverage(skipped, manifest.get("qc"))
            return skipped
        log.info("%s: %s; making it", cog.name, why)
    manifest, why = verify_local(cog)
    if manifest is not None and mismatch(manifest, identity) == ["publish"]:
        log.info("%s was made for another publish target; remaking its files", cog)
        manifest = None
    if manifest is None:
        if cog.exists() or not why.startswith("no manifest"):
            log.info("%s is unfinished (%s); making it again", cog, why)
        remove_outputs(cog)
        return None
    differ = mismatch(manifest, identity)
    if differ:
        raise InputError(
            f"{cog} is another product (its manifest differs in {differ}); use a name "
            "template that tells them apart ({aoi}, {date}, {version}), another "
            "--out, or --force to replace it")
    report = check_quality(cog)
    if not report.passed:
        log.warning("%s no longer passes QC (%s); making it again", cog,
                    ", ".join(report.failed))
        remove_outputs(cog)
        return None
    files = [cog.with_name(r["name"]) for r in manifest["files"]]
    result = JobResult("skipped", cog, files=files, qc=report.to_dict(),
                       manifest=cog.with_name(cog.stem + MANIFEST_SUFFIX))
    if job.aoi is not None:
        _record_coverage(result, manifest.get("qc"))
    if not publish:
        log.info("%s exists and is complete; skipping (--force redoes it)", cog)
        return result
    with step("publish", notifier, product=cog.name, destination=publish):
        result.published = publish_product(cog, report, publish, extra=files[2:])
    result.status = "done"
    return result


def _record_coverage(result: JobResult, qc: dict[str, Any] | None) -> None:
    """Set the result's AOI coverage from its QC report; ``partial`` below the minimum."""
    check = next((c for c in (qc or {}).get("checks", []) if c["name"] == "coverage"), None)
    if check is None:
        return
    result.coverage = float(check["value"]["valid"])
    if result.coverage < MIN_AOI_COVERAGE:
        result.reason = (f"partial: the data cover {result.coverage:.0%} of the AOI "
                         f"(minimum {MIN_AOI_COVERAGE:.0%}); the product holds what there is")
        log.warning("%s: %s", result.cog.name if result.cog else "product", result.reason)


def _make_product(job: DrRequest, ds: Any, cog: Path, identity: dict[str, Any],
                  model: ModelSpec, notifier: Notifier, context: dict[str, Any]) -> JobResult:
    """Make every file of the product, its manifest last; publish it when asked."""
    name, publish = cog.name, job.publish
    result = JobResult("done", cog)
    with step("inference", notifier, product=name, **context):
        report = super_resolve_to_cog(ds, cog, model=model, **job.sr_options)
    result.timings = report.timings
    result.qc = report.to_dict()
    properties: dict[str, Any] = {"srlib:model": provenance(model)}
    if job.aoi is not None:
        _record_coverage(result, result.qc)
        properties.update({"srlib:aoi": list(job.aoi), "srlib:aoi_coverage": result.coverage,
                           "srlib:aoi_data_coverage": ds.attrs.get("data_coverage")})
    extra: list[Path] = []
    if job.makes_derivatives:
        with step("derivatives", notifier, product=name):
            extra = write_derivatives(cog.with_suffix(".zarr"), cog)
    with step("quicklook", notifier, product=name):
        extra = [*extra, *write_quicklooks(ds, cog)]
    base = publish.rstrip("/") if publish else None
    href = (lambda p: f"{base}/{p.name}") if base else (lambda p: str(p.resolve()))
    with step("stac", notifier, product=name):
        described = describe_product(
            cog, ds=ds, quicklooks=False, href=href, properties=properties,
            files={p.stem.rsplit("_", 1)[-1].lower(): p for p in extra if p.suffix == ".tif"})
    extra = [*extra, described[-1]]
    result.files = [cog, cog.with_suffix(".qc.json"), *extra]
    with step("manifest", notifier, product=name):
        result.manifest = write_manifest(cog, result.files, identity=identity, qc=result.qc,
                                         model=provenance(model),
                                         job={**batch_job(), "keep_zarr": job.keeps_zarr})
    if publish:
        with step("publish", notifier, product=name, destination=publish):
            result.published = publish_product(cog, report, publish, extra=extra)
    if not job.keeps_zarr:
        remove_store(cog.with_suffix(".zarr"))
    return result


def check_pdr_config(db: RequestQueue, *, model: Any = "bicubic", publish: str | None = None,
                     device: str | None = None, **options: Any) -> ModelSpec:
    """Check ``pdr``'s whole configuration before anything is claimed; return the model spec.

    The model loads, the device exists, the publish target is reachable and the database
    answers; otherwise the first problem is raised (:class:`srlib.SrlibError`).
    """
    from ..engine.kernel import resolve_device
    from .publish import PublishError, S3Store, object_store

    spec = _model_spec(model, options)
    check_output_dir(options.get("out", "out"))
    try:
        resolve_device(device)
    except Exception as err:
        raise InputError(f"device {device!r} is not usable here: {err}; use cpu, cuda or "
                         "cuda:N") from err
    if publish:
        store = object_store(publish)
        if isinstance(store, S3Store):
            try:
                store.client.head_bucket(Bucket=store.target.bucket)
            except Exception as err:
                raise PublishError(f"cannot reach the publish target {publish}: "
                                   f"{type(err).__name__}: {err}") from err
    db.ping()
    return spec


def run_pdr(
    db: RequestQueue,
    *,
    worker: str,
    once: bool = True,
    poll_interval: float = 60.0,
    notifier: Notifier | None = None,
    max_requests: int | None = None,
    lease_s: float = 600.0,
    max_attempts: int = 3,
    backoff_s: float = 60.0,
    **dr_options: Any,
) -> dict[str, int]:
    """Process pending AOI requests from the metadata database; never lose one.

    The whole configuration is checked first (:func:`check_pdr_config`): nothing is
    claimed with a model, device, output directory, publish target or database that
    cannot work. Each claimed request holds a lease of ``lease_s`` seconds (database
    clock) that a background thread renews while it runs; a request whose worker died is
    reclaimed by another worker once its lease has expired (its run is marked
    ``abandoned``).

    How a request ends:

    - delivered: ``done`` (or ``partial``, when its data cover less of the AOI than the
      minimum), with its own product URIs, only after publishing succeeded;
    - a permanent cause (:func:`srlib.errors.is_transient` is False: a bad request, a
      model that cannot run, a product that fails QC): ``failed`` with the reason, and
      the next request goes on;
    - a transient cause (the database, the network, S3, a full disk, ...): back to
      ``pending`` with a backoff of ``backoff_s * 2**(attempt - 1)``; ``failed`` with the
      reason and a notification once ``max_attempts`` are spent;
    - a stop signal (:class:`srlib.Terminated`): back to ``pending`` at once, the attempt
      not counted, and the signal is re-raised so that the worker exits.

    ``once`` stops when nothing is claimable; otherwise the database is polled every
    ``poll_interval`` seconds. A published product whose database write failed is found
    complete by the next attempt (its manifest is the truth) and the request completes.

    Returns
    -------
    dict
        Counts of ``done``, ``partial``, ``skipped``, ``retry`` (put back to pending) and
        ``failed`` requests.
    """
    from ..errors import Terminated
    from ..signals import as_stop, check_stop, on_forced_exit
    from .db import LeaseLost
    from .notify import redact

    if poll_interval < 0 or lease_s <= 0 or max_attempts < 1 or backoff_s < 0:
        raise InputError(f"pdr needs poll_interval >= 0 (got {poll_interval}), lease_s > 0 "
                         f"({lease_s}), max_attempts >= 1 ({max_attempts}) and backoff_s >= 0 "
                         f"({backoff_s})")
    notifier = notifier or notifier_from_env()
    progress = dr_options.pop("progress", "off")
    with step("database", notifier, worker=worker):
        dr_options["model"] = check_pdr_config(db, **dr_options)
    counts = {"done": 0, "partial": 0, "skipped": 0, "retry": 0, "failed": 0}
    handled = 0
    while max_requests is None or handled < max_requests:
        check_stop()
        with step("database", notifier, worker=worker):
            request = db.claim_request(worker, lease_s=lease_s, max_attempts=max_attempts)
        if request is None:
            if once:
                break
            _sleep(poll_interval)
            continue
        handled += 1
        rid = request["id"]

        def release(err: BaseException, *, count: bool = True, rid: int = rid) -> str:
            return db.release_request(rid, worker, redact(f"{type(err).__name__}: {err}"),
                                      backoff_s=backoff_s, max_attempts=max_attempts,
                                      count=count)

        def forced_release(rid: int = rid) -> None:
            release(Terminated("the worker was stopped"), count=False, rid=rid)

        with on_forced_exit(forced_release), db.lease(rid, worker, lease_s) as lease:
            try:
                result = run_dr(date=request["date"], aoi=request["aoi"], notifier=notifier,
                                db=db, request=rid, progress=progress, **dr_options)
                lease.check()
                with step("database", notifier, worker=worker, request=rid):
                    db.complete_request(rid, result.run_id, worker=worker,
                                        outputs=result.published
                                        or [str(p) for p in result.files],
                                        status=result.delivered, coverage=result.coverage,
                                        reason=result.reason)
            except LeaseLost as lost:
                counts["failed"] += 1
                log.error("request %s: %s", rid, lost)
                continue
            except Exception as raised:
                err = as_stop(raised)  # after a stop signal, whatever unwound is the stop
                if isinstance(err, Terminated):
                    log.error("request %s: %s; putting it back to pending", rid, err)
                    with contextlib.suppress(Exception):
                        release(err, count=False)
                    if err is raised:
                        raise
                    raise err from raised
                message = redact(f"{type(err).__name__}: {err}")
                transient = is_transient(err)
                outcome = _end_request(db, rid, worker, err, message, release,
                                       transient=transient)
                counts[outcome] += 1
                if outcome == "failed" and transient:
                    notifier.notify("attempts", err, context={
                        "request": rid, "attempts": request.get("attempts"),
                        "worker": worker})
                continue
        counts[result.outcome] += 1
    return counts


def _end_request(db: RequestQueue, rid: int, worker: str, err: BaseException, message: str,
                 release: Any, *, transient: bool) -> str:
    """Record a failed attempt: ``retry`` (back to pending) or ``failed``.

    Never raises but for a stop signal.
    """
    from .db import DatabaseError, LeaseLost

    try:
        if transient:
            state = release(err)
            log.error("request %s: %s; %s", rid, message,
                      "put back to pending (srlib requeue, or wait for the backoff)"
                      if state == "pending" else "its attempts are spent: failed")
            return "retry" if state == "pending" else "failed"
        log.error("request %s failed: %s", rid, message)
        db.fail_request(rid, message, worker=worker)
        return "failed"
    except LeaseLost as lost:
        log.error("request %s: %s", rid, lost)
    except DatabaseError as db_err:  # the lease expires and another worker retries it
        log.error("request %s: %s; it could not be recorded (%s) and returns to pending "
                  "when its lease expires", rid, message, db_err)
    return "retry" if transient else "failed"


def _sleep(seconds: float) -> None:
    """Sleep, waking within a second of a stop signal."""
    import time

    from ..signals import check_stop

    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        check_stop()
        time.sleep(min(left, 1.0))
