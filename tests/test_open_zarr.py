"""open_zarr against xarray.open_zarr: the same dataset, data read through dask-lsio."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import dask_lsio

xr = pytest.importorskip("xarray")


@pytest.fixture(params=[2, 3])
def store(tmp_path, request):
    """Several variables, CF times, scale/offset packing, NaNs, a missing chunk."""
    rng = np.random.default_rng(5)
    time = pd.date_range("2026-01-01", periods=12, freq="h")
    temp = 280 + 10 * rng.random((12, 20, 16))
    temp[3, 4, 5] = np.nan
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), temp, {"units": "K", "long_name": "temperature"}),
         "tp": (("time", "lat", "lon"), rng.random((12, 20, 16)).astype("float32")),
         "mask": (("lat", "lon"), rng.random((20, 16)) > 0.5)},
        coords={"time": time, "lat": np.linspace(50, 60, 20), "lon": np.linspace(0, 8, 16),
                "height": 2.0},
        attrs={"title": "test", "source": "dask-lsio"},
    )
    encoding = {"t2m": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280,
                        "_FillValue": -32768, "chunks": (4, 10, 8)},
                "tp": {"chunks": (3, 20, 16)}}
    path = tmp_path / f"ds-v{request.param}.zarr"
    ds.to_zarr(path, encoding=encoding, zarr_format=request.param, consolidated=False)
    zeros = np.zeros((3, 20, 16), "float32")  # all fill value in tp's first chunk: no object
    xr.Dataset({"tp": (("time", "lat", "lon"), zeros)}).to_zarr(
        path, region={"time": slice(0, 3)}, consolidated=False)
    return path


def test_same_dataset_as_xarray(store):
    theirs = xr.open_zarr(store, consolidated=False)
    ours = dask_lsio.open_zarr(store, consolidated=False)
    assert ours.t2m.data.name != theirs.t2m.data.name
    xr.testing.assert_identical(ours.compute(), theirs.compute())
    assert ours.t2m.encoding["scale_factor"] == theirs.t2m.encoding["scale_factor"]
    assert ours.time.dtype == np.dtype("datetime64[ns]")
    raw = dask_lsio.open_zarr(store, consolidated=False, decode_cf=False)
    xr.testing.assert_identical(raw.compute(), xr.open_zarr(store, consolidated=False,
                                                           decode_cf=False).compute())


def test_data_is_read_by_dask_lsio_in_coarse_blocks(store):
    ours = dask_lsio.open_zarr(store, consolidated=False)
    graph = dict(ours.tp.data.__dask_graph__())
    assert any(str(k[0] if isinstance(k, tuple) else k).startswith("from-zarr-lsio")
               for k in graph)
    assert all(c % 3 == 0 for c in ours.tp.data.chunks[0])  # whole zarr chunks per block
    small = dask_lsio.open_zarr(store, consolidated=False, chunks={"time": 6})
    assert small.tp.data.chunks[0] == (6, 6)
    np.testing.assert_array_equal(small.tp.values, ours.tp.values)
    assert float(ours.t2m.sel(time="2026-01-01T05").mean()) == pytest.approx(
        float(xr.open_zarr(store, consolidated=False).t2m.sel(time="2026-01-01T05").mean()))
