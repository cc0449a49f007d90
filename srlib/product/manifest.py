"""Product manifests: the proof that a product is one complete, checked unit.

A product (the COG, its QC JSON, derivatives, quicklooks, STAC Item) ends with a
manifest, ``<name>.manifest.json``, written last and atomically: every file with its size
and SHA-256, the QC verdict, the model's identity and the job's identity (date, tile,
AOI, request). Skip-if-exists trusts only a manifest that is complete, matches the job
and whose files are all present with the recorded sizes (published: with the sizes and
SHA-256 checksums that S3 itself reports for the stored objects). Anything else is redone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import write_atomic
from ..hashing import sha256_file

__all__ = ["MANIFEST_SUFFIX", "file_record", "manifest_path", "mismatch", "read_manifest",
           "update_record", "verify_local", "write_manifest"]

#: Suffix of a product's manifest beside its COG.
MANIFEST_SUFFIX = ".manifest.json"
_FORMAT = 1


def manifest_path(cog: str | os.PathLike) -> Path:
    """Path of the manifest of the product whose COG is ``cog``."""
    cog = Path(cog)
    return cog.with_name(cog.stem + MANIFEST_SUFFIX)


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"name", "size", "sha256"}`` of a local file."""
    path = Path(path)
    return {"name": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(
    cog: str | os.PathLike,
    files: Iterable[str | os.PathLike],
    *,
    identity: Mapping[str, Any],
    qc: Mapping[str, Any],
    model: Mapping[str, Any] | None = None,
    job: Mapping[str, Any] | None = None,
) -> Path:
    """Write the manifest of a product whose files are all written (call it last).

    Parameters
    ----------
    cog : str or PathLike
        The product COG; the manifest goes beside it.
    files : iterable of path
        Every file of the product (the COG included), each beside the COG.
    identity : mapping
        What makes the product distinct (see :func:`srlib.ops.jobs.product_identity`).
    qc : mapping
        The QC report as a dict; a failed report is refused: a failed product has no
        manifest.
    model : mapping, optional
        The model's identity (name and token).
    job : mapping, optional
        The batch job that made it (``{"slurm_job": id}``), for ``srlib finalise``.

    Returns
    -------
    Path
        The manifest.
    """
    if not qc.get("passed"):
        raise InputError(f"{cog} failed QC ({qc.get('failed')}); a failed product gets no "
                         "manifest")
    target = manifest_path(cog)
    records = [file_record(f) for f in files]
    body = {"srlib_manifest": _FORMAT, "product": Path(cog).name, "complete": True,
            "identity": dict(identity), "model": dict(model or {}),
            "qc": {"passed": True, "failed": [], "report": Path(cog).stem + ".qc.json",
                   # the coverage check, so that a skipped AOI product still says how much
                   "checks": [c for c in qc.get("checks", []) if c.get("name") == "coverage"]},
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "files": records}
    if job:
        body["job"] = dict(job)
    write_atomic(target, json.dumps(body, indent=2, default=str))
    return target


def update_record(cog: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Record a rewritten file of a product (``srlib stac``) in its manifest.

    Returns whether the product's complete manifest lists the file (and was updated).
    """
    target = manifest_path(cog)
    body = read_manifest(target.read_bytes()) if target.is_file() else None
    name = Path(path).name
    if body is None or not any(r.get("name") == name for r in body["files"]):
        return False
    body["files"] = [file_record(path) if r.get("name") == name else r
                     for r in body["files"]]
    write_atomic(target, json.dumps(body, indent=2, default=str))
    return True


def read_manifest(text: str | bytes) -> dict[str, Any] | None:
    """Parse a manifest; None when it is not a complete srlib manifest."""
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or body.get("srlib_manifest") != _FORMAT \
            or body.get("complete") is not True or not isinstance(body.get("files"), list):
        return None
    if not (body.get("qc") or {}).get("passed"):
        return None
    return body


def mismatch(manifest: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
    """Identity fields in which a manifest differs from the job's identity."""
    recorded = manifest.get("identity") or {}
    return sorted(k for k in set(recorded) | set(identity)
                  if json.dumps(recorded.get(k), default=str)
                  != json.dumps(identity.get(k), default=str))


def verify_local(cog: str | os.PathLike) -> tuple[dict[str, Any] | None, str]:
    """Check the local manifest of a product.

    Returns
    -------
    (manifest or None, reason)
        The manifest when it is complete and every file it lists is present beside the COG
        with its recorded size; else None and why not.
    """
    cog = Path(cog)
    path = manifest_path(cog)
    if not path.is_file():
        return None, f"no manifest {path.name}"
    body = read_manifest(path.read_bytes())
    if body is None:
        return None, f"{path.name} is not a complete manifest"
    for record in body["files"]:
        file = cog.with_name(str(record.get("name")))
        if not file.is_file():
            return None, f"{file.name} is missing"
        if file.stat().st_size != record.get("size"):
            return None, f"{file.name} has {file.stat().st_size} bytes, the manifest says " \
                         f"{record.get('size')}"
    return body, "complete"
