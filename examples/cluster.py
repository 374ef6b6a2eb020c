#!/usr/bin/env python
"""On a cluster: read, compute and write back with distributed and one engine per worker.

Starts a LocalCluster on this machine (point ``--scheduler`` at a running one to use it),
registers LSIOWorkerPlugin so that each worker runs its own engine, computes the anomaly of
every time step against the time mean, writes it as a new array, and prints what each worker
read and wrote (the plugin's totals; the dashboard shows the same per task under Fine
Performance Metrics).

    python examples/cluster.py
    python examples/cluster.py --path my.zarr --out anomaly.zarr --scheduler tcp://host:8786
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import distributed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dask_lsio  # noqa: E402
from _sample import gbps, make_sample  # noqa: E402


def worker_totals(dask_worker) -> dict:
    return dask_worker.plugins["dask-lsio"].totals(dask_worker)


def run(client: distributed.Client, path: str, out: str) -> None:
    client.register_plugin(dask_lsio.LSIOWorkerPlugin())
    x = dask_lsio.from_zarr(path)
    anomaly = x - x.mean(axis=0)
    t0 = time.perf_counter()
    dask_lsio.to_zarr(anomaly, out, mode="w", chunks=(1, 128, 128),
                      shards=(16, *x.shape[1:]), dimension_names=["time", "y", "x"])
    # each block is read once: the mean and the anomaly share the from_zarr tasks
    print(f"anomaly of {path} written to {out}: {gbps(x.nbytes, time.perf_counter() - t0)}")
    for worker, totals in sorted(client.run(worker_totals).items()):
        print(f"  {worker}: read {totals.get('lsio-read [bytes]', 0) / 1e9:.2f} GB in "
              f"{totals.get('lsio-read [objects]', 0):.0f} objects, wrote "
              f"{totals.get('lsio-write [bytes]', 0) / 1e9:.2f} GB in "
              f"{totals.get('lsio-write [objects]', 0):.0f} objects (stored bytes)")
    check = dask_lsio.from_zarr(out).mean().compute()
    print(f"mean of the anomaly (should be ~0): {float(check):.2e}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--path", help="a Zarr array (default: generate a sample)")
    p.add_argument("--out", help="where to write the anomaly (default: a temporary directory)")
    p.add_argument("--steps", type=int, default=256, help="time steps of the sample")
    p.add_argument("--scheduler", help="address of a running scheduler (default: LocalCluster)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or make_sample(os.path.join(tmp, "sample.zarr"), args.steps)
        out = args.out or os.path.join(tmp, "anomaly.zarr")
        if args.scheduler:
            with distributed.Client(args.scheduler) as client:
                run(client, path, out)
            return
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            run(client, path, out)


if __name__ == "__main__":
    main()
