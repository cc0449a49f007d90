from __future__ import annotations

import contextlib

import dask
import numpy as np
import pytest
import xarray as xr

import srlib


@contextlib.contextmanager
def raise_if_dask_computes():
    """Fail if anything inside the block asks dask to compute (as xarray's test helper)."""

    def scheduler(dsk, keys, **kwargs):
        raise RuntimeError("dask computed something that should have stayed lazy")

    with dask.config.set(scheduler=scheduler):
        yield


@pytest.fixture(scope="session")
def scene() -> xr.Dataset:
    """A 96 x 96 px crop of the bundled real scene, with SCL."""
    return srlib.sample_scene(chunks=48).isel(y=slice(300, 396), x=slice(500, 596))


@pytest.fixture(scope="session")
def tiny_swin() -> srlib.ModelSpec:
    """A small, randomly initialised Swin2SR (10 bands in, 4 out, x10)."""
    return srlib.load_model(
        "swin2sr", random_weights=True, seed=1, img_size=16, window_size=8,
        embed_dim=12, depths=(2,), num_heads=(2,), mlp_ratio=2.0,
    )


def synthetic_scene(shape=(40, 48), *, seed=0, crs="EPSG:32633", with_scl=True) -> xr.Dataset:
    """A small random scene with a projected grid (smooth values, uint16 DN)."""
    import rioxarray  # noqa: F401  (the .rio accessor, whatever ran before)

    rng = np.random.default_rng(seed)
    ny, nx = shape
    variables = {}
    for i, band in enumerate(srlib.S2_BANDS):
        base = rng.integers(500, 4000, size=(ny, nx)).astype(np.float64)
        variables[band] = (("y", "x"), (base * 0.5 + 1000 + 100 * i).astype(np.uint16),
                           {"nodata": 0, "scale_factor": 1e-4, "add_offset": 0.0})
    if with_scl:
        variables["scl"] = (("y", "x"), np.full((ny, nx), 4, np.uint8), {"nodata": 0})
    ds = xr.Dataset(
        variables,
        coords={"y": 5_000_000 - 10 * (np.arange(ny) + 0.5),
                "x": 400_000 + 10 * (np.arange(nx) + 0.5)},
    )
    ds = ds.rio.write_crs(crs).chunk({"y": 16, "x": 16})
    return ds


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The servers a job meets: STAC API, moto S3 (sources and a products bucket), webhook."""
    from .servers import (
        CREDENTIALS,
        metadata_items,
        moto_s3,
        s3_client,
        stac_api,
        upload_sample,
        webhook,
        write_catalog,
        zero_item,
    )

    mp = pytest.MonkeyPatch()
    for key, value in CREDENTIALS.items():
        mp.setenv(key, value)
    with moto_s3() as endpoint, webhook() as (hook_url, received):
        mp.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
        mp.setenv("AWS_ENDPOINT_URL_S3", f"http://{endpoint}")
        mp.setenv("SRLIB_WEBHOOK_URL", hook_url)
        item = upload_sample(endpoint)
        zero = zero_item(endpoint, item, day="20200320", workdir=tmp_path_factory.mktemp("z"))
        client = s3_client(endpoint)
        client.create_bucket(Bucket="products")
        catalog = write_catalog(tmp_path_factory.mktemp("stac"),
                                [item, zero, *metadata_items()])
        with stac_api(catalog) as url:
            yield {"url": url, "client": client, "received": received}
    mp.undo()
