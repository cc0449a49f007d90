"""Files that appear whole or not at all.

Every finished file srlib writes beside a product or in its store (a Zarr chunk, a region
marker, a manifest, a STAC Item, a quicklook, a model card) is first written to a
temporary ``.<name>.<pid>-<thread>.partial`` in the same folder, then renamed over its
name. So a process killed midway leaves no torn file under the real name, a write that
fails (a full disk) leaves no temporary behind, and two writers of one name never share a
temporary. What a SIGKILL leaves ends in :data:`PARTIAL`, which the resuming code sweeps.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PARTIAL", "partial_path", "replacing", "write_atomic"]

#: The suffix of every temporary file or folder: what a killed writer may leave
PARTIAL = ".partial"


def partial_path(path: str | os.PathLike) -> Path:
    """Return the temporary beside ``path`` that this process and thread write it through."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{PARTIAL}")


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` if the block ends cleanly.

    For writers that want a path rather than bytes (matplotlib, GDAL). If the block
    raises, the temporary is removed and ``path`` is left as it was.
    """
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) at ``path`` through a temporary renamed into place."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)
