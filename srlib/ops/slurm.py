"""SLURM batch scripts for ``srlib dr`` from cluster profiles shipped as data.

A profile (``srlib/ops/slurm_profiles/*.json``, or a user's JSON file) gives the partition,
GPU, cores, node memory, an account (``"from-config"``: taken from ``SRLIB_SLURM_ACCOUNT``
or ``--account``; never stored in a script by default) and the measured output rate of
its GPU (``gpu_mpx_per_s``). Time and memory limits are derived from the work (output
pixels), not hard-coded. Scripts run ``srlib dr`` in an Apptainer/Singularity container
(``--nv``, bind mounts) or in a virtual environment; a finalisation job can be chained
with ``--dependency=afterany:<jobid>``. No secret is ever written into a script:
credentials come from the job's environment or from a credentials file sourced at run
time. :func:`dask_cluster` builds a ``dask_jobqueue.SLURMCluster`` from the same profile
(one GPU per worker, advertised as the worker resource ``GPU``).
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import InputError, SrlibError

__all__ = ["Profile", "dask_cluster", "load_profile", "render_all", "render_dr",
           "render_finalise", "submit", "submit_all"]

TILE_PX = 10980
BLOCK_PX = 512  # super_resolve's default input chunk for Swin2SR (5120 px out)


@dataclass(frozen=True)
class Profile:
    """A cluster's SLURM settings (see the module docstring)."""

    name: str
    partition: str
    gres: str
    cpus_per_task: int
    node_memory_gb: int
    account: str | None
    gpu_mpx_per_s: float
    max_time_h: float
    gpu: str = ""


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name (poznan, betzy, saga) or a user's JSON file."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
    else:
        shipped = resources.files("srlib.ops") / "slurm_profiles" / f"{name_or_path}.json"
        if not shipped.is_file():
            names = sorted(p.name.removesuffix(".json")
                           for p in (resources.files("srlib.ops") / "slurm_profiles").iterdir())
            raise InputError(f"unknown SLURM profile {name_or_path!r}; use one of {names} "
                             "or the path of your own profile JSON")
        data = json.loads(shipped.read_text())
    try:
        return Profile(**data)
    except TypeError as err:
        raise InputError(f"profile {name_or_path}: {err}") from err


def aoi_pixels(aoi: tuple[float, float, float, float], resolution: float = 10.0) -> int:
    """Approximate input pixels (at ``resolution`` metres) of a lon/lat box."""
    min_lon, min_lat, max_lon, max_lat = aoi
    mid = math.radians((min_lat + max_lat) / 2)
    width = abs(max_lon - min_lon) * 111_320 * math.cos(mid)
    height = abs(max_lat - min_lat) * 110_574
    return max(1, math.ceil(width / resolution) * math.ceil(height / resolution))


def _limits(profile: Profile, input_px: int, scale: int) -> tuple[str, int]:
    """Wall time (HH:MM:SS) and memory (GB) for ``input_px`` input pixels.

    Time: output pixels over the profile's measured GPU rate, twice, plus 15 min of
    start-up, capped at the partition's limit. Memory: the Zarr writer streams regions in
    waves, so peak RSS does not grow with the scene beyond the blocks in flight (the
    measured peaks are in benchmarks/README.md); each busy thread is budgeted 2 GB, there
    are no more busy threads than blocks in the work, and 8 GB more cover the model, CUDA
    and GDAL's cache.
    """
    output_mpx = input_px * scale * scale / 1e6
    seconds = output_mpx / profile.gpu_mpx_per_s * 2.0 + 900  # 2x margin + start-up
    seconds = min(seconds, profile.max_time_h * 3600)
    hours, rest = divmod(math.ceil(seconds), 3600)
    blocks = math.ceil(input_px / BLOCK_PX**2)
    memory = min(profile.node_memory_gb, 8 + 2 * min(profile.cpus_per_task, blocks))
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}", memory


