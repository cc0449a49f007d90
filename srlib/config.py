"""Settings read from the environment, in one place.

:meth:`Settings.from_env` is the only reader of srlib's environment variables:

========================== ==========================================================
``AWS_ENDPOINT_URL_S3``    S3-compatible endpoint URL (``http://host:port``), for
                           reading scenes (GDAL) and publishing (boto3) alike.
                           ``AWS_S3_ENDPOINT`` (GDAL's ``host:port``, with
                           ``AWS_HTTPS``) is still read, with a deprecation warning.
``AWS_VIRTUAL_HOSTING``    ``FALSE`` for path-style S3 addressing (default ``TRUE``).
``AWS_REQUEST_PAYER``      ``requester`` for requester-pays buckets.
``AWS_REGION``             Region (or ``AWS_DEFAULT_REGION``).
``AWS_MAX_ATTEMPTS``       boto3 attempts per request (default 8, adaptive mode).
``PG_URL``                 Metadata database URL (default: an SQLite file).
``SRLIB_WEBHOOK_URL``      Slack-compatible webhook for failure notifications.
``SRLIB_SLURM_ACCOUNT``    SLURM account for profiles that need one.
``SRLIB_QC_THRESHOLDS``    A JSON file of QC threshold overrides (see
                           :class:`QCThresholds`), used by every QC run.
``SRLIB_NETWORK_TIMEOUT``  Seconds any network call may wait for an answer (default
                           60): GDAL's HTTP reads, S3, the STAC API, the webhook; a
                           server that accepts and never answers fails the call
                           (then retried) instead of holding the job forever.
``SRLIB_TUNE_MALLOC``      ``0`` keeps glibc's malloc defaults (read once, at the first
                           block: see :func:`srlib.engine.memory.tune_malloc`).
========================== ==========================================================

Credentials (``AWS_ACCESS_KEY_ID``, ...) are not settings: boto3 and GDAL find them
through their own chains, and srlib never copies them (it only notes whether there are
any, to read public buckets unsigned). :func:`secret_values` gives the values that
must never be printed, for redaction.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .bands import TILE
from .errors import InputError

__all__ = ["DEFAULT_DATABASE_URL", "SECRET_VARS", "QCThresholds", "Settings", "secret_values"]

#: The metadata database without ``PG_URL``: an SQLite file in the working directory.
DEFAULT_DATABASE_URL = "sqlite:///srlib.sqlite"

#: Environment variables whose values are secrets.
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
               "SRLIB_WEBHOOK_URL", "PG_URL", "PGPASSWORD")


def secret_values(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the values of :data:`SECRET_VARS` that are set (4 characters or more)."""
    env = os.environ if env is None else env
    return {var: env[var] for var in SECRET_VARS if len(env.get(var) or "") >= 4}

_FALSE = ("NO", "FALSE", "0", "OFF")


