"""super_resolve and the Zarr writer on a dask.distributed LocalCluster of 2 processes."""

from __future__ import annotations

import numpy as np
import pytest

import srlib

from .conftest import synthetic_scene

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, memory_limit="4GiB")
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_local_cluster_output_is_identical_to_the_single_process_run(client, tmp_path,
                                                                     tiny_swin):
    ds = synthetic_scene((96, 96))
    sr = srlib.super_resolve(ds, chunks=32)
    local = sr.compute(scheduler="threads")
    remote = client.compute(sr).result()
    for var in local.data_vars:  # bicubic: bit-identical
        np.testing.assert_array_equal(remote[var].values, local[var].values)
    # Swin2SR too: workers run torch with 1 thread, this process with 2, but the kernel's
    # forward passes are single-threaded lanes everywhere (srlib.engine.lanes.forward_all)
    sr = srlib.super_resolve(ds, tiny_swin, chunks=32)
    local = sr.compute(scheduler="threads")
    remote = client.compute(sr).result()
    for var in local.data_vars:
        np.testing.assert_array_equal(remote[var].values, local[var].values)
    # the resumable writer runs its region tasks on the workers
    sr = srlib.super_resolve(ds, chunks=52)
    store = srlib.to_zarr(sr, tmp_path / "p.zarr")
    written = srlib.open_zarr(store)
    np.testing.assert_array_equal(written.red.values, sr.red.compute(scheduler="threads").values)
    # the progress display follows the regions as the scheduler finishes them
    with srlib.job_progress(mode="log", every=1) as progress:
        srlib.to_zarr(sr, tmp_path / "q.zarr")
    regions = [line for line in progress.lines if "inference" in line]
    assert len(regions) >= 4 and "inference 4/4 regions" in regions[-1], progress.lines
    workers = client.run(lambda: __import__("srlib").models.spec._CACHE.__len__())
    assert len(workers) == 2 and all(n >= 1 for n in workers.values())  # loaded per worker


def test_model_tasks_go_only_to_gpu_workers_one_at_a_time(tmp_path):
    """Workers advertising ``GPU=1`` get every model task, never two at once."""
    from distributed import Nanny, Scheduler, SpecCluster

    spec = {"gpu": {"cls": Nanny, "options": {"nthreads": 2, "resources": {"GPU": 1},
                                                "memory_limit": "4GiB"}},
            "cpu": {"cls": Nanny, "options": {"nthreads": 2, "memory_limit": "4GiB"}}}
    class Running(distributed.WorkerPlugin):
        """The most model tasks a worker ran at once, from its own state machine (the task
        stream's times are shifted by each worker's clock-offset estimate, which moves
        between heartbeats: spans of serial tasks can seem to overlap by milliseconds)."""

        name = "srlib-running"

        def setup(self, worker):
            self.now, self.most = 0, 0

        def transition(self, key, start, finish, **kwargs):
            if str(key).startswith("('srlib-"):
                self.now += (finish == "executing") - (start == "executing")
                self.most = max(self.most, self.now)

    with SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {
            "dashboard_address": ":0"}}) as cluster, distributed.Client(cluster) as client:
        client.register_plugin(Running())
        ds = synthetic_scene((96, 96))
        sr = srlib.super_resolve(ds, chunks=32)  # resources found from the client
        with distributed.get_task_stream(client) as stream:
            store = srlib.to_zarr(sr, tmp_path / "p.zarr")
        # asked of the workers themselves: the client's scheduler_info() is a cached copy
        gpu = client.run(lambda dask_worker: dask_worker.name)
        gpu_addr = next(a for a, name in gpu.items() if name == "gpu")
        model = [t for t in stream.data if str(t["key"]).startswith("('srlib-")]
        assert len(model) == 9 and {t["worker"] for t in model} == {gpu_addr}
        most = client.run(lambda dask_worker: dask_worker.plugins["srlib-running"].most)
        assert most == {gpu_addr: 1, **{a: 0 for a in gpu if a != gpu_addr}}  # serial
        # both workers wrote regions; the output equals the single-process run
        assert {t["worker"] for t in stream.data} == set(gpu)
        local = srlib.super_resolve(ds, chunks=32, resources={}).compute(scheduler="threads")
        np.testing.assert_array_equal(srlib.open_zarr(store).red.values, local.red.values)
        loaded = client.run(lambda: __import__("srlib").models.spec._CACHE.__len__())
        assert loaded[gpu_addr] == 1 and sum(loaded.values()) == 1


def test_worker_specs_pin_one_worker_to_each_gpu():
    import torch

    from srlib.ops.devices import check_devices, gpu_devices, worker_specs

    specs = worker_specs(["cuda:0", "cuda:3"], threads=4, memory_limit=2**30)
    options = [s["options"] for s in specs.values()]
    assert [o["env"]["CUDA_VISIBLE_DEVICES"] for o in options] == ["0", "3"]
    assert all(o["resources"] == {"GPU": 1} and o["nthreads"] == 4 for o in options)
    cpu = worker_specs(["cpu", "cpu"], threads=1, memory_limit=2**30)
    assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in cpu.values()] == ["", ""]
    for bad in ([], "cuda:0", ["cpu", "cuda:0"], ["cuda:1", "cuda:1"], ["tpu"], ["gpu7"]):
        with pytest.raises(srlib.InputError):
            check_devices(bad, here=False)
    if not torch.cuda.is_available():
        with pytest.raises(srlib.InputError, match="CUDA"):
            check_devices(["cuda:0"])
        with pytest.raises(srlib.InputError, match="--gpus 2 but this node has 0"):
            gpu_devices(2)


def test_two_device_workers_write_the_bytes_of_one_process(tmp_path, tiny_swin):
    """``devices=["cpu", "cpu"]`` stands in for two GPUs: one worker each, pinned."""
    from srlib.ops.devices import device_cluster

    ds = synthetic_scene((96, 96))
    one = srlib.open_zarr(srlib.to_zarr(srlib.super_resolve(ds, tiny_swin, chunks=32,
                                                            device="cpu"), tmp_path / "1.zarr"))
    with device_cluster(["cpu", "cpu"], memory_limit=2**31) as client:
        sr = srlib.super_resolve(ds, tiny_swin, chunks=32, device="cpu")
        two = srlib.open_zarr(srlib.to_zarr(sr, tmp_path / "2.zarr"))
        loaded = client.run(lambda: len(__import__("srlib").models.spec._CACHE))
        visible = client.run(lambda: __import__("os").environ["CUDA_VISIBLE_DEVICES"])
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
    assert sorted(loaded.values()) == [1, 1]  # both ran model tasks; the model loaded once each
    assert list(visible.values()) == ["", ""] and resources == [{"GPU": 1}, {"GPU": 1}]
    for var in one.data_vars:
        np.testing.assert_array_equal(one[var].values, two[var].values)