def _runner(runtime: str, image: str | None, venv: str | None, binds: list[str]) -> str:
    if runtime == "apptainer":
        if not image:
            raise InputError("runtime='apptainer' needs image= (a .sif built from "
                             "containers/srlib.def)")
        bind = "".join(f" --bind {shlex.quote(b)}" for b in binds)
        return f"apptainer exec --nv{bind} {shlex.quote(image)} srlib"
    if runtime == "venv":
        if not venv:
            raise InputError("runtime='venv' needs venv= (the virtual environment's path)")
        return f"{shlex.quote(str(Path(venv) / 'bin' / 'srlib'))}"
    raise InputError(f"runtime must be 'apptainer' or 'venv', got {runtime!r}")


def _account(profile: Profile, account: str | None) -> str | None:
    """Return the account to charge: ``account``, else ``$SRLIB_SLURM_ACCOUNT``."""
    if not profile.account:
        return None
    acct = account or Settings.from_env().slurm_account
    if not acct or acct == "from-config":
        raise InputError(f"profile {profile.name} needs an account: pass account= or set "
                         "SRLIB_SLURM_ACCOUNT")
    return acct


def _header(profile: Profile, job: str, log_dir: str, time: str, memory: int,
            account: str | None) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job}",
             f"#SBATCH --partition={profile.partition}",
             *([f"#SBATCH --gres={profile.gres}"] if profile.gres else []),
             f"#SBATCH --cpus-per-task={profile.cpus_per_task}", f"#SBATCH --mem={memory}G",
             f"#SBATCH --time={time}", f"#SBATCH --output={log_dir}/%x-%j.out"]
    acct = _account(profile, account)
    if acct:
        lines.append(f"#SBATCH --account={acct}")
    lines += ["set -euo pipefail",
              "# credentials: from the job's environment, or a file read at run time",
              'if [ -f "${SRLIB_CREDENTIALS:-$HOME/.config/srlib/credentials}" ]; then',
              "    set -a",
              "    # shellcheck source=/dev/null",
              '    source "${SRLIB_CREDENTIALS:-$HOME/.config/srlib/credentials}"',
              "    set +a",
              "fi"]
    return lines


def render_dr(profile: Profile, *, date: str, mgrs: str | None = None,
              aoi: tuple[float, float, float, float] | None = None, out: str,
              log_dir: str, publish: str | None = None, runtime: str = "venv",
              image: str | None = None, venv: str | None = None,
              account: str | None = None, input_px: int | None = None, scale: int = 10,
              model: str | None = None, gpus: int = 1,
              extra_args: tuple[str, ...] = ()) -> str:
    """Render a batch script running ``srlib dr`` for a whole tile or an AOI.

    ``gpus`` GPUs per job: the gres asks for them, the time limit counts them, and
    ``srlib dr --gpus N`` runs one worker per GPU (:mod:`srlib.ops.devices`).

    The time limit follows the work: a whole tile, or the AOI's size at 10 m (or
    ``input_px``), at the profile's GPU rate, or at the model card's measured rate
    (``rate_mpx_per_s``) when it has one. ``model`` is ``bicubic`` or a model card; the
    job gets the card's absolute path (its checkpoint is found beside it). ``srlib dr``
    itself skips a complete product, so a resubmitted job is idempotent. ``extra_args``
    are appended to ``srlib dr``.
    """
    if (mgrs is None) == (aoi is None):
        raise InputError("pass exactly one of mgrs= or aoi=")
    check_no_credentials(extra_args)
    model_args: list[str] = []
    if model and model != "bicubic":
        from ..models.card import is_card, load_card, read_card

        if not is_card(model):
            raise InputError(f"--model {model!r}: a SLURM job takes bicubic or a model card "
                             "(.json), which names the weights the job will use")
        card_path = str(Path(model).resolve())
        card = read_card(card_path)
        load_card(card_path)  # the weights are there and match the card, before submitting
        scale = int(card["scale"])
        if card.get("rate_mpx_per_s"):
            profile = replace(profile, gpu_mpx_per_s=float(card["rate_mpx_per_s"]))
        model_args = ["--model", card_path]
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InputError(f"gpus must be a positive whole number, got {gpus!r}")
    if gpus > 1:
        if not profile.gres.startswith("gpu"):
            raise InputError(f"profile {profile.name} has no GPU (gres {profile.gres!r}); "
                             "gpus > 1 needs a GPU partition")
        profile = replace(profile, gres=gres_with(profile.gres, gpus),
                          gpu_mpx_per_s=profile.gpu_mpx_per_s * gpus)
        extra_args = ("--gpus", str(gpus), *extra_args)
    px = input_px or (TILE_PX * TILE_PX if mgrs else aoi_pixels(aoi))  # type: ignore[arg-type]
    time, memory = _limits(profile, px, scale)
    job = f"srlib-dr-{mgrs or 'aoi'}-{date}"
    where = ["--mgrs", mgrs] if mgrs else ["--aoi", *map(str, aoi or ())]
    args = ["dr", "--date", date, *where, "--out", out, *model_args,
            *(["--publish", publish] if publish else []), *extra_args]
    srlib = _runner(runtime, image, venv, [out, log_dir])
    lines = _header(profile, job, log_dir, time, memory, account)
    lines += ['echo "srlib dr on $(hostname), job $SLURM_JOB_ID"',
              f"{srlib} {' '.join(shlex.quote(a) for a in args)}"]
    return "\n".join(lines) + "\n"


