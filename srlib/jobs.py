"""Production jobs: ``srlib dr`` (one date, one MGRS tile or AOI) end to end.

Steps, each reported to the notifier on failure (then re-raised): ``load`` (STAC search
and lazy load), ``inference`` (super-resolution, Zarr, COG and QC through
:func:`srlib.super_resolve_to_cog`), ``publish`` (S3, only after QC passed). A product
that already exists and passes QC (locally, or at its published key) is skipped unless
``force``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .derivatives import write_derivatives
from .notify import Notifier, notifier_from_env, step
from .pipeline import remove_product, super_resolve_to_cog
from .publish import S3Target, publish_product, s3_client
from .qc import check_quality
from .quicklook import write_quicklooks
from .sources import EARTH_SEARCH, load_s2, parse_date
from .stac_item import write_product_item

__all__ = ["DEFAULT_NAME", "JobResult", "product_name", "run_dr", "run_pdr"]

log = logging.getLogger("srlib")

#: Default product file name.
DEFAULT_NAME = "S2x10_T{mgrs}_{date:%Y%m%d}_v{version}.tif"


def product_name(template: str, *, mgrs: str, date: dt.date, version: int) -> str:
    """Fill the product name template (fields ``mgrs``, ``date``, ``version``)."""
    return template.format(mgrs=mgrs, date=date, version=version)


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


def _published(uri: str, name: str) -> bool:
    target = S3Target.parse(uri)
    try:
        s3_client().head_object(Bucket=target.bucket, Key=target.key(name))
        return True
    except Exception:
        return False


def run_dr(
    *,
    date: str | dt.date,
    mgrs: str | None = None,
    aoi: Sequence[float] | None = None,
    s2_id: int = 0,
    product_id: str | None = None,
    model: Any = "bicubic",
    out: str | os.PathLike = "out",
    publish: str | None = None,
    force: bool = False,
    catalog: str = EARTH_SEARCH,
    name_template: str = DEFAULT_NAME,
    version: int = 1,
    notifier: Notifier | None = None,
    load_options: dict[str, Any] | None = None,
    derivatives: bool | None = None,
    db: Any | None = None,
    **options: Any,
) -> JobResult:
    """Super-resolve one scene into a checked, optionally published product.

    Parameters mirror ``srlib dr``; ``options`` go to :func:`srlib.super_resolve`.
    ``derivatives`` (default: for AOI requests) writes NDVI, EVI, RGB and NIR COGs beside
    the product and publishes them with it. With ``db`` (a :class:`srlib.db.MetadataDB`)
    the run is recorded: inputs, model, versions, timings, QC, outputs and status.
    """
    job = dict(date=date, mgrs=mgrs, aoi=aoi, s2_id=s2_id, product_id=product_id,
               model=model, out=out, publish=publish, force=force, catalog=catalog,
               name_template=name_template, version=version, notifier=notifier,
               load_options=load_options, derivatives=derivatives, **options)
    if db is None:
        return _run_dr(**job)
    from .notify import redact

    inputs = {"date": str(date), "mgrs": mgrs, "aoi": list(aoi) if aoi else None,
              "s2_id": s2_id, "product_id": product_id, "publish": publish}
    run_id = db.start_run(inputs, model=getattr(model, "name", str(model)),
                          versions=_versions())
    try:
        result = _run_dr(**job)
    except Exception as err:
        report = getattr(err, "report", None)
        db.finish_run(run_id, "failed", error=redact(f"{type(err).__name__}: {err}"),
                      qc=report.to_dict() if report is not None else None)
        err.srlib_run_id = run_id  # type: ignore[attr-defined]
        raise
    db.finish_run(run_id, result.status, timings=result.timings, qc=result.qc,
                  outputs=result.published or [str(p) for p in result.files])
    result.run_id = run_id
    return result


def _versions() -> dict[str, str]:
    import rasterio
    import torch

    from . import __version__

    return {"srlib": __version__, "torch": torch.__version__, "gdal": rasterio.__gdal_version__}


def _run_dr(
    *,
    date: str | dt.date,
    mgrs: str | None,
    aoi: Sequence[float] | None,
    s2_id: int,
    product_id: str | None,
    model: Any,
    out: str | os.PathLike,
    publish: str | None,
    force: bool,
    catalog: str,
    name_template: str,
    version: int,
    notifier: Notifier | None,
    load_options: dict[str, Any] | None,
    derivatives: bool | None,
    **options: Any,
) -> JobResult:
    notifier = notifier or notifier_from_env()
    day = parse_date(date)
    context = {"date": f"{day:%Y%m%d}", "mgrs": mgrs, "aoi": aoi}
    context = {k: v for k, v in context.items() if v is not None}
    with step("load", notifier, **context):
        ds = load_s2(date=day, mgrs=mgrs, aoi=aoi, s2_id=s2_id, product_id=product_id,
                     catalog=catalog, **(load_options or {}))
    tile = ds.attrs.get("mgrs") or (mgrs or "AOI")
    name = product_name(name_template, mgrs=tile, date=day, version=version)
    cog = Path(out) / name
    existing = None  # the QC report of a product already at ``cog``, checked once
    if not force:
        if publish and _published(publish, name):
            log.info("%s is already published under %s; skipping (--force redoes it)",
                     name, publish)
            return JobResult("skipped", cog)
        if cog.exists():
            existing = check_quality(cog)
            if existing.passed:
                log.info("%s exists and passes QC; skipping (--force redoes it)", cog)
                if not publish:
                    return JobResult("skipped", cog)
    else:
        remove_product(cog)
    result = JobResult("done", cog)
    if existing is None:
        with step("inference", notifier, product=name, **context):
            report = super_resolve_to_cog(ds, cog, model=model, **options)
        result.timings = report.timings
    else:
        report = existing
    result.qc = report.to_dict()
    extra: list[Path] = []
    if derivatives if derivatives is not None else aoi is not None:
        with step("derivatives", notifier, product=name):
            extra = write_derivatives(cog.with_suffix(".zarr"), cog)
    with step("quicklook", notifier, product=name):
        extra = [*extra, *write_quicklooks(ds, cog)]
    base = publish.rstrip("/") if publish else None
    href = (lambda p: f"{base}/{p.name}") if base else (lambda p: str(p.resolve()))
    with step("stac", notifier, product=name):
        item = write_product_item(
            cog, datetime=ds.attrs.get("datetime") or None, href=href(cog),
            properties={"srlib:source_items": ds.attrs.get("items", []),
                        "srlib:model": getattr(model, "name", str(model))},
            extra_assets={"qc": href(cog.with_suffix(".qc.json")),
                          **{p.stem.rsplit("_", 1)[-1].lower(): href(p) for p in extra
                             if p.suffix == ".tif"}})
    extra = [*extra, item]
    result.files = [cog, cog.with_suffix(".qc.json"), *extra]
    if publish:
        with step("publish", notifier, product=name, destination=publish):
            result.published = publish_product(cog, report, publish, extra=extra)
    return result


def run_pdr(
    db: Any,
    *,
    worker: str,
    once: bool = True,
    poll_interval: float = 60.0,
    notifier: Notifier | None = None,
    max_requests: int | None = None,
    **dr_options: Any,
) -> dict[str, int]:
    """Process pending AOI requests from the metadata database.

    Each claimed request runs :func:`run_dr` (recorded as a run); it is marked ``done``
    only after the job (publishing included) succeeded, else ``failed`` with its error,
    and the next request goes on. ``once`` stops when nothing is pending; otherwise the
    database is polled every ``poll_interval`` seconds.

    Returns
    -------
    dict
        Counts of ``done``, ``skipped`` and ``failed`` requests.
    """
    import time

    from .notify import redact

    notifier = notifier or notifier_from_env()
    counts = {"done": 0, "skipped": 0, "failed": 0}
    handled = 0
    while max_requests is None or handled < max_requests:
        with step("database", notifier, worker=worker):
            request = db.claim_request(worker)
        if request is None:
            if once:
                break
            time.sleep(poll_interval)
            continue
        handled += 1
        try:
            result = run_dr(date=request["date"], aoi=request["aoi"], notifier=notifier,
                            db=db, **dr_options)
        except Exception as err:
            message = redact(f"{type(err).__name__}: {err}")
            with step("database", notifier, worker=worker):
                db.fail_request(request["id"], message, getattr(err, "srlib_run_id", None))
            counts["failed"] += 1
            log.error("request %s failed: %s", request["id"], message)
            continue
        with step("database", notifier, worker=worker):
            db.complete_request(request["id"], result.run_id)
        counts[result.status] += 1
    return counts

