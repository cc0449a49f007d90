"""Finalising a batch job: check exactly its products, record what it used, clean up.

``srlib finalise --job JOBID`` is what the finalisation job chained after a ``dr`` job
runs (:func:`srlib.ops.slurm.render_finalise`). It

1. finds the job's products: those whose manifest records ``{"slurm_job": JOBID}``
   (every ``dr`` run inside a SLURM job records it, see
   :func:`srlib.ops.jobs.batch_job`), and those the job's journal
   (``OUT/.srlib-jobs/JOBID.jsonl``, a line per run) names, skipped ones included; the
   journal also names its failed runs. Nothing is found by file name, so a custom
   ``--name`` is no escape, and another job's products beside them are not looked at;
2. checks each: the manifest's files are all there with their sizes, and the COG passes
   the quality checks again;
3. reads the job's usage from ``sacct`` (elapsed, CPU time, max RSS, allocated TRES:
   billing, GPUs), or from ``scontrol show job`` where the cluster keeps no accounting
   (then no CPU time or RSS), and records it on the job's database runs
   (``timings.slurm``, with a database)
   and in each product's STAC Item (``processing:*`` and ``srlib:usage``), whose
   manifest record is updated and which is published again where the product was;
4. removes the job's leftovers beside its products: temporary and staging files, and
   the Zarr stores of delivered products that did not ask to keep them (a failed
   product's store is kept: its rerun resumes from it);
5. prints one line per product (with the link to its RGB quicklook) and sends the
   summary to the notifier.

It fails (exit 1) when the job made no product, or any product or run failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, SrlibError
from ..files import PARTIAL, write_atomic

__all__ = ["Finalised", "finalise_job", "job_products", "job_usage"]

log = logging.getLogger("srlib")

#: sacct's fields, one line per job step, ``|``-separated (``--parsable2``)
SACCT_FIELDS = ("JobID", "State", "ElapsedRaw", "TotalCPU", "MaxRSS", "AllocTRES", "NodeList",
                "Cluster", "Start", "End")


@dataclass
class Finalised:
    """What a finalisation found."""

    job: str
    usage: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    failed: int = 0
    products: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the job made products and none failed."""
        return bool(self.products) and not self.failed


