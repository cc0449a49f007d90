"""The ``srlib`` command line (click). Library code logs; only this module prints.

Every failure exits non-zero with one line, printed once and with secrets redacted
(``srlib <command> failed: ...``); ``-v`` adds the traceback. Log records, srlib's and
third-party libraries' alike, pass through the same redaction, and ``-v`` turns on debug
logging for srlib only (botocore's debug log would print request headers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import click

__all__ = ["main"]


class _Redact(logging.Filter):
    """Redact secrets from every record a handler emits (see :func:`srlib.ops.notify.redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from srlib.ops.notify import redact

        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
        return True


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Redact())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_srlib", False):
            root.removeHandler(old)
    handler._srlib = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("srlib").setLevel(level)
    # urllib3 warns of each retry of a STAC call; srlib retries them (sources.STAC_RETRY)
    # and reports a call that still fails in one line of its own (-v: the warnings too,
    # never urllib3's debug lines, which name every request)
    logging.getLogger("urllib3.connectionpool").setLevel(
        logging.WARNING if verbose else logging.ERROR)
    # dask.distributed logs each cluster's start and stop at INFO (30 lines a campaign,
    # even with -q): its warnings only, its own default (INFO) with -v. It sets its level
    # when first imported, from dask's config: the config says it (through the
    # environment while dask is not imported, so --help stays light), and a distributed
    # already imported is told.
    distributed = "info" if verbose else "warning"
    if "dask" in sys.modules:
        sys.modules["dask"].config.set({"distributed.logging.distributed": distributed})
    else:
        os.environ["DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"] = distributed
    if "distributed" in sys.modules:
        logging.getLogger("distributed").setLevel(logging.INFO if verbose else logging.WARNING)


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Record ``-v``/``-q`` wherever given (before or after the command) and apply them."""
    if not value or ctx.resilient_parsing:
        return
    root = ctx.find_root()
    root.obj = root.obj or {}
    root.obj[param.name] = True
    if root.obj.get("verbose") and root.obj.get("quiet"):
        raise click.UsageError("-v and -q contradict each other; give one")
    _setup_logging(bool(root.obj.get("verbose")), bool(root.obj.get("quiet")))


def _verbosity(func):
    """Add ``-v/--verbose`` and ``-q/--quiet`` to a command (also accepted before it)."""
    func = click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_verbosity,
                        help="Only warnings and errors; no progress display.")(func)
    return click.option("-v", "--verbose", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_verbosity, help="Debug logging and tracebacks.")(func)


def _progress_mode() -> str:
    """``off`` under ``-q``, else ``auto`` (a bar on a terminal, log lines otherwise)."""
    obj = click.get_current_context().find_root().obj or {}
    return "off" if obj.get("quiet") else "auto"


class _Group(click.Group):
    """Turn every failure of a command into one redacted line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException,
                SystemExit):
            raise
        except BaseException as raised:
            from srlib.ops.notify import redact
            from srlib.signals import as_stop

            err = as_stop(raised)  # after a stop signal, whatever unwound is the stop
            name = ctx.invoked_subcommand or "srlib"
            if (ctx.obj or {}).get("verbose"):
                import traceback

                click.echo(redact("".join(traceback.format_exception(err))), err=True)
            known = type(err).__module__.startswith("srlib")
            text = str(err) if known else f"{type(err).__name__}: {err}"
            if isinstance(err, OSError) and not known:
                from srlib.errors import os_error_message

                fixed = os_error_message(err)
                known, text = (True, fixed) if fixed else (known, text)
            hint = "" if known or (ctx.obj or {}).get("verbose") else " (-v shows the traceback)"
            line = " ".join(redact(text).split())
            click.echo(f"srlib {name} failed: {line}{hint}", err=True)
            from srlib.errors import Terminated

            if isinstance(err, Terminated):
                # a thread stuck in a read must not keep the process alive
                from srlib.signals import exit_status

                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exit_status())  # 143 after SIGTERM, 130 after Ctrl-C
            raise SystemExit(130 if isinstance(err, KeyboardInterrupt) else 1) from None


def _fail(command: str, err: BaseException) -> SystemExit:
    """Print one redacted failure line; return the SystemExit to raise."""
    from srlib.ops.notify import redact

    click.echo(f"srlib {command} failed: {' '.join(redact(str(err)).split())}", err=True)
    return SystemExit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@_verbosity
@click.version_option(package_name="srlib")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Super-resolve Sentinel-2 L2A scenes 10x into quality-checked COGs."""
    from srlib.signals import install

    ctx.obj = ctx.obj or {}
    _setup_logging(bool(ctx.obj.get("verbose")), bool(ctx.obj.get("quiet")))
    install(command=ctx.invoked_subcommand)


_compile_option = click.option(
    "--compile", "compile_model", is_flag=True,
    help="Run the model through torch.compile (compiled once per worker; the time is "
         "logged). Same as the model card's compile field.")


def _flush_subnormals() -> None:
    """Flush subnormal floats to zero (:func:`srlib.flush_subnormals`); huge pages.

    Called first in the computing commands, before torch is imported and any thread
    starts; not in the group, so that ``--help`` answers without importing torch. Large
    torch allocations get transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``, unless set
    otherwise): each block's tensors are fresh mappings, and faulting them in 4 KB pages
    took a third of the CPU time on 2 cores (benchmarks/README.md).
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from srlib.engine.kernel import flush_subnormals

    flush_subnormals()


def _load_model(model: str, checkpoint: str | None, stats: str | None, *,
                compile_model: bool = False):
    """Return the model spec of ``--model/--checkpoint/--stats/--compile``.

    Errors name the fix.
    """
    import dataclasses

    import srlib

    if (checkpoint or stats) and model != "swin2sr":
        raise srlib.ModelError("--checkpoint and --stats are a shortcut for --model swin2sr "
                               "in its default configuration; for anything else give a "
                               "model card (.json) as --model")
    spec = srlib.load_model(model, checkpoint=checkpoint, stats=stats)
    return dataclasses.replace(spec, compile=True) if compile_model else spec


def _open_db(db_url: str | None):
    from srlib.ops.db import MetadataDB

    return MetadataDB(db_url)


def _recording_db(db_url: str | None) -> str | None:
    """Return where a job records its runs: ``--db``, else ``$PG_URL`` if set, else None.

    (``pdr`` and ``requeue`` need one and fall back to the SQLite default; a ``dr`` job
    records nothing unless told where.)
    """
    from srlib.config import DEFAULT_DATABASE_URL, Settings

    env_url = Settings.from_env().database_url
    return db_url or (env_url if env_url != DEFAULT_DATABASE_URL else None)


@main.command()
@_verbosity
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out"), show_default=True, help="Output directory.")
@click.option("--sample", default="29RKH", show_default=True,
              type=click.Choice(["29RKH", "bigearthnet"]), help="Bundled sample scene.")
@click.option("--model", default="bicubic", show_default=True,
              help="A model card (.json), 'bicubic', or 'swin2sr' with --checkpoint/--stats.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--stats", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: auto).")
@_compile_option
@click.option("--force", is_flag=True, help="Recompute even if the product exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the QC report as JSON.")
def demo(out_dir: Path, sample: str, model: str, checkpoint: str | None, stats: str | None,
         device: str | None, compile_model: bool, force: bool, as_json: bool) -> None:
    """Super-resolve the bundled sample into OUT/S2x10_<sample>.tif and run QC."""
    _flush_subnormals()
    import srlib
    from srlib.engine.kernel import resolve_device
    from srlib.models import spec_identity
    from srlib.ops.jobs import remove_outputs
    from srlib.product.manifest import verify_local, write_manifest
    from srlib.product.pipeline import remove_product
    from srlib.progress import job_progress, job_stages

    spec = _load_model(model, checkpoint, stats, compile_model=compile_model)
    resolve_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    cog = out_dir / f"S2x10_{sample}.tif"
    identity = {"sample": sample, "model": spec_identity(spec)}
    if force:
        remove_outputs(cog)
        remove_product(cog)
    else:
        manifest, _why = verify_local(cog)
        if manifest is not None and manifest.get("identity") == identity:
            existing = srlib.check_quality(cog)
            if existing.passed:
                if as_json:
                    click.echo(json.dumps({"status": "skipped", "product": str(cog.resolve()),
                                           "qc": existing.to_dict()}, indent=2, default=str))
                else:
                    click.echo(f"{cog} exists and is complete; nothing to do (--force "
                               "recomputes)")
                return
        remove_outputs(cog)
    ds = srlib.sample_scene(sample)
    try:
        with job_progress(job_stages(model=spec.name), mode=_progress_mode()):
            report = srlib.super_resolve_to_cog(ds, cog, model=spec, device=device,
                                                stac=True)
    except srlib.QCFailed as err:
        click.echo(err.report.to_table() if err.report else str(err), err=True)
        raise _fail("demo", err) from None
    write_manifest(cog, report.files, identity=identity,
                   qc=report.to_dict(), model={"name": spec.name, "token": spec.token})
    if as_json:
        click.echo(json.dumps({"status": "done", "product": str(cog.resolve()),
                               "files": [str(f) for f in report.files],
                               "qc": report.to_dict()}, indent=2, default=str))
        return
    click.echo(report.to_table())
    click.echo(f"product: {cog.resolve()}")


@main.command()
@_verbosity
@click.option("--date", required=True, help="Acquisition date, YYYYMMDD.")
@click.option("--mgrs", default=None, help="Whole MGRS tile, e.g. 33LWF.")
@click.option("--aoi", nargs=4, type=float, default=None,
              metavar="MIN_LON MIN_LAT MAX_LON MAX_LAT", help="Area of interest (degrees).")
@click.option("--s2-id", default=0, show_default=True, type=click.IntRange(min=0),
              help="Which scene of the date.")
@click.option("--product-id", default=None, help="Exact item id, e.g. S2B_19JCL_20250402_0_L2A.")
@click.option("--model", default="bicubic", show_default=True,
              help="A model card (.json), 'bicubic', or 'swin2sr' with --checkpoint/--stats.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--stats", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out"), show_default=True)
@click.option("--publish", default=None,
              help="s3://bucket/prefix, or a directory, to publish to after QC.")
@click.option("--force", is_flag=True, help="Redo even if the product exists.")
@click.option("--catalog", default=None, help="STAC API (default: Earth Search v1).")
@click.option("--name", "name_template", default=None,
              help="Product name template (fields mgrs, date, version, aoi, request). "
                   "Default: S2x10_T{mgrs}_{date:%Y%m%d}_v{version}.tif for a tile, with "
                   "_{aoi} before _v for an AOI.")
@click.option("--version", "product_version", default=1, show_default=True,
              type=click.IntRange(min=1), help="Product version (1 or more).")
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: auto).")
@click.option("--db", "db_url", default=None,
              help="Record the run in this database (default: $PG_URL if set).")
@click.option("--server", default=None, help="Name of this machine, recorded with the run.")
@click.option("--keep-zarr/--no-keep-zarr", default=None,
              help="Keep the Zarr intermediate (default: for AOIs only).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (scene, grids, sizes, disk, outputs); compute nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (or plan) as JSON.")
@click.option("--gpus", type=int, default=None,
              help="Use N GPUs of this node: a local dask cluster of one worker per GPU.")
@click.option("--devices", default=None,
              help="Comma-separated devices, one worker each (cuda:0,cuda:2; cpu,cpu "
                   "stands in for GPUs).")
@_compile_option
def dr(date: str, mgrs: str | None, aoi: tuple[float, ...] | None, s2_id: int,
       product_id: str | None, model: str, checkpoint: str | None, stats: str | None,
       out_dir: Path, publish: str | None, force: bool, catalog: str | None,
       name_template: str | None, product_version: int, device: str | None,
       db_url: str | None, server: str | None, keep_zarr: bool | None, dry_run: bool,
       as_json: bool, gpus: int | None, devices: str | None, compile_model: bool) -> None:
    """Super-resolve one date for an MGRS tile or an AOI; QC; publish."""
    _flush_subnormals()
    from srlib.engine.kernel import resolve_device
    from srlib.ops.devices import check_devices, gpu_devices
    from srlib.ops.jobs import run_dr
    from srlib.ops.notify import notifier_from_env, step
    from srlib.ops.publish import object_store
    from srlib.scene.sources import EARTH_SEARCH

    spec = _load_model(model, checkpoint, stats, compile_model=compile_model)
    resolve_device(device)
    if gpus is not None and devices:
        raise click.UsageError("give --gpus or --devices, not both")
    workers = gpu_devices(gpus) if gpus is not None else \
        check_devices(devices.split(",")) if devices else None
    if publish:
        object_store(publish)
    options = dict(date=date, mgrs=mgrs, aoi=aoi or None, s2_id=s2_id, product_id=product_id,
                   model=spec, out=out_dir, publish=publish, force=force,
                   catalog=catalog or EARTH_SEARCH, name_template=name_template,
                   version=product_version, device=device, keep_zarr=keep_zarr,
                   devices=workers if workers and (gpus or 0) != 1 else None)
    if dry_run:
        from srlib.ops.jobs import plan_dr

        plan = plan_dr(**options)
        click.echo(json.dumps(plan, indent=2) if as_json else _plan_text(plan))
        return
    db = None
    if url := _recording_db(db_url):
        with step("database", notifier_from_env()):
            db = _open_db(url)
    if server:
        logging.getLogger("srlib").info("running on %s", server)
    result = run_dr(db=db, progress=_progress_mode(), **options)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    if result.reason:
        click.echo(f"{result.delivered}: {result.cog} ({result.reason})")
    else:
        click.echo(f"{result.status}: {result.cog}")
    for uri in result.published:
        click.echo(f"published: {uri}")


@main.command()
@_verbosity
@click.option("--requests", "requests_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="A .csv (header: date,mgrs or date,min_lon,min_lat,max_lon,"
                                 "max_lat) or JSON file of requests.")
@click.option("--date", "dates", multiple=True,
              help="Acquisition date, YYYYMMDD (repeat: every date with every --mgrs/--aoi).")
@click.option("--mgrs", "tiles", multiple=True, help="Whole MGRS tile (repeat for several).")
@click.option("--aoi", "aois", nargs=4, type=float, multiple=True,
              metavar="MIN_LON MIN_LAT MAX_LON MAX_LAT", help="AOI (repeat for several).")
@click.option("--scheduler", default=None,
              help="Address of a running dask scheduler (tcp://host:8786). Default: a local "
                   "cluster of --workers processes.")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Local cluster: worker processes (default: 1).")
@click.option("--threads-per-worker", default=1, show_default=True,
              type=click.IntRange(min=1), help="Local cluster: threads of each worker.")
@click.option("--max-in-flight", default=None, type=click.IntRange(min=1),
              help="Jobs at once (default: one per worker, on all its threads).")
@click.option("--model", default="bicubic", show_default=True,
              help="A model card (.json), 'bicubic', or 'swin2sr' with --checkpoint/--stats.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--stats", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out"), show_default=True,
              help="Output directory, at the same path on every worker.")
@click.option("--publish", default=None,
              help="s3://bucket/prefix, or a directory, to publish to after QC.")
@click.option("--force", is_flag=True, help="Redo products that exist.")
@click.option("--catalog", default=None, help="STAC API (default: Earth Search v1).")
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: auto).")
@click.option("--db", "db_url", default=None,
              help="Record every run in this database (default: $PG_URL if set).")
@_compile_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
def campaign(requests_file: str | None, dates: tuple[str, ...], tiles: tuple[str, ...],
             aois: tuple[tuple[float, ...], ...], scheduler: str | None, workers: int | None,
             threads_per_worker: int, max_in_flight: int | None, model: str,
             checkpoint: str | None, stats: str | None, out_dir: Path,
             publish: str | None, force: bool, catalog: str | None, device: str | None,
             db_url: str | None, compile_model: bool, as_json: bool) -> None:
    """Run many dr jobs at once on a dask cluster: every stage of each on a worker.

    One line per request as it ends; exit status 1 when any failed (the others are done).
    """
    _flush_subnormals()
    from srlib.ops.campaign import read_requests, run_campaign
    from srlib.ops.publish import object_store
    from srlib.scene.sources import EARTH_SEARCH

    requests = read_requests(requests_file) if requests_file else []
    if (tiles or aois) and not dates:
        raise click.UsageError("--mgrs/--aoi need --date")
    requests += [{"date": d, "mgrs": t} for d in dates for t in tiles]
    requests += [{"date": d, "aoi": list(a)} for d in dates for a in aois]
    if not requests:
        raise click.UsageError("no requests: give --requests FILE, or --date with --mgrs "
                               "or --aoi")
    if scheduler and workers:
        raise click.UsageError("give --scheduler or --workers, not both")
    spec = _load_model(model, checkpoint, stats, compile_model=compile_model)
    if publish:
        object_store(publish)
    with contextlib.ExitStack() as stack:
        client = None
        if scheduler:
            from distributed import Client

            client = stack.enter_context(Client(scheduler))
        outcomes = run_campaign(
            requests, client=client, workers=workers or (None if client else 1),
            threads_per_worker=threads_per_worker, max_in_flight=max_in_flight,
            db=_recording_db(db_url),
            on_outcome=None if as_json else lambda o: click.echo(o.line()),
            model=spec, out=out_dir, publish=publish, force=force,
            catalog=catalog or EARTH_SEARCH, device=device)
    failed = sum(o.status == "failed" for o in outcomes)
    if as_json:
        click.echo(json.dumps([o.to_dict() for o in outcomes], indent=2))
    else:
        counts = {s: sum(o.status == s for o in outcomes)
                  for s in ("done", "partial", "skipped", "failed")}
        click.echo("campaign: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    if failed:
        raise SystemExit(1)


def _plan_text(plan: dict) -> str:
    """``srlib dr --dry-run``'s plan, one fact per line."""
    from srlib.progress import size_text

    scene, out, disk = plan["scene"], plan["output"], plan["disk"]
    lines = [
        f"scene:    {', '.join(scene['items']) or '?'} (MGRS {scene['mgrs'] or '?'}, "
        f"{scene['datetime'] or '?'})",
        f"input:    {scene['input_px'][0]} x {scene['input_px'][1]} px at "
        f"{scene['resolution_m']:g} m, {scene['crs']}, bounds {scene['bounds']}",
        f"output:   {out['px'][0]} x {out['px'][1]} px at {out['resolution_m']:g} m, "
        f"bands {', '.join(out['bands'])}, {size_text(out['raw_gb'] * 1e9)} raw",
        f"model:    {plan['model']['name']} {plan['model'].get('version') or ''}".rstrip(),
        f"work:     {plan['work']['model_blocks']} model blocks on "
        f"{', '.join(plan['work']['devices'])}",
        f"disk:     Zarr ~{size_text(disk['zarr_gb'] * 1e9)} + COG "
        f"~{size_text(disk['cog_gb'] * 1e9)}, {size_text(disk['free_gb'] * 1e9)} free: "
        f"{'fits' if disk['fits'] else 'DOES NOT FIT'}"
        f"{'' if disk['keep_zarr'] else ' (the Zarr is removed at the end)'}",
        f"existing: {plan['existing']}",
        f"publish:  {plan['publish'] or 'no'}",
        "outputs:", *(f"  {f}" for f in plan["outputs"]),
    ]
    return "\n".join(lines)


@main.command()
@_verbosity
@click.option("--server", default=None, help="Name of this worker in the database "
              "(default: the host name and process id).")
@click.option("--db", "db_url", default=None,
              help="Database URL (default: $PG_URL, else sqlite:///srlib.sqlite).")
@click.option("--once", is_flag=True, help="Stop when no request is pending.")
@click.option("--poll-interval", default=60.0, show_default=True,
              type=click.FloatRange(min=0), help="Seconds between polls.")
@click.option("--lease", "lease_s", default=600.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds a claim holds without renewal; a dead worker's request is "
                   "reclaimed after it.")
@click.option("--max-requests", type=click.IntRange(min=1), default=None,
              help="Stop after this many requests (default: no limit).")
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(min=1),
              help="Attempts of a request that fails for a transient cause before it is "
                   "failed for good.")
@click.option("--backoff", "backoff_s", default=60.0, show_default=True,
              type=click.FloatRange(min=0),
              help="Seconds before a transient failure is retried (doubling each attempt).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out"), show_default=True)
@click.option("--publish", default=None,
              help="s3://bucket/prefix, or a directory, to publish to after QC.")
@click.option("--catalog", default=None, help="STAC API (default: Earth Search v1).")
@click.option("--model", default="bicubic", show_default=True,
              help="A model card (.json), 'bicubic', or 'swin2sr' with --checkpoint/--stats.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--stats", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--device", default=None)
@_compile_option
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def pdr(server: str | None, db_url: str | None, once: bool, poll_interval: float,
        lease_s: float, max_requests: int | None, max_attempts: int, backoff_s: float,
        out_dir: Path,
        publish: str | None, catalog: str | None, model: str, checkpoint: str | None,
        stats: str | None, device: str | None, compile_model: bool, as_json: bool) -> None:
    """Process pending AOI requests from the metadata database."""
    _flush_subnormals()
    import socket

    from srlib.ops.jobs import run_pdr
    from srlib.ops.notify import notifier_from_env, step
    from srlib.scene.sources import EARTH_SEARCH

    spec = _load_model(model, checkpoint, stats, compile_model=compile_model)
    with step("database", notifier_from_env()):
        db = _open_db(db_url)
    counts = run_pdr(db, worker=server or f"{socket.gethostname()}:{os.getpid()}", once=once,
                     poll_interval=poll_interval, lease_s=lease_s,
                     max_attempts=max_attempts, backoff_s=backoff_s,
                     max_requests=max_requests, out=out_dir,
                     publish=publish, catalog=catalog or EARTH_SEARCH, model=spec,
                     device=device, progress=_progress_mode())
    click.echo(json.dumps(counts) if as_json else ", ".join(f"{k}: {v}"
                                                            for k, v in counts.items()))
    if counts["failed"]:
        raise SystemExit(1)
    if counts["retry"]:  # EX_TEMPFAIL: requests wait for another attempt
        raise SystemExit(75)


@main.command()
@_verbosity
@click.argument("ids", nargs=-1, type=click.IntRange(min=1))
@click.option("--state", "states", multiple=True,
              type=click.Choice(["failed", "invalid", "partial", "done", "pending"]),
              help="Requeue every request in this state (repeat for several).")
@click.option("--db", "db_url", default=None,
              help="Database URL (default: $PG_URL, else sqlite:///srlib.sqlite).")
@click.option("--json", "as_json", is_flag=True, help="Print the requeued ids as JSON.")
def requeue(ids: tuple[int, ...], states: tuple[str, ...], db_url: str | None,
            as_json: bool) -> None:
    """Put requests back to pending (by id, or by --state), their attempts reset."""
    db = _open_db(db_url)
    done = db.requeue(list(ids) or None, states=tuple(states) or None)
    click.echo(json.dumps({"requeued": done}) if as_json
               else f"requeued {len(done)} request(s): {', '.join(map(str, done)) or '-'}")


@main.group()
@_verbosity
def slurm() -> None:
    """Render and submit SLURM batch jobs from cluster profiles."""


def _slurm_job_options(func):
    """Add the options shared by ``srlib slurm render`` and ``srlib slurm submit``."""
    options = [
        click.option("--profile", required=True, help="poznan, betzy, saga, or a profile JSON."),
        click.option("--date", required=True, help="Acquisition date, YYYYMMDD."),
        click.option("--mgrs", default=None, help="Whole MGRS tile."),
        click.option("--aoi", nargs=4, type=float, default=None,
                     metavar="MIN_LON MIN_LAT MAX_LON MAX_LAT"),
        click.option("--out", required=True, help="Output directory (on shared storage)."),
        click.option("--logs", "log_dir", required=True, help="Log directory (created)."),
        click.option("--publish", default=None, help="s3://bucket/prefix."),
        click.option("--model", default=None,
                     help="bicubic (default) or a model card JSON; the job gets the card."),
        click.option("--runtime", type=click.Choice(["venv", "apptainer"]), default="venv",
                     show_default=True),
        click.option("--image", default=None, help="Apptainer image (.sif)."),
        click.option("--venv", default=None, help="Virtual environment path."),
        click.option("--account", default=None, help="SLURM account (or $SRLIB_SLURM_ACCOUNT)."),
        click.option("--gpus", type=int, default=1, show_default=True,
                     help="GPUs per job (srlib dr --gpus N: one worker per GPU)."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print the scripts (render) or job ids (submit) as JSON."),
        click.option("--dr-arg", "extra_args", multiple=True,
                     help="Extra argument for srlib dr (repeat), e.g. --dr-arg=--catalog=URL."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _slurm_kwargs(profile: str, aoi: tuple[float, ...] | None, **kwargs):
    from srlib.ops.slurm import load_profile

    return load_profile(profile), dict(aoi=aoi or None, **kwargs)


@slurm.command("render")
@_verbosity
@_slurm_job_options
def slurm_render(profile: str, aoi: tuple[float, ...] | None, **kwargs) -> None:
    """Print the batch scripts of one srlib dr job and its finalisation."""
    from srlib.ops.slurm import render_all

    as_json = kwargs.pop("as_json", False)
    prof, kw = _slurm_kwargs(profile, aoi, **kwargs)
    scripts = render_all(prof, **kw)
    if as_json:
        click.echo(json.dumps({"job": scripts[0], "finalise": scripts[1]}))
        return
    for script in scripts:
        click.echo(script)


@slurm.command("submit")
@_verbosity
@_slurm_job_options
def slurm_submit(profile: str, aoi: tuple[float, ...] | None, **kwargs) -> None:
    """Submit one srlib dr job and its finalisation (--dependency=afterany) with sbatch."""
    from srlib.ops.slurm import submit_all

    as_json = kwargs.pop("as_json", False)
    prof, kw = _slurm_kwargs(profile, aoi, **kwargs)
    job, fin = submit_all(prof, **kw)
    if as_json:
        click.echo(json.dumps({"job": job, "finalise": fin}))
    else:
        click.echo(f"submitted {job}; finalisation {fin} after it")


def _creation_options(values: tuple[str, ...]) -> dict[str, str]:
    """``--co NAME=VALUE`` pairs as a dict (GDAL creation options), checked."""
    from srlib.product.cog import check_creation_options

    options = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r} is not NAME=VALUE (e.g. --co LEVEL=9)",
                                     param_hint="--co")
        options[name.strip().upper()] = setting.strip()
    return check_creation_options(options)


@main.command()
@_verbosity
@click.argument("zarr_path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--co", "--cog-profile-option", "creation", multiple=True, metavar="NAME=VALUE",
              help="GDAL COG creation option, e.g. --co LEVEL=9 (repeat for several).")
@click.option("--overview-resampling", default="average", show_default=True,
              type=click.Choice(["average", "nearest", "mode"]),
              help="average: srlib's pyramid (reflectance mean of valid pixels, quality "
                   "mode); nearest or mode: GDAL's, the same for every band.")
@click.option("--threads", default="ALL_CPUS", show_default=True,
              help="Threads that compress tiles (a number, or ALL_CPUS: the CPUs this "
                   "process may use).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def cog(zarr_path: Path, out: Path, creation: tuple[str, ...], overview_resampling: str,
        threads: str, as_json: bool) -> None:
    """Convert a complete srlib Zarr store into a validated COG."""
    import srlib

    path = srlib.to_cog(zarr_path, out, threads=threads,
                        overview_resampling=overview_resampling,
                        **_creation_options(creation))
    if as_json:
        click.echo(json.dumps({"cog": str(path), "bytes": path.stat().st_size}))
    else:
        click.echo(str(path))


@main.command()
@_verbosity
@click.argument("cog_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--href-base", default=None,
              help="Where the files will be read from (s3://bucket/prefix or a URL); "
                   "default: where the job published them, else their local paths.")
@click.option("--source", "sources", multiple=True,
              help="Href of a source STAC Item (a derived_from link); repeat for several.")
@click.option("--json", "as_json", is_flag=True, help="Print the Item instead of its path.")
def stac(cog_path: Path, href_base: str | None, sources: tuple[str, ...],
         as_json: bool) -> None:
    """Write the STAC Item of an existing product (PRODUCT.stac.json beside it)."""
    from srlib.product.manifest import manifest_path, read_manifest, update_record
    from srlib.product.qc import check_readable
    from srlib.product.stac_item import describe_product

    check_readable(cog_path)  # refuses a file that is not a readable product
    attrs: dict = {}
    old_item = cog_path.with_name(f"{cog_path.stem}.stac.json")
    manifest = manifest_path(cog_path)
    body = read_manifest(manifest.read_bytes()) if manifest.is_file() else None
    identity = (body or {}).get("identity", {})
    if href_base is None:  # where the job published it
        href_base = identity.get("publish")
    base = href_base.rstrip("/") if href_base else None
    href = (lambda p: f"{base}/{p.name}") if base else None
    if old_item.is_file():  # remade: keep what only the job knew
        old = json.loads(old_item.read_text())
        attrs = {"datetime": old["properties"].get("datetime"),
                 "items": old["properties"].get("srlib:source_items", []),
                 "item_hrefs": [link["href"] for link in old.get("links", [])
                                if link.get("rel") == "derived_from"]}
    elif identity:  # the job's identity: date and source items
        attrs["items"] = identity.get("items") or []
        if identity.get("date"):
            day = identity["date"]
            attrs["datetime"] = f"{day[:4]}-{day[4:6]}-{day[6:8]}T00:00:00Z"
    if sources:
        attrs["item_hrefs"] = list(sources)
    item = describe_product(cog_path, attrs=attrs, href=href)[-1]
    update_record(cog_path, item)  # a complete product stays complete
    click.echo(item.read_text() if as_json else str(item))


@main.command()
@_verbosity
@click.argument("model", default="bicubic")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--stats", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--scene", "scenes", multiple=True,
              help="A bundled sample (29RKH, bigearthnet), a STAC Item (.json), a scene "
                   "folder (B02.tif ...), a Zarr store or a GeoTIFF with named bands; repeat "
                   "for several (default: 29RKH).")
@click.option("--baselines", default=",".join(("bicubic", "lanczos", "nearest")),
              show_default=True, help="Comma-separated: bicubic, lanczos, nearest.")
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: auto).")
@click.option("--crop", default=256, show_default=True, type=click.IntRange(min=32),
              help="Side (input px) of the centre crop for consistency and speed.")
@click.option("--write-card", is_flag=True,
              help="Record the figures in the model card (its metrics field).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench(model: str, checkpoint: str | None, stats: str | None, scenes: tuple[str, ...],
          baselines: str, device: str | None, crop: int, write_card: bool,
          as_json: bool) -> None:
    """Judge a model against baselines: Wald's protocol, consistency, speed, memory.

    MODEL is a model card (.json), 'bicubic', or 'swin2sr' with --checkpoint/--stats.
    """
    _flush_subnormals()
    import srlib
    from srlib.bench import bench as run_bench
    from srlib.bench import table, to_json

    if write_card and not model.lower().endswith(".json"):  # before any work
        raise srlib.InputError(f"--write-card needs a model card (.json), not {model!r}; "
                               "for a shipped card, copy its folder and give its card.json")
    spec = _load_model(model, checkpoint, stats)
    chosen = [b.strip() for b in baselines.split(",") if b.strip()]
    results = run_bench(spec, scenes=scenes or ("29RKH",), baselines=chosen,
                        device=device, crop=crop)
    if write_card:
        from srlib.models.card import record_metrics

        path = record_metrics(model, [r.to_dict() for r in results])
        logging.getLogger("srlib").info("recorded the figures in %s", path)
    click.echo(to_json(results) if as_json else table(results))


@main.command()
@_verbosity
@click.option("--job", "job_id", required=True, help="The SLURM job id of the dr job.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out"), show_default=True, help="The job's output directory.")
@click.option("--db", "db_url", default=None,
              help="The database the job recorded its runs in (default: $PG_URL if set).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def finalise(job_id: str, out_dir: Path, db_url: str | None, as_json: bool) -> None:
    """Check exactly a SLURM job's products, record its usage, remove its leftovers.

    One line per product, then the job's usage; exit status 1 when the job made no
    product or any product or run failed.
    """
    from srlib.ops.finalise import finalise_job

    url = _recording_db(db_url)
    done = finalise_job(job_id, out=out_dir, db=_open_db(url) if url else None)
    if as_json:
        click.echo(json.dumps({"job": done.job, "usage": done.usage, "lines": done.lines,
                               "failed": done.failed, "products": list(map(str, done.products)),
                               "removed": list(map(str, done.removed))}, indent=2))
    else:
        for line in done.lines:
            click.echo(line)
    if not done.ok:
        raise SystemExit(1)


@main.command()
@_verbosity
@click.argument("cog_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--timings", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON file of stage timings in seconds (gpu_s, cpu_s, total_s).")
@click.option("--source", default=None,
              help="The input scene, for the consistency check: a bundled sample (29RKH, "
                   "bigearthnet) or a STAC Item (JSON file or URL). Without it consistency "
                   "is not checked.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def qc(cog_path: Path, timings: str | None, source: str | None, as_json: bool) -> None:
    """Run the quality checks on a product; exit 1 if any check fails."""
    import srlib
    from srlib.product.qc import check_readable, product_source

    times = None
    if timings:
        try:
            times = json.loads(Path(timings).read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise srlib.InputError(f"--timings {timings} is not JSON ({err}); give a JSON "
                                   'object of seconds such as {"cpu_s": 120, "total_s": 300}'
                                   ) from None
        if not isinstance(times, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in times.values()):
            raise srlib.InputError(f"--timings {timings} must hold a JSON object of seconds, "
                                   'such as {"cpu_s": 120, "total_s": 300}')
    scene = product_source(source, check_readable(cog_path)) if source else None
    report = srlib.check_quality(cog_path, timings=times, source=scene)
    click.echo(report.to_json() if as_json else report.to_table())
    if not report.passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
