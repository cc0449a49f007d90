"""Publishing products to S3 (boto3): staged, verified against the stored bytes, manifest last.

Every file of a product is first uploaded to a staging key under
``<prefix>/.incoming/<product>.<id>/`` (what an interrupted publish of the same product
left there is removed first) with SHA-256 checksums (per part for multipart uploads), and
each staged object is verified against what S3 itself reports for the stored bytes
(``head_object(ChecksumMode="ENABLED")``: its size and its SHA-256, a checksum of the
part checksums for a multipart object, recomputed here from the local file). Only when
every file is staged and verified are they copied to their final keys (each copy
verified the same way); the product's manifest goes last. A failure anywhere leaves no
manifest at the final prefix, so a rerun sees an unfinished product and completes it.
Transient errors are retried by botocore (``AWS_MAX_ATTEMPTS``, default 8, adaptive mode).
Credentials come from the usual boto3 chain and are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from ..errors import InputError, QCFailed, SrlibError, Terminated
from ..files import write_atomic
from ..hashing import sha256_file
from ..product.manifest import manifest_path, mismatch, read_manifest
from ..product.qc import QCReport
from ..progress import report

__all__ = ["LocalStore", "ObjectStore", "PublishError", "S3Store", "S3Target", "object_store",
           "publish", "publish_product", "republish_files", "verify_published"]

log = logging.getLogger("srlib")

#: Multipart part size (and threshold) in MiB.
PART_MB = 64

#: A boto3 S3 client (``botocore.client.S3``; boto3 ships no static type for it).
S3Client = Any


class PublishError(SrlibError, OSError):
    """An upload failed or did not verify; the product's manifest was not published."""


@dataclass(frozen=True)
class S3Target:
    """``s3://bucket/prefix`` split into its parts."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Target:
        """Parse ``s3://bucket[/prefix]``."""
        if not isinstance(uri, str) or not uri.startswith("s3://") or len(uri) <= 5:
            raise InputError(f"{uri!r} is not an S3 URI; use s3://bucket/prefix")
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise InputError(f"{uri!r} has no bucket; use s3://bucket/prefix")
        return cls(bucket, prefix.strip("/"))

    def key(self, name: str) -> str:
        """Key of ``name`` under the prefix."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str) -> str:
        """``s3://`` URI of ``name`` under the prefix."""
        return f"s3://{self.bucket}/{self.key(name)}"


def s3_client(endpoint_url: str | None = None) -> S3Client:
    """Return a boto3 S3 client with adaptive retries (see :class:`srlib.config.Settings`)."""
    import boto3
    from botocore.config import Config

    settings = Settings.from_env()
    client = boto3.client("s3", endpoint_url=endpoint_url or settings.s3_endpoint_url,
                          config=Config(retries={"max_attempts": settings.s3_max_attempts,
                                                 "mode": "adaptive"},
                                        connect_timeout=min(settings.network_timeout_s, 30),
                                        read_timeout=settings.network_timeout_s))
    if "SRLIB_FAILPOINTS" in os.environ:  # the ``s3`` failpoint: before every request
        from ..failpoints import hit

        client.meta.events.register(
            "before-send.s3",
            lambda request, **_kw: hit("s3", f"{request.method} {request.url.split('?')[0]}"))
    return client


def s3_checksum(path: str | os.PathLike, part_mb: int = PART_MB) -> str:
    """Return the SHA-256 that S3 reports for ``path`` uploaded in ``part_mb`` MiB parts.

    One part: the base64 SHA-256 of the file. Several: the base64 SHA-256 of the
    concatenated part digests, suffixed ``-N`` (S3's composite checksum).
    """
    part = part_mb << 20
    digests = []
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(part), b""):
            digests.append(hashlib.sha256(block).digest())
    if len(digests) <= 1:
        whole = digests[0] if digests else hashlib.sha256(b"").digest()
        return base64.b64encode(whole).decode()
    composite = hashlib.sha256(b"".join(digests)).digest()
    return f"{base64.b64encode(composite).decode()}-{len(digests)}"


