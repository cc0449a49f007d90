"""Publishing products to S3 (boto3): multipart, verified, atomic, only after QC passed.

Each file is uploaded to a temporary key under ``<prefix>/.incoming/``, with per-part
SHA-256 checksums that the server verifies; its size and whole-file SHA-256 (sent as
object metadata) are checked against the local file; only then is it copied server-side
to its final key and the temporary object deleted. A failure at any point leaves no
object at the final key (and removes the temporary one). Transient errors are retried
by botocore (adaptive mode). Credentials come from the usual boto3 chain (``AWS_*``
variables, profiles, instance roles) and are never logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, QCFailed, SrlibError

__all__ = ["PublishError", "S3Target", "publish", "publish_product"]

log = logging.getLogger("srlib")


class PublishError(SrlibError, OSError):
    """An upload failed; nothing was left at the final key."""


@dataclass(frozen=True)
class S3Target:
    """``s3://bucket/prefix`` split into its parts."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Target:
        """Parse ``s3://bucket[/prefix]``."""
        if not uri.startswith("s3://") or len(uri) <= 5:
            raise InputError(f"{uri!r} is not an S3 URI; use s3://bucket/prefix")
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise InputError(f"{uri!r} has no bucket; use s3://bucket/prefix")
        return cls(bucket, prefix.strip("/"))

    def key(self, name: str) -> str:
        """Key of ``name`` under the prefix."""
        return f"{self.prefix}/{name}" if self.prefix else name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def s3_client(endpoint_url: str | None = None) -> Any:
    """Return a boto3 S3 client with adaptive retries (endpoint: ``AWS_ENDPOINT_URL_S3``)."""
    import boto3
    from botocore.config import Config

    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or None
    return boto3.client("s3", endpoint_url=endpoint_url,
                        config=Config(retries={"max_attempts": 8, "mode": "adaptive"}))


def publish(
    files: Sequence[str | os.PathLike],
    uri: str,
    *,
    client: Any | None = None,
    multipart_mb: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Upload files under ``uri`` (``s3://bucket/prefix``), verified and atomically.

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
    list of str
        ``s3://`` URIs of the published objects.

    Raises
    ------
    PublishError
        An upload or verification failed; no object was left at its final key.
    """
    from boto3.s3.transfer import TransferConfig

    target = S3Target.parse(uri)
    client = client or s3_client()
    config = TransferConfig(multipart_threshold=multipart_mb << 20,
                            multipart_chunksize=multipart_mb << 20)
    published = []
    for file in map(Path, files):
        if not file.is_file():
            raise InputError(f"{file} does not exist; nothing was published")
        final = target.key(file.name)
        staging = target.key(f".incoming/{file.name}.{uuid.uuid4().hex}")
        checksum, size = _sha256(file), file.stat().st_size
        try:
            client.upload_file(
                str(file), target.bucket, staging, Config=config, Callback=progress,
                ExtraArgs={"Metadata": {"sha256": checksum}, "ChecksumAlgorithm": "SHA256"},
            )
            head = client.head_object(Bucket=target.bucket, Key=staging)
            if head["ContentLength"] != size or head["Metadata"].get("sha256") != checksum:
                raise PublishError(
                    f"s3://{target.bucket}/{staging} does not match {file} "
                    f"(size {head['ContentLength']} vs {size}); not published"
                )
            client.copy({"Bucket": target.bucket, "Key": staging}, target.bucket, final,
                        Config=config)
        except Exception as err:
            _delete(client, target.bucket, staging)
            if isinstance(err, PublishError):
                raise
            raise PublishError(f"publishing {file} to s3://{target.bucket}/{final} failed: "
                               f"{err}; nothing was left at that key") from err
        _delete(client, target.bucket, staging)
        log.info("published s3://%s/%s (%d bytes, sha256 %s)", target.bucket, final, size,
                 checksum[:12])
        published.append(f"s3://{target.bucket}/{final}")
    return published


def _delete(client: Any, bucket: str, key: str) -> None:
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except Exception:  # best effort: the staging key is never the product's key
        log.warning("could not delete staging object s3://%s/%s", bucket, key)


def publish_product(cog_path: str | os.PathLike, report: Any, uri: str, *,
                    extra: Sequence[str | os.PathLike] = (), client: Any | None = None
                    ) -> list[str]:
    """Publish a product COG, its QC JSON and ``extra`` files, only if QC passed.

    Raises
    ------
    QCFailed
        The report has failed checks: nothing is uploaded.
    """
    if not report.passed:
        raise QCFailed(report.failed, report)
    cog_path = Path(cog_path)
    qc_json = cog_path.with_suffix(".qc.json")
    if not qc_json.exists():
        report.to_json(qc_json)
    return publish([cog_path, qc_json, *extra], uri, client=client)
