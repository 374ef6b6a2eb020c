"""Store objects wherever a path is accepted: zarr.storage.LocalStore through the engine,
other stores through zarr-python or dask, with a warning that names the store."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

import dask_lsio
from dask_lsio.errors import UnsupportedCodecError, UnsupportedStoreError
from dask_lsio.io import get_engine
from dask_lsio.store import describe_store


def engine_requests() -> int:
    return get_engine().stats["requests"]


def test_local_store_objects_go_through_the_engine(tmp_path):
    x = da.arange(12 * 10, dtype="int32").reshape(12, 10).rechunk((4, 5))
    store = zarr.storage.LocalStore(tmp_path / "a", read_only=False)
    before = engine_requests()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        dask_lsio.to_zarr(x, store, chunks=(4, 5))
        y = dask_lsio.from_zarr(zarr.storage.LocalStore(tmp_path / "a"))
        np.testing.assert_array_equal(y.compute(), x.compute())
        blocks = list(dask_lsio.iter_blocks(zarr.storage.LocalStore(tmp_path / "a")))
    assert engine_requests() - before >= 2 * 6  # written and read by the engine
    np.testing.assert_array_equal(np.concatenate(blocks), x.compute())
    batch = next(iter(dask_lsio.RandomCrops(zarr.storage.LocalStore(tmp_path / "a"), (2, 3),
                                            batch_size=4, seed=1, length=1)))
    assert batch["data"].shape == (4, 2, 3)


def test_read_only_local_store_refuses_writes(tmp_path):
    x = da.ones((4, 4), chunks=2)
    dask_lsio.to_zarr(x, tmp_path / "a")
    with pytest.raises(ValueError, match="read-only"):  # zarr-python's error
        dask_lsio.to_zarr(x * 2, zarr.storage.LocalStore(tmp_path / "a", read_only=True))
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], 1)


def test_open_zarr_on_a_local_store(tmp_path):
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset({"v": (("t", "x"), np.arange(20.0).reshape(4, 5))},
                    coords={"t": np.arange(4)})
    ds.to_zarr(tmp_path / "g", zarr_format=3)
    got = dask_lsio.open_zarr(zarr.storage.LocalStore(tmp_path / "g"))
    xr.testing.assert_identical(got.compute(), xr.open_zarr(tmp_path / "g").compute())


def test_other_stores_fall_back_with_a_warning_naming_them():
    store = zarr.storage.LoggingStore(zarr.storage.MemoryStore())  # no backend of ours
    z = zarr.create_array(store, shape=(6,), chunks=(2,), dtype="int32", fill_value=0)
    with pytest.warns(UserWarning, match=r"zarr\.storage\.LoggingStore.*dask\.array\.to_zarr"):
        dask_lsio.to_zarr(da.arange(6, dtype="int32", chunks=2), z)
    with pytest.warns(UserWarning, match=r"zarr\.storage\.LoggingStore.*dask\.array\.from_zarr"):
        got = dask_lsio.from_zarr(z)
    np.testing.assert_array_equal(got.compute(), np.arange(6))
    with dask.config.set({"lsio.strict": True}):
        with pytest.raises(UnsupportedStoreError, match="LoggingStore"):
            dask_lsio.from_zarr(z)
        with pytest.raises(UnsupportedCodecError, match="LoggingStore"):  # the same family
            dask_lsio.to_zarr(da.arange(6, chunks=2), z)
    assert describe_store("s3://bucket/x.zarr") == "s3:// URLs"
    assert describe_store({}) == "a builtins.dict"