@dataclass(frozen=True)
class QCThresholds:
    """Thresholds of the quality checks (reflectance x 10000, times in seconds).

    Limits scale with the product. Time: each stage may take the output megapixels over
    its minimum rate (``min_gpu_mpx_per_s``, ``min_cpu_mpx_per_s`` for inference,
    ``min_total_mpx_per_s`` for the whole run) plus ``timing_overhead_s``; the legacy's
    absolute limits (GPU 2 h, CPU 1 h, total 3 h) can be set as ``max_gpu_s``,
    ``max_cpu_s``, ``max_total_s``. Size: the file must be compressed below
    ``max_size_ratio`` times the raw size of its pixels; a deployment may add an absolute
    cap, ``max_file_bytes`` (the legacy's was 10e9). A full tile (109800 x 109800 x 5
    int16, about 60 GB compressed) passes the defaults.

    Typed and validated; the report records the ones it used. Build overrides with
    :meth:`from_mapping` (unknown names and unusable values are refused).
    """

    tile_size: int = TILE
    min_overviews: int = 4
    mean_range: tuple[float, float] = (1.0, 10000.0)
    std_range: tuple[float, float] = (0.5, 6000.0)
    max_nodata_fraction: float = 0.95
    band_count: int = 5
    dtype: str = "int16"
    min_entropy: float = 0.0
    min_gpu_mpx_per_s: float = 0.5
    min_cpu_mpx_per_s: float = 0.1
    min_total_mpx_per_s: float = 0.05
    timing_overhead_s: float = 600.0
    max_gpu_s: float | None = None
    max_cpu_s: float | None = None
    max_total_s: float | None = None
    max_size_ratio: float = 1.0
    max_file_bytes: float | None = None
    min_throughput_ha_per_min: float = 50.0
    sample_pixels: int = 2048 * 2048
    max_consistency_bias: float = 100.0
    max_consistency_mad: float = 200.0
    max_band_mad_ratio: float = 0.5
    max_band_shift_ratio: float = 0.5
    min_shift_mad: float = 20.0
    max_local_consistency_error: float = 0.5
    coverage_tolerance: float = 0.03
    full_resolution_windows: int = 4
    consistency_pixels: int = 1024 * 1024

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any],
                     base: QCThresholds | None = None) -> QCThresholds:
        """Override ``base`` (default: the defaults) with ``values``, checked.

        Raises
        ------
        InputError
            An unknown name, or a value of the wrong kind (a range that is not two
            increasing numbers, a negative limit).
        """
        base = base or cls()
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"unknown QC thresholds {unknown}; known: {sorted(known)}")
        out: dict[str, Any] = {}
        for name, value in values.items():
            default = getattr(base, name)
            field_type = str(known[name].type)
            try:
                if value is None or (default is None and "None" in field_type):
                    ok = value is None or (not isinstance(value, bool) and float(value) >= 0)
                    value = None if value is None else float(value)
                elif isinstance(default, tuple):
                    lo, hi = (float(v) for v in value)
                    ok = lo <= hi
                    value = (lo, hi)
                elif isinstance(default, str):
                    ok = isinstance(value, str)
                else:
                    ok = not isinstance(value, bool) and float(value) >= 0
                    value = type(default)(value)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InputError(f"QC threshold {name}={values[name]!r} is not usable; it "
                                 f"takes a value like {default!r}")
            out[name] = value
        return replace(base, **out)

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def to_dict(self) -> dict[str, object]:
        """Return the thresholds as a JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Settings:
    """srlib's configuration (see the module docstring for the variables).

    ``repr`` hides the database and webhook URLs, which may hold passwords and tokens.
    """

    s3_endpoint_url: str | None = None
    s3_virtual_hosting: bool = True
    s3_requester_pays: bool = False
    s3_region: str | None = None
    s3_max_attempts: int = 8
    s3_signed: bool = False
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    webhook_url: str | None = field(default=None, repr=False)
    slurm_account: str | None = None
    qc_thresholds: QCThresholds = field(default_factory=QCThresholds)
    network_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``).

        Raises
        ------
        InputError
            A variable has a value that cannot be used (named, with the fix).
        """
        env = os.environ if env is None else env
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or None
        legacy = env.get("AWS_S3_ENDPOINT") or None
        if endpoint is None and legacy is not None:
            warnings.warn("AWS_S3_ENDPOINT is deprecated in srlib: set AWS_ENDPOINT_URL_S3 "
                          "(a URL, e.g. http://host:port), which reads and publishing share",
                          DeprecationWarning, stacklevel=2)
            https = env.get("AWS_HTTPS", "YES").upper() not in _FALSE
            endpoint = legacy if "://" in legacy else \
                f"{'https' if https else 'http'}://{legacy}"
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise InputError(f"AWS_ENDPOINT_URL_S3={endpoint!r} is not a URL; use "
                             "http://host:port or https://host")
        attempts = env.get("AWS_MAX_ATTEMPTS") or "8"
        if not attempts.isdigit() or int(attempts) < 1:
            raise InputError(f"AWS_MAX_ATTEMPTS={attempts!r} must be a positive integer")
        timeout = env.get("SRLIB_NETWORK_TIMEOUT") or "60"
        try:
            timeout_s = float(timeout)
        except ValueError:
            timeout_s = -1.0
        if not 0 < timeout_s < float("inf"):
            raise InputError(f"SRLIB_NETWORK_TIMEOUT={timeout!r} must be a positive number of "
                             "seconds, e.g. 60")
        return cls(
            network_timeout_s=timeout_s,
            s3_endpoint_url=endpoint,
            s3_virtual_hosting=env.get("AWS_VIRTUAL_HOSTING", "TRUE").upper() not in _FALSE,
            s3_requester_pays=env.get("AWS_REQUEST_PAYER", "") == "requester",
            s3_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            s3_max_attempts=int(attempts),
            s3_signed=bool(env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE")),
            database_url=env.get("PG_URL") or DEFAULT_DATABASE_URL,
            webhook_url=env.get("SRLIB_WEBHOOK_URL") or None,
            slurm_account=env.get("SRLIB_SLURM_ACCOUNT") or None,
            qc_thresholds=_qc_thresholds(env.get("SRLIB_QC_THRESHOLDS")),
        )

    @property
    def s3_host(self) -> str | None:
        """The endpoint as GDAL takes it (``host:port``), or None for AWS."""
        return urlsplit(self.s3_endpoint_url).netloc if self.s3_endpoint_url else None

    @property
    def s3_https(self) -> bool:
        """Whether the endpoint speaks HTTPS (AWS itself does)."""
        return not self.s3_endpoint_url or urlsplit(self.s3_endpoint_url).scheme == "https"


def _qc_thresholds(path: str | None) -> QCThresholds:
    if not path:
        return QCThresholds()
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"SRLIB_QC_THRESHOLDS={path}: cannot read a JSON object ({err}); "
                         'write e.g. {"max_file_bytes": 8e10}') from None
    if not isinstance(values, dict):
        raise InputError(f"SRLIB_QC_THRESHOLDS={path} must hold a JSON object of thresholds")
    return QCThresholds.from_mapping(values)


