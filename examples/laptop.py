#!/usr/bin/env python
"""On a laptop: statistics over a Zarr array with dask's threaded scheduler, no cluster.

dask_lsio.from_zarr gives a plain dask array whose tasks each read many chunks in one batch
of the process's IO engine; everything else is ordinary dask, progress bar included.

    python examples/laptop.py                  # on a generated sample (512 MiB)
    python examples/laptop.py --path my.zarr   # on your own array
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import dask
from dask.diagnostics import ProgressBar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dask_lsio  # noqa: E402
from _sample import gbps, make_sample  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--path", help="a Zarr array (default: generate a sample)")
    p.add_argument("--steps", type=int, default=512, help="time steps of the sample")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or make_sample(os.path.join(tmp, "sample.zarr"), args.steps)
        x = dask_lsio.from_zarr(path)
        print(f"{path}: shape {x.shape} {x.dtype}, {x.npartitions} tasks of {x.chunksize}")
        t0 = time.perf_counter()
        with ProgressBar():
            mean, std, top = dask.compute(x.mean(axis=0), x.std(axis=0), x.max())
        print(f"read and reduced {gbps(x.nbytes, time.perf_counter() - t0)}")
        print(f"mean {float(mean.mean()):.3f}, std {float(std.mean()):.3f}, max {float(top):.3f}")


if __name__ == "__main__":
    main()
