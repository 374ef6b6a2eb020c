"""The sample dataset the examples use when given no path: a (time, y, x) float32 field."""

from __future__ import annotations

import dask.array as da
from zarr.codecs import BloscCodec

import dask_lsio


def make_sample(path: str, steps: int, size: int = 512) -> str:
    """Write ``steps`` x ``size`` x ``size`` float32 values (a smooth field plus noise) as a
    sharded Zarr v3 array with dask_lsio.to_zarr, and return ``path``."""
    t = da.arange(steps, chunks=16, dtype="float32")[:, None, None]
    y = da.arange(size, chunks=size, dtype="float32")[None, :, None]
    x = da.arange(size, chunks=size, dtype="float32")[None, None, :]
    field = 285 + 10 * da.sin(x / 40 + t / 9) * da.cos(y / 30)
    noise = da.random.default_rng(0).standard_normal((steps, size, size), chunks=(16, size, size))
    values = (field + noise).astype("float32").round(2)
    dask_lsio.to_zarr(values, path, chunks=(1, 128, 128), shards=(16, size, size),
                      compressors=BloscCodec(cname="lz4", shuffle="shuffle"),
                      dimension_names=["time", "y", "x"], attributes={"units": "K"}, mode="w")
    return path


def gbps(nbytes: float, seconds: float) -> str:
    return f"{nbytes / 1e9:.2f} GB in {seconds:.2f} s ({nbytes / 1e9 / seconds:.2f} GB/s)"