#: A cap on the CPUs of the running job (set by :func:`limit_cpus`), per thread/context
_CPU_CAP: contextvars.ContextVar[int | None] = contextvars.ContextVar("srlib_cpu_cap",
                                                                     default=None)


def available_cpus() -> int:
    """Return the CPUs this process may use, not the machine's count.

    Its affinity (``taskset``, SLURM's ``--cpus-per-task``) and its cgroup quota, as
    :func:`dask.system.cpu_count` reads them; inside :func:`limit_cpus`, at most its cap
    (a campaign's job gets its dask worker's threads, not the whole node).
    """
    from dask.system import cpu_count

    cap = _CPU_CAP.get()
    return max(1, min(cpu_count(), cap) if cap else cpu_count())


def available_memory(*, proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")
                     ) -> int | None:
    """Return the bytes this process may still take, or ``None`` where it cannot tell.

    The machine's available memory (``MemAvailable``: free pages and the page cache it
    can drop), or less where the process's cgroup has less left below its limit (SLURM's
    ``--mem``, a container's limit; cgroup v2 and v1). ``proc`` and ``cgroup``: where
    those files are (tests).
    """
    left: list[int] = []
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                left.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        groups = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        groups = []
    for line in groups:
        _, controllers, where = line.split(":", 2)
        if controllers == "":  # v2: memory.max and memory.current
            folder, limit_file, used_file = cgroup / where.lstrip("/"), "memory.max", \
                "memory.current"
        elif "memory" in controllers.split(","):  # v1
            folder, limit_file, used_file = cgroup / "memory" / where.lstrip("/"), \
                "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        try:
            limit = (folder / limit_file).read_text().strip()
            if limit != "max" and int(limit) < 1 << 60:  # v1 writes "no limit" as ~2**63
                left.append(max(0, int(limit) - int((folder / used_file).read_text())))
        except (OSError, ValueError):
            continue  # a cgroup not mounted where it says: the machine's figure stands
    return min(left) if left else None


@contextlib.contextmanager
def limit_cpus(n: int | None) -> Iterator[None]:
    """Cap :func:`available_cpus` at ``n`` in this thread for the block (``None``: no cap)."""
    token = _CPU_CAP.set(n)
    try:
        yield
    finally:
        _CPU_CAP.reset(token)


def distributed_client() -> Any:
    """Return the ``dask.distributed`` client computations go to, or ``None``.

    ``None`` without distributed, without a client, or where dask's ``scheduler`` is set
    to a local one (a campaign's job runs on its worker's threads, see
    :mod:`srlib.ops.campaign`, though the worker could reach the cluster).
    """
    import dask

    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None
