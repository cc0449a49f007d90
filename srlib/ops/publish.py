"""Publishing products to S3 (boto3): staged, verified against the stored bytes, manifest last.

Every file of a product is first uploaded to a staging key under
``<prefix>/.incoming/<id>/`` with SHA-256 checksums (per part for multipart uploads), and
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
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import InputError, QCFailed, SrlibError
from ..product.manifest import manifest_path, mismatch, read_manifest

__all__ = ["PublishError", "S3Target", "publish", "publish_product", "verify_published"]

log = logging.getLogger("srlib")

#: Multipart part size (and threshold) in MiB.
PART_MB = 64


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


def s3_client(endpoint_url: str | None = None) -> Any:
    """Return a boto3 S3 client with adaptive retries (see :class:`srlib.config.Settings`)."""
    import boto3
    from botocore.config import Config

    settings = Settings.from_env()
    return boto3.client("s3", endpoint_url=endpoint_url or settings.s3_endpoint_url,
                        config=Config(retries={"max_attempts": settings.s3_max_attempts,
                                               "mode": "adaptive"}))


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


def _stored(client: Any, bucket: str, key: str) -> tuple[int, str | None]:
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return int(head["ContentLength"]), head.get("ChecksumSHA256")


def _verify(client: Any, bucket: str, key: str, size: int, checksum: str, file: Path) -> str:
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
    client: Any | None = None,
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
    batch = uuid.uuid4().hex
    staged: list[tuple[Path, str, int, str]] = []
    published: dict[str, str] = {}
    try:
        for file in paths:  # 1. stage and verify every file
            staging = target.key(f".incoming/{batch}/{file.name}")
            size, checksum = file.stat().st_size, s3_checksum(file, multipart_mb)
            client.upload_file(str(file), target.bucket, staging, Config=config,
                               Callback=progress, ExtraArgs=extra)
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
        for _file, staging, _size, _sum in staged:
            _delete(client, target.bucket, staging)
    return published


def _delete(client: Any, bucket: str, key: str) -> None:
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except Exception:  # best effort: a staging key is never a product's key
        log.warning("could not delete staging object s3://%s/%s", bucket, key)


def publish_product(cog_path: str | os.PathLike, report: Any, uri: str, *,
                    extra: Sequence[str | os.PathLike] = (), client: Any | None = None
                    ) -> list[str]:
    """Publish a product (COG, QC JSON, ``extra`` files) and then its manifest, last.

    The local manifest (see :mod:`srlib.product.manifest`) must exist; the published one adds the
    checksum S3 reports for each object. Any earlier manifest at the prefix is removed
    first, so a failure leaves the product visibly unfinished.

    Raises
    ------
    QCFailed
        The report has failed checks: nothing is uploaded.
    PublishError
        An upload failed or did not verify: no manifest at the final prefix.
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
    target = S3Target.parse(uri)
    client = client or s3_client()
    try:
        client.delete_object(Bucket=target.bucket, Key=target.key(local.name))
    except Exception as err:
        raise PublishError(f"cannot reach {uri} to unpublish the old manifest: "
                           f"{type(err).__name__}: {err}") from err
    files = list(dict.fromkeys(Path(f) for f in [cog_path, qc_json, *extra]))
    listed = {r["name"] for r in body["files"]}
    unlisted = [f.name for f in files if f.name not in listed]
    if unlisted:
        raise InputError(f"{unlisted} are not in {local.name}; rerun the job to rewrite it")
    stored = publish(files, uri, client=client)
    for record in body["files"]:
        record["s3_checksum_sha256"] = stored[target.uri(record["name"])]
    body["published"] = target.uri("")
    text = json.dumps(body, indent=2).encode()
    checksum = base64.b64encode(hashlib.sha256(text).digest()).decode()
    key = target.key(local.name)
    try:
        client.put_object(Bucket=target.bucket, Key=key, Body=text,
                          ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum,
                          ContentType="application/json")
        _verify(client, target.bucket, key, len(text), checksum, local)
    except PublishError:
        raise
    except Exception as err:
        raise PublishError(f"publishing the manifest to {target.uri(local.name)} failed: "
                           f"{type(err).__name__}: {err}; rerun to complete it") from err
    return [*stored, target.uri(local.name)]


def verify_published(uri: str, cog_name: str, identity: Mapping[str, Any], *,
                     client: Any | None = None) -> tuple[dict[str, Any] | None, str]:
    """Check a published product: its manifest, identity and every object S3 stores.

    Returns
    -------
    (manifest or None, reason)
        The manifest when it is complete, matches ``identity`` and every file it lists is
        stored with its recorded size and S3-reported SHA-256; else None and why not.
    """
    from botocore.exceptions import ClientError

    target = S3Target.parse(uri)
    client = client or s3_client()
    name = manifest_path(Path(cog_name)).name
    try:
        raw = client.get_object(Bucket=target.bucket, Key=target.key(name))["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None, f"no manifest {target.uri(name)}"
        raise PublishError(f"cannot read {target.uri(name)}: {err}") from err
    body = read_manifest(raw)
    if body is None:
        return None, f"{target.uri(name)} is not a complete manifest"
    differ = mismatch(body, identity)
    if differ:
        return None, f"{target.uri(name)} is another product's (differs in {differ})"
    for record in body["files"]:
        key = target.key(str(record.get("name")))
        try:
            size, checksum = _stored(client, target.bucket, key)
        except ClientError:
            return None, f"{target.uri(str(record.get('name')))} is missing"
        if size != record.get("size") or checksum != record.get("s3_checksum_sha256"):
            return None, f"{target.uri(str(record.get('name')))} does not match the manifest"
    return body, "complete"