def _same_checksum(reported: str | None, expected: str) -> bool:
    if not reported:
        return False
    base, _, parts = expected.partition("-")
    got, _, got_parts = reported.partition("-")
    return got == base and (not got_parts or got_parts == parts)


def _stored(client: S3Client, bucket: str, key: str) -> tuple[int, str | None]:
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return int(head["ContentLength"]), head.get("ChecksumSHA256")


def _verify(client: S3Client, bucket: str, key: str, size: int, checksum: str, file: Path) -> str:
    stored_size, stored_sum = _stored(client, bucket, key)
    if stored_size != size or not _same_checksum(stored_sum, checksum):
        raise PublishError(
            f"s3://{bucket}/{key} does not hold the bytes of {file} (S3 reports {stored_size} "
            f"bytes, SHA-256 {stored_sum}; expected {size}, {checksum}); the product was not "
            "published, rerun to complete it")
    return str(stored_sum)


def publish(
    files: Sequence[str | os.PathLike],
    uri: str,
    *,
    client: S3Client | None = None,
    multipart_mb: int = PART_MB,
    progress: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """Stage, verify and then move files under ``uri`` (``s3://bucket/prefix``).

    Parameters
    ----------
    files : sequence of path
        Files to publish, each under its own name.
    uri : str
        Destination prefix.
    client : boto3 S3 client, optional
        Default :func:`s3_client`.
    multipart_mb : int
        Part size (and multipart threshold) in MiB.
    progress : callable, optional
        Called with the bytes transferred since the last call.

    Returns
    -------
    dict
        ``s3://`` URI of each published object -> the SHA-256 checksum S3 reports for it.

    Raises
    ------
    PublishError
        An upload, copy or verification failed (staging objects are removed).
    """
    from boto3.s3.transfer import TransferConfig

    target = S3Target.parse(uri)
    client = client or s3_client()
    config = TransferConfig(multipart_threshold=multipart_mb << 20,
                            multipart_chunksize=multipart_mb << 20)
    extra = {"ChecksumAlgorithm": "SHA256"}
    paths = [Path(f) for f in files]
    for file in paths:
        if not file.is_file():
            raise InputError(f"{file} does not exist; nothing was published")
    stem = paths[0].stem if paths else "files"
    _remove_stale_staging(client, target, stem)
    batch = f"{stem}.{uuid.uuid4().hex}"
    total, sent = sum(f.stat().st_size for f in paths), 0

    def uploaded(n: int) -> None:
        nonlocal sent
        sent += n
        report("publish", sent, total, "bytes")
        if progress is not None:
            progress(n)

    staged: list[tuple[Path, str, int, str]] = []
    keys: list[str] = []  # every staging key, named before its upload starts
    published: dict[str, str] = {}
    try:
        for file in paths:  # 1. stage and verify every file
            staging = target.key(f".incoming/{batch}/{file.name}")
            keys.append(staging)
            size, checksum = file.stat().st_size, s3_checksum(file, multipart_mb)
            client.upload_file(str(file), target.bucket, staging, Config=config,
                               Callback=uploaded, ExtraArgs=extra)
            staged.append((file, staging, size, checksum))
            _verify(client, target.bucket, staging, size, checksum, file)
        for file, staging, size, checksum in staged:  # 2. move, verifying each copy
            final = target.key(file.name)
            client.copy({"Bucket": target.bucket, "Key": staging}, target.bucket, final,
                        Config=config, ExtraArgs=extra)
            published[target.uri(file.name)] = _verify(client, target.bucket, final, size,
                                                       checksum, file)
            log.info("published %s (%d bytes)", target.uri(file.name), size)
    except PublishError:
        raise
    except Exception as err:
        raise PublishError(f"publishing to {uri} failed: {type(err).__name__}: {err}; the "
                           "product was not published (no manifest), rerun to complete it"
                           ) from err
    finally:
        _delete(client, target.bucket, keys)
    return published


def _remove_stale_staging(client: S3Client, target: S3Target, stem: str) -> None:
    """Delete what an interrupted publish of the same product left under ``.incoming/``.

    One job makes a product at a time (:func:`srlib.ops.jobs.product_lock`), so staging
    objects of the same product name are leftovers of a killed run.
    """
    prefix = target.key(f".incoming/{stem}.")
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket,
                                                                 Prefix=prefix)
        stale = [o["Key"] for page in pages for o in page.get("Contents", [])]
    except Exception as err:
        raise PublishError(f"cannot list s3://{target.bucket}/{prefix}: "
                           f"{type(err).__name__}: {err}; nothing was published") from err
    for key in stale:
        log.info("removing s3://%s/%s, left by an interrupted publish", target.bucket, key)
    _delete(client, target.bucket, stale)


