#!/usr/bin/env python
"""Cluster benchmark of dask-lsio: a full scan on a distributed LocalCluster, against dask.

The read benchmark's dataset (A) (``bench_read.py``: 1024 x 512 x 512 float32, 16,384 chunk
files of 1x128x128, blosc-lz4; ``--quick``: 128 steps), generated there and reused. One
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` on loopback with
``LSIOWorkerPlugin`` registered serves every reader, in the same run, taking turns:

``dask_lsio``     ``dask_lsio.from_zarr(path).sum()`` (default blocks), computed on the
                  cluster; each worker reads through its own plugin engine
``dask``          ``dask.array.from_zarr(path).sum()``, default chunks (one task per chunk)
``dask-coarse``   ``dask.array.from_zarr(path, chunks=<dask_lsio's blocks>).sum()``: dask's
                  reader with the same few coarse tasks, to show what the engine adds
                  beyond task count

Warm runs pre-read the dataset; cold runs (root only) drop the page cache before each run
(``sync; echo 3 > /proc/sys/vm/drop_caches``; the workers' own memory is not touched). Every
run's sum is checked against the one computed when the data was generated. GB/s are decimal,
of the decoded array; "x dask" compares with ``dask`` in the same cache state.

    python benchmarks/bench_cluster.py            # full: 5 repeats
    python benchmarks/bench_cluster.py --quick    # 128 steps, 2 repeats

Raw timings and medians go to ``--json`` (default ``bench-results/bench_cluster.json``); the
last line prints the issue's "done when" check.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_io  # noqa: E402  (cache control, JSON layout, checks)
import bench_read  # noqa: E402  (the dataset)

READERS = ["dask_lsio", "dask", "dask-coarse"]


def scan(reader: str, path: str, blocks) -> object:
    """The dask collection whose compute is the timed scan."""
    import dask.array as da

    import dask_lsio

    if reader == "dask_lsio":
        return dask_lsio.from_zarr(path).sum(dtype="float64")
    if reader == "dask":
        return da.from_zarr(path).sum(dtype="float64")
    return da.from_zarr(path, chunks=blocks).sum(dtype="float64")


def timed(client, reader: str, ds: bench_read.Dataset, blocks, cold: bool) -> float:
    """One scan on the cluster; the graph is built before the clock starts."""
    job = scan(reader, str(ds.root), blocks)
    if cold:
        bench_io.drop_caches()
    t0 = time.perf_counter()
    total = client.compute(job).result()
    seconds = time.perf_counter() - t0
    if not np.isclose(total, ds.total_sum, rtol=1e-6):
        raise AssertionError(f"{reader}: sum {total} != {ds.total_sum}")
    return seconds


def run(args) -> dict[tuple[str, str], list[float]]:
    import distributed

    import dask_lsio

    ds, = bench_read.prepare_datasets([bench_read.make_specs(args.quick)["A"]], args.data_dir)
    blocks = dask_lsio.from_zarr(str(ds.root)).chunks
    states = ["warm"] + (["cold"] if args.cold and bench_io.can_drop_caches() else [])
    times: dict[tuple[str, str], list[float]] = {}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        client.register_plugin(dask_lsio.LSIOWorkerPlugin())
        for state in states:
            if state == "warm":
                bench_io.preread(ds)
            readers = list(args.readers)
            for reader in readers:  # untimed first run of each (warms the workers' imports)
                timed(client, reader, ds, blocks, cold=False)
            for rep in range(args.repeats):
                for reader in readers:
                    s = timed(client, reader, ds, blocks, cold=state == "cold")
                    times.setdefault((state, reader), []).append(s)
                    print(f"  {state} {reader} run {rep + 1}: {s:.3f} s "
                          f"({ds.spec.nbytes / 1e9 / s:.3f} GB/s)", flush=True)
                readers = readers[1:] + readers[:1]  # turns rotate between repeats
    return times


def report(times: dict, nbytes: int) -> tuple[list[dict], list[bench_io.Check]]:
    rows = []
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"\n{'cache':6} {'reader':12} {'median s':>9} {'GB/s':>7} {'x dask':>7}")
    for (state, reader), m in med.items():
        base = med.get((state, "dask"))
        ratio = base / m if base else None
        print(f"{state:6} {reader:12} {m:9.3f} {nbytes / 1e9 / m:7.3f} "
              f"{ratio if ratio else float('nan'):7.2f}")
        rows.append({"cache": state, "reader": reader, "seconds": times[(state, reader)],
                     "median_s": m, "gb_per_s": nbytes / 1e9 / m, "x_dask": ratio})
    warm = med.get(("warm", "dask_lsio")), med.get(("warm", "dask"))
    value = warm[1] / warm[0] if all(warm) else None
    checks = [bench_io.Check("warm full scan on a 2-worker LocalCluster: dask_lsio / "
                             "dask.array.from_zarr", value, 5)]
    return rows, checks


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="128 steps, 2 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per reader (5)")
    p.add_argument("--readers", default=",".join(READERS))
    p.add_argument("--no-cold", dest="cold", action="store_false", help="warm runs only")
    p.add_argument("--data-dir", type=Path, default=Path("benchmarks/data"))
    p.add_argument("--json", type=Path, default=Path("bench-results/bench_cluster.json"))
    args = p.parse_args(argv)
    args.readers = [r for r in args.readers.split(",") if r]
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    nbytes = bench_read.make_specs(args.quick)["A"].nbytes
    times = run(args)
    rows, checks = report(times, nbytes)
    meta = bench_io.run_meta(args) | {
        "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True)"}
    bench_io.finish(args.json, meta, rows, checks)


if __name__ == "__main__":
    main()
