"""Every GPU of a node: a local dask cluster with one worker per device.

``srlib dr --gpus N`` and ``run_dr(devices=[...])`` run the tile on it: each worker is
pinned to its device (``CUDA_VISIBLE_DEVICES``, so its ``cuda`` is its own GPU) and
advertises the resource ``GPU=1``, so :func:`srlib.super_resolve` gives each worker one
model task at a time; the model loads once per worker and the workers write the Zarr
regions themselves. CPU devices (``["cpu", "cpu"]``) stand in for GPUs where there are
none (the tests do this): the output is the same bytes as one process's.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import InputError

__all__ = ["check_devices", "device_cluster", "gpu_devices", "worker_specs"]

log = logging.getLogger("srlib")


def gpu_devices(n: int) -> list[str]:
    """Return ``["cuda:0", ..., "cuda:{n-1}"]`` after checking this node has ``n`` GPUs.

    Raises
    ------
    InputError
        ``n`` is not positive, or the node has fewer GPUs.
    """
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--gpus must be a positive whole number, got {n!r}")
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n > have:
        raise InputError(f"--gpus {n} but this node has {have} CUDA device(s); ask for at most "
                         f"{have}, or run on a GPU node (srlib slurm ... --gpus {n})")
    return [f"cuda:{i}" for i in range(n)]


def check_devices(devices: Sequence[str], *, here: bool = True) -> list[str]:
    """Return ``devices`` checked: all ``cpu``, or all distinct ``cuda:N``.

    ``here``: the GPUs must exist on this node (not when writing a job for another).

    Raises
    ------
    InputError
        An empty list, a mix of CPU and CUDA, a repeated or missing GPU.
    """
    import torch

    from ..engine.kernel import resolve_device

    if isinstance(devices, str) or not devices:
        raise InputError(f"devices must be a list of devices such as ['cuda:0', 'cuda:1'] "
                         f"(or ['cpu', 'cpu'] to stand in for GPUs), got {devices!r}")
    if here:
        parsed = [resolve_device(d) for d in devices]
    else:
        try:
            parsed = [torch.device(d) for d in devices]
        except (RuntimeError, TypeError) as err:
            raise InputError(f"devices {list(devices)}: {err}; use 'cpu' or 'cuda:N'") from err
    kinds = {d.type for d in parsed}
    if len(kinds) > 1:
        raise InputError(f"devices {list(devices)} mix CPU and CUDA; give one kind")
    if kinds == {"cuda"}:
        indices = [d.index if d.index is not None else 0 for d in parsed]
        if len(set(indices)) != len(indices):
            raise InputError(f"devices {list(devices)} name a GPU twice; one worker per GPU")
        have = torch.cuda.device_count() if here else max(indices) + 1
        if max(indices) >= have:
            raise InputError(f"devices {list(devices)}: this node has {have} CUDA device(s)")
        return [f"cuda:{i}" for i in indices]
    if kinds != {"cpu"}:
        raise InputError(f"devices {list(devices)}: srlib runs on 'cpu' or 'cuda:N'")
    return ["cpu"] * len(parsed)


def worker_specs(devices: Sequence[str], *, threads: int | None = None,
                 memory_limit: int | None = None) -> dict[str, dict[str, Any]]:
    """Return the ``SpecCluster`` worker specs: one Nanny per device, pinned to it.

    Each worker advertises ``GPU=1`` and sees only its device (``CUDA_VISIBLE_DEVICES``:
    its GPU's index, or nothing for a CPU stand-in). The node's cores and memory are
    shared evenly: the model task holds the ``GPU`` resource, the other threads write.
    """
    from distributed import Nanny

    devices = check_devices(devices, here=False)
    n = len(devices)
    threads = threads or max(1, (os.cpu_count() or 1) // n)
    if memory_limit is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory_limit = int(total * 0.9 / n)
    specs = {}
    for i, device in enumerate(devices):
        visible = device.split(":")[1] if device.startswith("cuda") else ""
        specs[f"device-{i}"] = {"cls": Nanny, "options": {
            "nthreads": threads, "resources": {"GPU": 1}, "memory_limit": memory_limit,
            "env": {"CUDA_VISIBLE_DEVICES": visible, "OMP_NUM_THREADS": str(threads)},
            "name": f"device-{i}"}}
    return specs


@contextlib.contextmanager
def device_cluster(devices: Sequence[str], **options: Any) -> Iterator[Any]:
    """Run what the block computes on a local cluster of one worker per device.

    Yields the ``distributed.Client`` (the default client inside the block), and closes
    the cluster after it. ``options`` go to :func:`worker_specs`.

    Examples
    --------
    >>> with device_cluster(["cuda:0", "cuda:1"]):  # doctest: +SKIP
    ...     srlib.super_resolve_to_cog(ds, "tile.tif", model=card)
    """
    import dask
    from distributed import Client, Scheduler, SpecCluster

    specs = worker_specs(check_devices(devices), **options)
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    # the nannies leave malloc's thresholds alone (see srlib.ops.slurm: the CPU path runs
    # markedly slower under distributed's default MALLOC_TRIM_THRESHOLD_)
    keep_malloc = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(keep_malloc), \
            SpecCluster(workers=specs, scheduler=scheduler, name="srlib-devices") as cluster, \
            Client(cluster, set_as_default=True) as client:
        client.wait_for_workers(len(specs))
        log.info("running on a local cluster of %d workers, one per device: %s", len(specs),
                 ", ".join(list(devices)))
        yield client