def _delete(client: S3Client, bucket: str, keys: Sequence[str]) -> None:
    """Delete staging objects, best effort (a staging key is never a product's key).

    A stop signal (:class:`srlib.Terminated`, raised once, wherever the main thread is)
    does not leave the rest behind: the interrupted key is tried again, every key is
    deleted, and the stop is raised after the last.
    """
    stopped: Terminated | None = None
    for key in keys:
        for _attempt in range(2):
            try:
                client.delete_object(Bucket=bucket, Key=key)
            except Terminated as err:
                stopped = err
                continue
            except Exception:
                log.warning("could not delete staging object s3://%s/%s", bucket, key)
            break
    if stopped is not None:
        raise stopped


class ObjectStore(Protocol):
    """Where products are published: S3 (:class:`S3Store`) or a directory (:class:`LocalStore`).

    ``put`` stages every file, verifies each against what the store holds, then moves them
    to their final names; ``stat`` reports what the store holds (size and checksum).
    """

    def uri(self, name: str) -> str:
        """URI of ``name`` in the store."""

    def put(self, files: Sequence[Path]) -> dict[str, str]:
        """Publish files, verified; return each URI's stored checksum."""

    def put_bytes(self, name: str, data: bytes) -> str:
        """Publish a small object, verified; return its URI."""

    def get_bytes(self, name: str) -> bytes | None:
        """Read a small object (None when absent)."""

    def stat(self, name: str) -> tuple[int, str | None] | None:
        """Size and checksum of an object as the store holds it (None when absent)."""

    def remove(self, name: str) -> None:
        """Delete an object if present."""

    def remove_staging(self, stem: str) -> None:
        """Delete what interrupted publishes of product ``stem`` left in staging."""


