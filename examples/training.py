#!/usr/bin/env python
"""Training straight from Zarr: random crops of satellite imagery and of a weather forecast at
the same place and time, and a satellite timeseries streamed in order.

dask_lsio.RandomCrops reads all the chunks of a batch (every crop of both sources) in one
engine batch and prefetches the next batches in the background; with torch installed the same
batches go through a DataLoader with two worker processes (dask_lsio.TorchCrops).
dask_lsio.iter_blocks streams an array along time, strictly in order, reading ahead.

    python examples/training.py                         # on generated samples (~300 MB)
    python examples/training.py --steps 32 --batches 8  # smaller
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import xarray as xr
from zarr.codecs import BloscCodec, ZstdCodec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dask_lsio  # noqa: E402


def make_sources(root: str, steps: int, size: int = 512) -> tuple[str, str]:
    """A satellite-like dataset (5-minute steps, 1 km grid, blosc-lz4 chunks 1x128x128) and a
    forecast-like one (hourly, 2 km over the same area, zstd chunks 1x64x64)."""
    rng = np.random.default_rng(0)
    sat = xr.Dataset(
        {"radiance": (("time", "y", "x"), rng.normal(280, 5, (steps, size, size)).astype("f4"))},
        coords={"time": pd.date_range("2026-06-01", periods=steps, freq="5min"),
                "y": np.arange(size, dtype="f8"), "x": np.arange(size, dtype="f8")})
    hours = steps // 12 + 1
    t2m = rng.normal(290, 3, (hours, size // 2, size // 2)).astype("f4")
    nwp = xr.Dataset(
        {"t2m": (("time", "y", "x"), t2m)},
        coords={"time": pd.date_range("2026-06-01", periods=hours, freq="1h"),
                "y": np.arange(0, size, 2, dtype="f8"), "x": np.arange(0, size, 2, dtype="f8")})
    paths = os.path.join(root, "satellite.zarr"), os.path.join(root, "forecast.zarr")
    sat.to_zarr(paths[0], zarr_format=3, consolidated=False, encoding={"radiance": {
        "chunks": (1, 128, 128), "compressors": BloscCodec(cname="lz4", shuffle="shuffle")}})
    nwp.to_zarr(paths[1], zarr_format=3, consolidated=False, encoding={"t2m": {
        "chunks": (1, 64, 64), "compressors": ZstdCodec()}})
    return paths


def train(crops: dask_lsio.RandomCrops) -> int:
    """One epoch; a real loop would step a model here. Prints progress, returns examples."""
    t0, seen = time.perf_counter(), 0
    for b, batch in enumerate(crops):
        # batch["sat"]: (32, 8, 64, 64) float32, batch["nwp"]: (32, 2, 32, 32): the same places
        # and times; a model step would take them here
        seen += len(batch["sat"])
        if (b + 1) % max(1, len(crops) // 4) == 0 or b + 1 == len(crops):
            rate = seen / (time.perf_counter() - t0)
            print(f"  batch {b + 1}/{len(crops)}: {seen} examples, {rate:,.0f} examples/s")
    return seen


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=288, help="5-minute steps of the samples")
    p.add_argument("--batches", type=int, default=64, help="batches per epoch")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sat_path, nwp_path = make_sources(tmp, args.steps)
        sat = dask_lsio.open_zarr(sat_path, consolidated=False)
        nwp = dask_lsio.open_zarr(nwp_path, consolidated=False)
        crop = {"sat": {"time": 8, "y": 64, "x": 64}, "nwp": {"time": 2, "y": 32, "x": 32}}
        crops = dask_lsio.RandomCrops({"sat": sat.radiance, "nwp": nwp.t2m}, crop,
                                      batch_size=32, seed=0, length=args.batches)
        print(crops)
        seen = train(crops)
        try:
            from torch.utils.data import DataLoader
        except ImportError:
            print("torch not installed: no DataLoader run")
        else:  # the same batches, read by two worker processes
            loader = DataLoader(dask_lsio.TorchCrops(crops), batch_size=None, num_workers=2)
            seen += sum(len(batch["sat"]) for batch in loader)
        print(f"trained on {seen} examples")
        t0, total, steps = time.perf_counter(), 0.0, 0
        for block in dask_lsio.iter_blocks(os.path.join(sat_path, "radiance"), axis=0):
            steps, total = steps + len(block), total + float(block.sum(dtype="f8"))
        seconds = time.perf_counter() - t0
        print(f"streamed {steps} steps of the satellite array in order: "
              f"{sat.radiance.nbytes / 1e9:.2f} GB in {seconds:.2f} s, "
              f"mean {total / sat.radiance.size:.3f}")


if __name__ == "__main__":
    main()