def _seconds(text: str) -> float | None:
    """``[D-]HH:MM:SS[.fff]`` or ``MM:SS.fff`` (sacct, scontrol) in seconds."""
    text = text.strip()
    if not text or text in ("Unknown", "INVALID"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    h, m, s = parts
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s


def _megabytes(text: str) -> float | None:
    found = re.fullmatch(r"([\d.]+)([KMGT]?)", text.strip())
    if not found:
        return None
    scale = {"": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024, "T": 2**20}[found.group(2)]
    return round(float(found.group(1)) * scale, 1)


def _tres(text: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in text.split(",") if "=" in p)


def _from_tres(tres: dict[str, str]) -> dict[str, Any]:
    gpus = sum(float(v) for k, v in tres.items() if k == "gres/gpu" or k.startswith("gres/gpu:"))
    return {"billing": float(tres["billing"]) if "billing" in tres else None,
            "cpus": int(tres["cpu"]) if "cpu" in tres else None,
            "gpus": gpus, "tres": tres}


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as err:
        raise SrlibError(f"{cmd[0]} not found: run srlib finalise on a SLURM node") from err


def job_usage(job: str) -> dict[str, Any]:
    """Return what SLURM job ``job`` used, from ``sacct``, else ``scontrol show job``.

    Keys: ``source``, ``state``, ``elapsed_s``, ``cpu_s`` and ``max_rss_mb`` (``None``
    without accounting), ``billing``, ``cpus``, ``gpus``, ``gpu_s`` (GPUs x elapsed),
    ``nodes``, ``cluster``, ``start``, ``end``, ``tres``.
    """
    proc = _run(["sacct", "-j", str(job), "-n", "--parsable2",
                 "--format=" + ",".join(SACCT_FIELDS)])
    rows = [dict(zip(SACCT_FIELDS, ln.split("|"), strict=False))
            for ln in proc.stdout.splitlines() if ln.strip()] if proc.returncode == 0 else []
    main = next((r for r in rows if r["JobID"] == str(job)), None)
    if main is not None:
        rss = [m for m in (_megabytes(r.get("MaxRSS", "")) for r in rows) if m is not None]
        usage = {"source": "sacct", "state": main["State"].split()[0],
                 "elapsed_s": float(main["ElapsedRaw"] or 0),
                 "cpu_s": _seconds(main["TotalCPU"]), "max_rss_mb": max(rss, default=None),
                 "nodes": main["NodeList"], "cluster": main["Cluster"],
                 "start": main["Start"], "end": main["End"], **_from_tres(_tres(main["AllocTRES"]))}
    else:
        why = (proc.stderr.strip() or "no record").splitlines()[0]
        shown = _run(["scontrol", "show", "job", "-o", str(job)])
        if shown.returncode != 0:
            raise InputError(f"SLURM job {job} is unknown to sacct ({why}) and to scontrol "
                             f"({shown.stderr.strip()}); check the job id")
        fields = dict(f.split("=", 1) for f in shown.stdout.split() if "=" in f)
        usage = {"source": "scontrol", "accounting": why, "state": fields.get("JobState"),
                 "elapsed_s": _seconds(fields.get("RunTime", "")), "cpu_s": None,
                 "max_rss_mb": None, "nodes": fields.get("NodeList"), "cluster": None,
                 "start": fields.get("StartTime"), "end": fields.get("EndTime"),
                 **_from_tres(_tres(fields.get("TRES", "")))}
    usage["gpu_s"] = usage["gpus"] * (usage["elapsed_s"] or 0) if usage["gpus"] else 0.0
    return usage


def job_products(out: str | os.PathLike, job: str) -> tuple[list[Path], list[dict]]:
    """Return SLURM job ``job``'s products in ``out`` and its failed runs.

    The products: those whose manifest records the job, and those its journal
    (:func:`srlib.ops.jobs.journal_path`) names as done, partial or skipped (a resubmitted
    job that found its product complete). The failed runs: the journal's.
    """
    from ..product.manifest import MANIFEST_SUFFIX, read_manifest
    from .jobs import journal_path

    names = set()
    for manifest in sorted(Path(out).glob(f"*{MANIFEST_SUFFIX}")):
        body = read_manifest(manifest.read_bytes())
        if body is not None and (body.get("job") or {}).get("slurm_job") == str(job):
            names.add(body["product"])
    journal = journal_path(out, job)
    entries = []
    if journal.is_file():
        for line in journal.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    names |= {e["product"] for e in entries if e.get("product") and e.get("status") != "failed"}
    return [Path(out) / n for n in sorted(names)], [e for e in entries
                                                    if e.get("status") == "failed"]


def _check(cog: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Return the product's manifest and why the product is not sound (or None)."""
    from ..product.manifest import verify_local
    from ..product.qc import check_quality

    manifest, why = verify_local(cog)
    if manifest is None:
        return None, why
    report = check_quality(cog)
    return manifest, None if report.passed else f"QC failed: {', '.join(report.failed)}"


def _record_in_item(cog: Path, manifest: dict[str, Any], job: str,
                    usage: dict[str, Any]) -> Path | None:
    """Write the usage into the product's STAC Item; update the manifest; republish."""
    from ..product.manifest import update_record
    from .publish import republish_files

    item_path = cog.with_name(cog.stem + ".stac.json")
    if not item_path.is_file():
        return None
    item = json.loads(item_path.read_text())
    ext = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
    if ext not in item.setdefault("stac_extensions", []):
        item["stac_extensions"].append(ext)
    props = item.setdefault("properties", {})
    props.update({"processing:facility": usage.get("cluster") or usage.get("nodes"),
                  "processing:lineage": f"srlib dr in SLURM job {job} on {usage.get('nodes')}",
                  "srlib:usage": {k: usage[k] for k in ("source", "elapsed_s", "cpu_s",
                                                        "max_rss_mb", "billing", "cpus",
                                                        "gpus", "gpu_s")},
                  "srlib:slurm_job": str(job)})
    if usage.get("end") and usage["end"] not in ("Unknown", "None"):
        props["processing:datetime"] = usage["end"]
    write_atomic(item_path, json.dumps(item, indent=2))
    update_record(cog, item_path)
    target = manifest.get("identity", {}).get("publish")
    if target:
        republish_files(cog, [item_path], target)
    return item_path


def _preview(cog: Path, manifest: dict[str, Any]) -> str | None:
    """Return where the product's RGB quicklook is (published, else local), if it has one."""
    names = [f["name"] for f in manifest["files"] if f["name"].endswith("_quicklook_rgb.png")]
    if not names:
        return None
    target = (manifest.get("identity") or {}).get("publish")
    return f"{target.rstrip('/')}/{names[0]}" if target else str(cog.with_name(names[0]))


def _leftovers(cog: Path, manifest: dict[str, Any]) -> list[Path]:
    """Return a delivered product's temporary files, and its store unless it was kept."""
    found = [p for pattern in (f".{cog.name}.*.tmp.*", f".{cog.stem}.staging*",
                               f".{cog.stem}*{PARTIAL}")
             for p in cog.parent.glob(pattern)]
    store = cog.with_suffix(".zarr")
    recorded = manifest.get("job") or {}
    if store.exists() and recorded.get("keep_zarr") is False:
        found.append(store)  # the job meant to remove it and was stopped before
    return found


def finalise_job(job: str, *, out: str | os.PathLike, db: Any = None,
                 notifier: Any = None) -> Finalised:
    """Finalise SLURM job ``job`` (see the module docstring); never raises for a product.

    Parameters
    ----------
    job : str
        The ``dr`` job's id.
    out : path
        The job's output directory.
    db : MetadataDB, optional
        The database the job recorded its runs in: failed runs count, usage is recorded.
    notifier : optional
        Gets the summary (default: :func:`srlib.ops.notify.notifier_from_env`).
    """
    from ..product.zarr_store import remove_store
    from .notify import notifier_from_env, redact

    job = str(job).strip()
    if not job.replace("_", "").isdigit():
        raise InputError(f"--job {job!r} is not a SLURM job id (digits, array jobs 123_4)")
    usage = job_usage(job)
    products, failures = job_products(out, job)
    done = Finalised(job, usage, products=products)
    for cog in done.products:
        try:
            manifest, why = _check(cog)
        except (SrlibError, OSError, ValueError) as err:  # unreadable: a finding, not a crash
            manifest, why = None, redact(f"{type(err).__name__}: {err}")
        if manifest is None or why:
            done.failed += 1
            done.lines.append(f"FAILED {cog.name}: {why}")
            continue
        try:
            _record_in_item(cog, manifest, job, usage)
        except Exception as err:  # the object store is down, say: reported, never a crash
            done.failed += 1
            done.lines.append(f"FAILED {cog.name}: QC passed, but the usage could not be "
                              f"recorded in its STAC Item ({redact(str(err))}); rerun "
                              "srlib finalise")
            continue
        for path in _leftovers(cog, manifest):
            remove_store(path) if path.suffix == ".zarr" else path.unlink(missing_ok=True)
            done.removed.append(path)
        done.lines.append(f"ok     {cog.name}: QC passed, manifest complete"
                          + (f"; preview {link}" if (link := _preview(cog, manifest)) else ""))
    for run in db.runs_of_job(job) if db is not None else []:
        db.add_usage(run["id"], usage)
    for entry in failures:
        done.failed += 1
        inputs = entry.get("inputs") or {}
        what = inputs.get("mgrs") or inputs.get("aoi")
        done.lines.append(f"FAILED {inputs.get('date')} {what}: {redact(str(entry['error']))}")
    if not done.products:
        done.lines.append(f"no product of job {job} in {out}: see the dr job's log")
    cpu = f", CPU {usage['cpu_s']:.0f} s" if usage.get("cpu_s") is not None else ""
    rss = f", max RSS {usage['max_rss_mb']:.0f} MB" if usage.get("max_rss_mb") else ""
    billing = f", billing {usage['billing']:g}" if usage.get("billing") is not None else ""
    gpu = f", GPU {usage['gpu_s']:.0f} s" if usage.get("gpus") else ""
    done.lines.append(
        f"job {job} {usage.get('state')}: {len(done.products)} product(s), {done.failed} "
        f"failed; elapsed {usage.get('elapsed_s') or 0:.0f} s{cpu}{rss}{gpu}{billing} "
        f"(from {usage['source']}); removed {len(done.removed)} leftover(s)")
    notifier = notifier or notifier_from_env()
    summary = getattr(notifier, "summary", None)
    if summary is not None:
        summary("srlib finalise: " + "\n".join(done.lines))
    return done