@dataclass
class S3Store:
    """An S3 prefix; checksums are the SHA-256 that S3 reports for the stored bytes."""

    target: S3Target
    client: S3Client

    def uri(self, name: str) -> str:
        """Return the ``s3://`` URI of ``name``."""
        return self.target.uri(name)

    def put(self, files: Sequence[Path]) -> dict[str, str]:
        """Stage, verify and move (see :func:`publish`)."""
        return publish(files, self.target.uri(""), client=self.client)

    def put_bytes(self, name: str, data: bytes) -> str:
        """Upload ``data`` with its SHA-256, which S3 checks and reports back."""
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        key = self.target.key(name)
        try:
            self.client.put_object(Bucket=self.target.bucket, Key=key, Body=data,
                                   ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum)
            _verify(self.client, self.target.bucket, key, len(data), checksum, Path(name))
        except PublishError:
            raise
        except Exception as err:
            raise PublishError(f"publishing {self.uri(name)} failed: {type(err).__name__}: "
                               f"{err}; rerun to complete it") from err
        return self.uri(name)

    def get_bytes(self, name: str) -> bytes | None:
        """Read an object; None when there is none."""
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.target.bucket,
                                          Key=self.target.key(name))["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise PublishError(f"cannot read {self.uri(name)}: {err}") from err

    def stat(self, name: str) -> tuple[int, str | None] | None:
        """Size and S3-reported SHA-256 of an object; None when there is none."""
        from botocore.exceptions import ClientError

        try:
            return _stored(self.client, self.target.bucket, self.target.key(name))
        except ClientError:
            return None

    def remove(self, name: str) -> None:
        """Delete an object (raises PublishError when S3 cannot be reached)."""
        try:
            self.client.delete_object(Bucket=self.target.bucket, Key=self.target.key(name))
        except Exception as err:
            raise PublishError(f"cannot reach {self.uri(name)} to delete it: "
                               f"{type(err).__name__}: {err}") from err

    def remove_staging(self, stem: str) -> None:
        """Delete ``.incoming/<stem>.*`` (raises PublishError when S3 cannot list it)."""
        _remove_stale_staging(self.client, self.target, stem)


@dataclass
class LocalStore:
    """A directory (shared storage on a cluster); checksums are SHA-256 hex digests.

    Files are copied to ``.incoming/<product>.<id>/`` inside the directory (leftovers of
    an interrupted publish of the same product are removed first), verified by re-reading
    them, and renamed into place (atomic within one file system).
    """

    root: Path

    def uri(self, name: str) -> str:
        """Return the path of ``name`` as a string."""
        return str(self.root / name)

    def put(self, files: Sequence[Path]) -> dict[str, str]:
        """Stage, verify and move every file; nothing is moved unless all verify."""
        stem = files[0].stem if files else "files"
        self.remove_staging(stem)
        staging = self.root / ".incoming" / f"{stem}.{uuid.uuid4().hex}"
        try:
            staging.mkdir(parents=True)
            staged = []
            total, sent = sum(f.stat().st_size for f in files), 0
            for file in files:
                report("publish", sent, total, "bytes")
                sent += file.stat().st_size
                copy = staging / file.name
                shutil.copyfile(file, copy)
                expected = sha256_file(file)
                if copy.stat().st_size != file.stat().st_size \
                        or sha256_file(copy, fresh=True) != expected:
                    raise PublishError(f"{copy} does not hold the bytes of {file}; the "
                                       "product was not published, rerun to complete it")
                staged.append((copy, expected))
            report("publish", total, total, "bytes")
            out = {}
            for copy, checksum in staged:
                os.replace(copy, self.root / copy.name)
                out[self.uri(copy.name)] = checksum
            return out
        except OSError as err:
            raise PublishError(f"publishing to {self.root} failed: {err}; the product was "
                               "not published (no manifest), rerun to complete it") from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):  # other publishers may be staging there
                staging.parent.rmdir()

    def put_bytes(self, name: str, data: bytes) -> str:
        """Write ``data`` atomically under ``name``."""
        try:
            write_atomic(self.root / name, data)
        except OSError as err:
            raise PublishError(f"publishing {self.uri(name)} failed: {err}") from err
        return self.uri(name)

    def get_bytes(self, name: str) -> bytes | None:
        """Read a file; None when there is none."""
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def stat(self, name: str) -> tuple[int, str | None] | None:
        """Size and SHA-256 of a file (read whole); None when there is none."""
        path = self.root / name
        return (path.stat().st_size, sha256_file(path, fresh=True)) if path.is_file() else None

    def remove(self, name: str) -> None:
        """Delete a file if present."""
        (self.root / name).unlink(missing_ok=True)

    def remove_staging(self, stem: str) -> None:
        """Delete ``.incoming/<stem>.*``, left by killed publishes of the same product."""
        for stale in (self.root / ".incoming").glob(f"{stem}.*"):
            shutil.rmtree(stale, ignore_errors=True)


def object_store(uri: str, *, client: S3Client | None = None) -> ObjectStore:
    """Return the store of a publish target: ``s3://bucket/prefix`` or a directory.

    Raises
    ------
    InputError
        Neither an S3 URI nor an absolute path (``file://`` accepted).
    """
    if isinstance(uri, str) and uri.startswith("s3://"):
        return S3Store(S3Target.parse(uri), client or s3_client())
    path = uri.removeprefix("file://") if isinstance(uri, str) else None
    if not path or not os.path.isabs(path):
        raise InputError(f"publish target {uri!r} is neither s3://bucket/prefix nor an "
                         "absolute directory path")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    return LocalStore(root)