def gres_with(gres: str, gpus: int) -> str:
    """Return a GPU gres asking for ``gpus`` GPUs (``gpu:a100:1`` -> ``gpu:a100:4``)."""
    parts = gres.split(":")
    if parts[-1].isdigit():
        parts[-1] = str(gpus)
    else:
        parts.append(str(gpus))
    return ":".join(parts)


def render_finalise(profile: Profile, *, out: str, log_dir: str, runtime: str = "venv",
                    image: str | None = None, venv: str | None = None,
                    account: str | None = None) -> str:
    """Render a short CPU job running ``srlib finalise`` for the dr job it follows.

    Chain it after the dr job with ``afterany`` (:func:`submit_all`, which passes the dr
    job's id as ``SRLIB_DR_JOB``): it runs whether dr succeeded or not, checks exactly
    the products that job made, records its usage, removes its leftovers
    (:mod:`srlib.ops.finalise`) and fails (non-zero) when the job made no product or
    any failed.
    """
    srlib = _runner(runtime, image, venv, [out, log_dir])
    cpu_only = replace(profile, gres="", cpus_per_task=1)
    lines = _header(cpu_only, "srlib-finalise", log_dir, "00:30:00",
                    min(16, profile.node_memory_gb), account)
    lines += ['job="${SRLIB_DR_JOB:?set SRLIB_DR_JOB to the dr job id (srlib slurm submit '
              'does)}"',
              f'{srlib} finalise --job "$job" --out {shlex.quote(out)}']
    return "\n".join(lines) + "\n"


