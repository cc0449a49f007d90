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
    # Swin2SR: workers run torch with 1 thread, this process with 2, and oneDNN's
    # convolutions round differently per thread count: within the documented 1 DN
    sr = srlib.super_resolve(ds, tiny_swin, chunks=32)
    local = sr.compute(scheduler="threads")
    remote = client.compute(sr).result()
    for var in srlib.OUTPUT_BANDS:
        diff = np.abs(remote[var].values.astype(int) - local[var].values)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.001
    np.testing.assert_array_equal(remote.quality.values, local.quality.values)
    # the resumable writer runs its region tasks on the workers
    sr = srlib.super_resolve(ds, chunks=52)
    store = srlib.to_zarr(sr, tmp_path / "p.zarr")
    written = srlib.open_zarr(store)
    np.testing.assert_array_equal(written.red.values, sr.red.compute(scheduler="threads").values)
    workers = client.run(lambda: __import__("srlib").models.spec._CACHE.__len__())
    assert len(workers) == 2 and all(n >= 1 for n in workers.values())  # loaded per worker