def publish_product(cog_path: str | os.PathLike, report: QCReport, uri: str, *,
                    extra: Sequence[str | os.PathLike] = (), client: S3Client | None = None
                    ) -> list[str]:
    """Publish a product (COG, QC JSON, ``extra`` files) and then its manifest, last.

    The local manifest (see :mod:`srlib.product.manifest`) must exist; the published one
    adds the checksum the store reports for each object. Any earlier manifest at the
    target is removed first, so a failure leaves the product visibly unfinished.

    Parameters
    ----------
    uri : str
        ``s3://bucket/prefix`` or a directory (see :func:`object_store`).

    Raises
    ------
    QCFailed
        The report has failed checks: nothing is published.
    PublishError
        A copy failed or did not verify: no manifest at the target.
    """
    if not report.passed:
        raise QCFailed(report.failed, report)
    cog_path = Path(cog_path)
    local = manifest_path(cog_path)
    body = read_manifest(local.read_bytes()) if local.is_file() else None
    if body is None:
        raise InputError(f"{cog_path} has no complete manifest {local.name}; a product is "
                         "published only after it is complete (rerun the job)")
    qc_json = cog_path.with_suffix(".qc.json")
    if not qc_json.exists():
        report.to_json(qc_json)
    files = list(dict.fromkeys(Path(f) for f in [cog_path, qc_json, *extra]))
    listed = {r["name"] for r in body["files"]}
    unlisted = [f.name for f in files if f.name not in listed]
    if unlisted:
        raise InputError(f"{unlisted} are not in {local.name}; rerun the job to rewrite it")
    return _put_manifest_last(object_store(uri, client=client), local, body, files)


def republish_files(cog_path: str | os.PathLike, files: Sequence[str | os.PathLike],
                    uri: str, *, client: S3Client | None = None) -> list[str]:
    """Publish rewritten files of a published product again, then its manifest, last.

    For files changed after publishing (``srlib finalise`` adds the job's usage to the
    STAC Item): the local manifest already records their new sizes and checksums; the
    other objects keep the stored checksums of the published manifest. A product never
    published is left alone (returns ``[]``).
    """
    local = manifest_path(cog_path)
    store = object_store(uri, client=client)
    published = read_manifest(store.get_bytes(local.name) or b"")
    if published is None:
        return []
    earlier = {r["name"]: r.get("stored_checksum") for r in published["files"]}
    return _put_manifest_last(store, local, json.loads(local.read_text()),
                              [Path(f) for f in files], earlier)


def _put_manifest_last(store: ObjectStore, local: Path, body: dict[str, Any],
                       files: Sequence[Path], earlier: Mapping[str, Any] | None = None
                       ) -> list[str]:
    """Put ``files``, then the manifest, last; return the URIs.

    The published manifest is removed first; the new one records the checksums the store
    reports (``earlier`` ones for the objects not put again).
    """
    store.remove(local.name)
    stored = store.put(files)
    checksums = {**(earlier or {}),
                 **{f.name: stored[store.uri(f.name)] for f in files}}
    for record in body["files"]:
        record["stored_checksum"] = checksums[record["name"]]
    body["published"] = store.uri("")
    return [*stored, store.put_bytes(local.name, json.dumps(body, indent=2).encode())]


def verify_published(target: str | ObjectStore, cog_name: str, identity: Mapping[str, Any],
                     *, client: S3Client | None = None) -> tuple[dict[str, Any] | None, str]:
    """Check a published product: its manifest, identity and every object stored.

    ``target`` is a publish target (``s3://bucket/prefix`` or a directory; ``client``
    serves an S3 one) or the :class:`ObjectStore` a caller already holds.

    Returns
    -------
    (manifest or None, reason)
        The manifest when it is complete, matches ``identity`` and every file it lists is
        stored with its recorded size and stored checksum (for S3, the SHA-256 that S3
        reports); else None and why not.
    """
    store = object_store(target, client=client) if isinstance(target, str) else target
    name = manifest_path(Path(cog_name)).name
    raw = store.get_bytes(name)
    if raw is None:
        return None, f"no manifest {store.uri(name)}"
    body = read_manifest(raw)
    if body is None:
        return None, f"{store.uri(name)} is not a complete manifest"
    differ = mismatch(body, identity)
    if differ:
        return None, f"{store.uri(name)} is another product's (differs in {differ})"
    for record in body["files"]:
        held = store.stat(str(record.get("name")))
        if held is None:
            return None, f"{store.uri(str(record.get('name')))} is missing"
        if held != (record.get("size"), record.get("stored_checksum")):
            return None, f"{store.uri(str(record.get('name')))} does not match the manifest"
    return body, "complete"