def submit(script: str, *, log_dir: str, dependency: str | None = None) -> str:
    """``sbatch`` a script (after creating ``log_dir``); return the job id."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    cmd = ["sbatch", "--parsable"]
    if dependency:  # the finalisation: after the dr job, told its id
        cmd += [f"--dependency=afterany:{dependency}", f"--export=ALL,SRLIB_DR_JOB={dependency}"]
    try:
        proc = subprocess.run(cmd, input=script, capture_output=True, text=True, check=True)
    except FileNotFoundError as err:
        raise SrlibError("sbatch not found: run this on a SLURM login node") from err
    except subprocess.CalledProcessError as err:
        raise SrlibError(f"sbatch failed: {err.stderr.strip()}") from err
    return proc.stdout.strip().split(";")[0]


def check_no_credentials(args: Sequence[str]) -> None:
    """Refuse arguments that would write a credential into a batch script.

    A URL with a user or password (``scheme://user:pass@host``), a ``password=`` or
    ``--db`` with credentials, or an AWS key: a script is readable by others and kept in
    the logs; credentials belong in the credentials file the job sources at run time.

    Raises
    ------
    InputError
        Naming the argument (its secret not shown) and the credentials file.
    """
    import re

    from ..config import secret_values
    from .notify import SECRET_WORDS, redact

    password = re.compile(rf"(?i)://[^\s/]*:[^\s]*@|\b({SECRET_WORDS})\s*=")
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        risky = (password.search(value) or value.startswith(("AKIA", "ASIA"))
                 or any(secret in value for secret in secret_values().values()))
        if risky:
            raise InputError(
                f"--dr-arg {redact(arg)!r} would write a credential into the batch script, "
                "which others can read; put it in the credentials file the job sources at "
                "run time (${SRLIB_CREDENTIALS:-~/.config/srlib/credentials}, mode 600: "
                "PG_URL=..., AWS_SECRET_ACCESS_KEY=...) and leave it out of --dr-arg")


def render_all(profile: Profile, **kwargs: Any) -> tuple[str, str]:
    """Render the dr script and its finalisation script."""
    keys = ("out", "log_dir", "runtime", "image", "venv", "account")
    return render_dr(profile, **kwargs), render_finalise(
        profile, **{k: kwargs[k] for k in keys if k in kwargs})


def submit_all(profile: Profile, **kwargs: Any) -> tuple[str, str]:
    """Render and submit the dr job and its finalisation (``afterany``); return both ids."""
    dr_script, fin_script = render_all(profile, **kwargs)
    job = submit(dr_script, log_dir=kwargs["log_dir"])
    return job, submit(fin_script, log_dir=kwargs["log_dir"], dependency=job)


#: Job-script line: the nanny leaves malloc's dynamic thresholds alone in its workers.
#: By default it sets ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins malloc's mmap
#: threshold at 128 KB so that every larger temporary is a fresh zero-filled mapping:
#: srlib's CPU path runs markedly slower (benchmarks/README.md). The kernel trims the
#: heaps after each block instead. A ``None`` value removes a key (distributed's rule).
#: ``unset``: a ``LocalCluster`` started earlier in the submitting process has exported it
#: there (its nanny sets it in its own process), and jobs inherit that environment.
#: Put after this line, a ``job_script_prologue`` export of the variable still wins.
_KEEP_MALLOC_DEFAULTS = ("unset MALLOC_TRIM_THRESHOLD_; export DASK_DISTRIBUTED__NANNY__"
                         "PRE_SPAWN_ENVIRON=\"{'MALLOC_TRIM_THRESHOLD_': None}\"")


def dask_cluster(profile: Profile, *, account: str | None = None, processes: int = 1,
                 **kwargs: Any):
    """Start a ``dask_jobqueue.SLURMCluster`` whose jobs match the profile.

    Each job is one node share: the profile's partition, GRES, cores and memory. Jobs
    with a GPU start workers that advertise the resource ``GPU=1`` per GPU process, so
    :func:`srlib.super_resolve` runs at most one kernel task per GPU. The workers keep
    malloc's default thresholds (see ``_KEEP_MALLOC_DEFAULTS``). Scale it with
    ``cluster.scale(jobs=N)`` and connect a ``distributed.Client``; ``kwargs`` go to
    ``SLURMCluster`` (e.g. ``python=``, ``log_directory=``, ``walltime=``).
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as err:
        raise SrlibError("dask_cluster needs dask-jobqueue: pip install 'srlib[distributed]'") \
            from err
    _, memory = _limits(profile, TILE_PX * TILE_PX, 10)
    extra = list(kwargs.pop("job_extra_directives", []))
    if profile.gres:
        extra.append(f"--gres={profile.gres}")
    worker_args = list(kwargs.pop("worker_extra_args", []))
    if profile.gres.startswith("gpu"):
        if processes != 1 or not (profile.gres == "gpu" or profile.gres.endswith(":1")):
            raise InputError(f"profile {profile.name} asks for --gres={profile.gres}: srlib "
                             "runs one worker process per GPU job; use a gres of one GPU "
                             "(gpu:1) and processes=1, and scale with more jobs")
        worker_args += ["--resources", "GPU=1"]
    prologue = [_KEEP_MALLOC_DEFAULTS, *kwargs.pop("job_script_prologue", [])]
    options: dict[str, Any] = dict(
        queue=profile.partition, account=_account(profile, account),
        cores=profile.cpus_per_task, memory=f"{memory}GB", processes=processes,
        walltime=f"{int(profile.max_time_h):02d}:00:00", job_extra_directives=extra,
        worker_extra_args=worker_args, job_script_prologue=prologue)
    options.update(kwargs)
    return SLURMCluster(**options)
