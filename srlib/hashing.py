"""SHA-256 of files, read in blocks: model weights and product files alike.

A digest is remembered for as long as the file keeps its size, modification time and
inode, so the manifest, the STAC Item and the publisher read a 60 GB COG once, not three
times; any rewrite of the file changes those and is hashed afresh.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

__all__ = ["multihash", "sha256_file"]

_SEEN: dict[tuple[str, int, int, int], str] = {}
_LOCK = threading.Lock()


def sha256_file(path: str | os.PathLike, *, fresh: bool = False) -> str:
    """Return the hex SHA-256 of a file, read in 4 MiB blocks.

    ``fresh``: read the file even if its digest is remembered (verifying stored bytes).
    """
    path = Path(path)
    before = path.stat()
    key = (str(path.resolve()), before.st_size, before.st_mtime_ns, before.st_ino)
    with _LOCK:
        if key in _SEEN and not fresh:
            return _SEEN[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
        with _LOCK:
            _SEEN[key] = digest.hexdigest()
    return digest.hexdigest()


def multihash(path: str | os.PathLike) -> str:
    """Return the SHA-256 of a file as a multihash (STAC ``file:checksum``)."""
    return "1220" + sha256_file(path)
