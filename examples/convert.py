#!/usr/bin/env python
"""Convert a Zarr v2 array into a sharded Zarr v3 array with from_zarr and to_zarr.

Millions of small v2 chunk files become a few shards: each task reads many v2 chunks in one
batch and writes whole shards, every object renamed into place when complete. The result is
checked against zarr-python reading the source.

    python examples/convert.py                               # a generated v2 sample
    python examples/convert.py --path old.zarr --out new.zarr --shards 64,512,512
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numcodecs
import numpy as np
import zarr
from dask.diagnostics import ProgressBar
from zarr.codecs import ZstdCodec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dask_lsio  # noqa: E402
from _sample import gbps  # noqa: E402


def make_v2(path: str, steps: int, size: int = 512) -> str:
    """A v2 array of 1 x 128 x 128 blosc chunks, written by zarr-python."""
    z = zarr.create_array(path, shape=(steps, size, size), chunks=(1, 128, 128), dtype="float32",
                          zarr_format=2, compressors=numcodecs.Blosc(cname="lz4"))
    rng = np.random.default_rng(0)
    for t in range(0, steps, 32):
        n = min(32, steps - t)
        z[t:t + n] = (285 + rng.standard_normal((n, size, size))).astype("float32")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--path", help="a Zarr v2 array (default: generate one)")
    p.add_argument("--out", help="the v3 array to write (default: a temporary directory)")
    p.add_argument("--shards", default="16,512,512", help="shard shape")
    p.add_argument("--chunks", default="1,128,128", help="inner chunk shape")
    p.add_argument("--steps", type=int, default=256, help="time steps of the sample")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = args.path or make_v2(os.path.join(tmp, "v2.zarr"), args.steps)
        out = args.out or os.path.join(tmp, "v3.zarr")
        x = dask_lsio.from_zarr(src)
        shards = tuple(min(int(s), n) for s, n in zip(args.shards.split(","), x.shape))
        chunks = tuple(min(int(c), s) for c, s in zip(args.chunks.split(","), shards))
        t0 = time.perf_counter()
        with ProgressBar():
            dask_lsio.to_zarr(x, out, mode="w", zarr_format=3, chunks=chunks, shards=shards,
                              compressors=ZstdCodec(level=3))
        print(f"converted {src} -> {out}: {gbps(x.nbytes, time.perf_counter() - t0)}")
        old, new = zarr.open_array(src, mode="r"), zarr.open_array(out, mode="r")
        for t in np.linspace(0, x.shape[0] - 1, 5).astype(int):  # spot checks, zarr as oracle
            assert np.array_equal(old[t], new[t]), f"time step {t} differs"
        print(f"checked against zarr-python: {new.metadata.zarr_format=}, {new.shards=}")


if __name__ == "__main__":
    main()
