"""One exception tree for srlib; every message says how to fix the problem.

All errors derive from :class:`SrlibError` (a :class:`RuntimeError`) and also from the
builtin that fits, so ``except ValueError`` keeps working for bad input.
"""

from __future__ import annotations

import errno
import os
from typing import Any

__all__ = [
    "STEP_NOTE",
    "BatchSizeError",
    "DiskSpaceError",
    "IncompleteStoreError",
    "InputError",
    "ModelError",
    "NoSceneFound",
    "ProductBusy",
    "SourceError",
    "QCFailed",
    "SrlibError",
    "SrlibWarning",
    "StatsMismatchWarning",
    "Terminated",
    "add_step",
    "is_transient",
    "os_error_message",
    "step_of",
]

#: Prefix of the exception note that names the job step an error came from.
STEP_NOTE = "srlib step: "


def add_step(err: BaseException, name: str) -> None:
    """Record on ``err`` (as a note, shown in tracebacks) the step it came from, once."""
    if step_of(err) is None:
        err.add_note(f"{STEP_NOTE}{name}")


def step_of(err: BaseException) -> str | None:
    """Return the step recorded by :func:`add_step` (``"qc"`` for :class:`QCFailed`)."""
    for note in getattr(err, "__notes__", ()):
        if isinstance(note, str) and note.startswith(STEP_NOTE):
            return note.removeprefix(STEP_NOTE)
    return "qc" if isinstance(err, QCFailed) else None


class SrlibError(RuntimeError):
    """Base class of every error raised by srlib."""


class InputError(SrlibError, ValueError):
    """The input data cannot be super-resolved as given (bands, dims, CRS, size)."""


class NoSceneFound(SrlibError, LookupError):
    """No Sentinel-2 scene matches the date and place; the message lists nearby dates."""


class SourceError(SrlibError, OSError):
    """A catalogue or an asset could not be read (after retries); names the href."""


class ModelError(SrlibError, ValueError):
    """A model, checkpoint or statistics file is invalid or does not fit the input."""


class BatchSizeError(SrlibError, ValueError):
    """A batch size would overflow PyTorch's 2**31-element limit or the device memory."""


class IncompleteStoreError(SrlibError, OSError):
    """A Zarr store was not completely written; rerun the writer to resume it."""


class DiskSpaceError(SrlibError, OSError):
    """The product would not fit on the disk; the message names the sizes and the path."""


class QCFailed(SrlibError):
    """A product failed one or more quality checks.

    Parameters
    ----------
    failed : list of str
        Names of the failed checks.
    report : object, optional
        The :class:`srlib.product.qc.QCReport` that failed.
    """

    def __init__(self, failed: list[str], report: Any = None) -> None:
        self.failed = list(failed)
        self.report = report
        super().__init__(
            f"quality checks failed: {', '.join(self.failed)}; the product was not accepted. "
            "Inspect the QC table (report.to_table()) and the kept Zarr store."
        )


class ProductBusy(SrlibError, BlockingIOError):
    """Another job is making the same product in the same directory right now."""


class Terminated(SrlibError):
    """The job was asked to stop (SIGTERM, e.g. a batch system's time limit).

    Transient: the request it served is put back to ``pending`` and a rerun completes it.
    """


#: Errors that say the request itself cannot be made (or the model cannot run): a
#: request ends ``failed`` on them at once. Any other error is transient.
PERMANENT: tuple[type[BaseException], ...] = (InputError, ModelError, NoSceneFound,
                                              BatchSizeError, QCFailed)


def is_transient(err: BaseException) -> bool:
    """Whether a job that failed with ``err`` may succeed when run again.

    Permanent causes are a bad request or a model that cannot run (:data:`PERMANENT`);
    everything else (a signal, the database, the network, S3, a full disk, an unknown
    error) is transient: its request goes back to ``pending`` with a backoff, and ends
    ``failed`` only after its attempts are spent.
    """
    if isinstance(err, Terminated | IncompleteStoreError | DiskSpaceError):
        return True
    return not isinstance(err, PERMANENT)


_OS_FIXES = {
    errno.ENOSPC: "free space there or point the job at a larger disk",
    errno.EDQUOT: "free space within the quota or use another directory",
    errno.EROFS: "the file system is read-only: give a writable directory (--out)",
    errno.EACCES: "give a directory this user may write (--out), or fix its permissions",
    errno.EPERM: "give a directory this user may write (--out), or fix its permissions",
    errno.ENAMETOOLONG: "use a shorter name or directory (file names are limited to 255 "
                        "bytes)",
    errno.ENOENT: "check that the path exists",
    errno.EIO: "the disk reported an I/O error: check the device, then rerun",
}


def os_error_message(err: OSError) -> str | None:
    """One line naming the path and the fix of an operating-system error, if known."""
    fix = _OS_FIXES.get(err.errno or -1)
    if fix is None:
        return None
    where = f" at {err.filename}" if err.filename else ""
    return f"{err.strerror or os.strerror(err.errno or 0)}{where}: {fix}"


class SrlibWarning(UserWarning):
    """Base class of srlib's warnings."""


class StatsMismatchWarning(SrlibWarning):
    """Normalisation statistics do not cover the model's bands; a fallback is used."""
