#!/usr/bin/env python
"""Cluster benchmark of dask-lsio: a full scan on a distributed LocalCluster, against dask.

The read benchmark's dataset (A) (``bench_read.py``: 1024 x 512 x 512 float32, 16,384 chunk
files of 1x128x128, blosc-lz4; ``--quick``: 128 steps; ``--tiny``: 16), generated once
(``harness/zarr_data.py``) and reused. One
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` on loopback with
``LSIOWorkerPlugin`` registered serves every reader, in the same run, taking turns:

``dask_lsio``     ``dask_lsio.from_zarr(path).sum()`` (default blocks: on a cluster, up
                  to twice ``array.chunk-size`` where that makes them few enough for the
                  scheduler to send all at once), computed on the cluster; each worker
                  reads through its own plugin engine
``dask``          ``dask.array.from_zarr(path).sum()``, default chunks (one task per chunk)
``dask-coarse``   ``dask.array.from_zarr(path, chunks=<dask_lsio's blocks>).sum()``: dask's
                  reader with the same few coarse tasks, to show what the engine adds
                  beyond task count
``dask_lsio-unqueued``  ``dask_lsio`` with the scheduler's root-task queuing off for its
                  runs (``distributed.scheduler.worker-saturation: inf``, set on the
                  running scheduler and restored after each run)
``dask_lsio-threads``   the same scan on dask's threaded scheduler in this process (two
                  threads, the cluster's two cores; built with ``scheduler="threads"``
                  set, so with the blocks dask_lsio makes for threads): what the cluster
                  is measured against

Warm runs pre-read the dataset; cold runs (root only) drop the page cache before each run
(``sync; echo 3 > /proc/sys/vm/drop_caches``; the workers' own memory is not touched). Every
run's sum is checked against the one computed when the data was generated. GB/s are decimal,
of the decoded array; "x dask" compares with ``dask`` in the same cache state.

With ``--baseline OTHER``, ``dask_lsio@baseline`` is the same scan with the other dask_lsio:
a worker process of the baseline's Python runs its own LocalCluster of the same shape (whose
processes import the other dask_lsio) and times the scan there, in turns with the others;
"x baseline" compares with it.

    python benchmarks/bench_cluster.py            # full: 5 repeats
    python benchmarks/bench_cluster.py --quick    # 128 steps, 2 repeats
    python benchmarks/bench_cluster.py --quick --baseline ../baseline

Raw timings and medians go to ``--json`` (default ``bench-results/bench_cluster.json``); the
last line prints the issue's "done when" check.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from harness import args as cli
from harness.cache import drop_caches, preread_files
from harness.report import (BASELINE_COLUMN, BASELINE_LEGEND, Check, Column, Unavailable,
                            finish, fmt, print_table, rel, run_meta)
from harness.results import Result, Run, lookup, versus, versus_baseline
from harness.sides import report_sides, resolve_baseline, split_reader, with_twins
from harness.workers import Worker, reason, serve, start_all
from harness.zarr_data import STEPS, Dataset, make_specs, prepare_datasets

SCRIPT = Path(__file__).resolve()
READERS = ["dask_lsio", "dask", "dask-coarse", "dask_lsio-unqueued", "dask_lsio-threads"]
TWINNED = {"dask_lsio"}  # the reader that is dask_lsio: its --baseline twin
CLUSTER = dict(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
               dashboard_address=None)
VERIFIED = "every run's sum against the data's (rtol 1e-6)"


def scan(reader: str, path: str, blocks: Any) -> Any:
    """The dask collection whose compute is the timed scan."""
    import dask
    import dask.array as da

    import dask_lsio

    if reader == "dask_lsio-threads":  # the blocks it gets on threads, client or not
        with dask.config.set(scheduler="threads", num_workers=CLUSTER["n_workers"]):
            return dask_lsio.from_zarr(path).sum(dtype="float64")
    if reader.startswith("dask_lsio"):
        return dask_lsio.from_zarr(path).sum(dtype="float64")
    if reader == "dask":
        return da.from_zarr(path).sum(dtype="float64")
    return da.from_zarr(path, chunks=blocks).sum(dtype="float64")


def timed(client: Any, reader: str, path: str, blocks: Any, cold: bool) -> dict:
    """One scan on the cluster; the graph is built before the clock starts."""
    job = scan(reader, path, blocks)
    saturation = None
    if reader == "dask_lsio-unqueued":
        saturation = client.run_on_scheduler(_set_saturation, math.inf)
    try:
        if cold:
            drop_caches()
        t0 = time.perf_counter()
        if reader == "dask_lsio-threads":
            total = job.compute(scheduler="threads", num_workers=CLUSTER["n_workers"])
        else:
            total = client.compute(job).result()
        seconds = time.perf_counter() - t0
    finally:
        if saturation is not None:
            client.run_on_scheduler(_set_saturation, saturation)
    return {"seconds": seconds, "sum": float(total)}


def _set_saturation(value: float, dask_scheduler: Any = None) -> float:
    """Set the running scheduler's worker-saturation (read per decision, not only at start:
    inf turns root-task queuing off); return the value it had."""
    old = dask_scheduler.WORKER_SATURATION
    dask_scheduler.WORKER_SATURATION = value
    return old


class Served:
    """The worker's side (``--baseline``): a LocalCluster of its own, whose processes import
    this process's dask_lsio; every request is one timed scan on it."""

    def __init__(self) -> None:
        import distributed

        import dask_lsio

        self.cluster = distributed.LocalCluster(**CLUSTER)
        self.client = distributed.Client(self.cluster)
        self.client.register_plugin(dask_lsio.LSIOWorkerPlugin())

    def handle(self, request: dict) -> dict:
        out = timed(self.client, request["reader"], request["path"], None, request["cold"])
        return {"ok": True} | out

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def worker_setup(reader: str) -> tuple[Served, dict]:
    """Serve the scans with whichever dask_lsio this process imports."""
    import dask_lsio

    if reader not in TWINNED:
        raise ValueError(f"{reader} has no baseline twin")
    served = Served()
    # the cluster's processes must read with this dask_lsio too, not only this process
    files = set(served.client.run(lambda: __import__("dask_lsio").__file__).values())
    if files != {dask_lsio.__file__}:
        raise RuntimeError(f"the cluster's workers import dask_lsio from {sorted(files)}")
    return served, {"dask_lsio": dask_lsio.__version__, "file": dask_lsio.__file__}


def one_run(client: Any, label: str, workers: dict[str, Worker], ds: Dataset, blocks: Any,
            cold: bool) -> dict:
    """One scan by ``label``: on this process's cluster, or in its worker's (a twin)."""
    if label not in workers:
        return timed(client, label, str(ds.root), blocks, cold)
    w = workers[label]
    if w.error:
        raise RuntimeError(w.error)
    reply = w.request("scan", reader=split_reader(label)[0], path=str(ds.root), cold=cold)
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "no reply"))
    return reply


def attempt(client: Any, res: Result, workers: dict[str, Worker], ds: Dataset, blocks: Any,
            cold: bool, keep: bool) -> None:
    """Run ``res.reader`` once, check its sum; ``keep``: a timed run, appended to ``res``."""
    if res.error:
        return
    try:
        out = one_run(client, res.reader, workers, ds, blocks, cold)
    except Exception as e:  # a reader that fails is reported, the others go on
        res.error = reason(e)
        return
    if not math.isclose(out["sum"], ds.total_sum, rel_tol=1e-6):
        res.error = f"wrong result: sum {out['sum']} != {ds.total_sum}"
    elif keep:
        res.runs.append(Run(out["seconds"], ds.spec.nbytes))
        print(f"  {res.cache} {res.reader} run {len(res.runs)}: {out['seconds']:.3f} s "
              f"({res.gbps:.3f} GB/s)", flush=True)


def run(args: argparse.Namespace, ds: Dataset, readers: list[str],
        workers: dict[str, Worker]) -> list[Result]:
    """Every reader ``--repeats`` times per cache state on a 2-worker LocalCluster, in turns."""
    import distributed

    import dask_lsio

    blocks = dask_lsio.from_zarr(str(ds.root)).chunks
    states = cli.cache_states(args)
    results: list[Result] = []
    with distributed.LocalCluster(**CLUSTER) as cluster, distributed.Client(cluster) as client:
        client.register_plugin(dask_lsio.LSIOWorkerPlugin())
        for state in states:
            if state == "warm":
                preread_files(ds.paths)
            rows = {r: Result(cache=state, reader=r, verified=VERIFIED) for r in readers}
            turns = list(readers)
            for reader in turns:  # untimed first run of each (warms the workers' imports)
                attempt(client, rows[reader], workers, ds, blocks, cold=False, keep=False)
            for _ in range(args.repeats):
                for reader in turns:
                    attempt(client, rows[reader], workers, ds, blocks, state == "cold", True)
                turns = turns[1:] + turns[:1]  # turns rotate between repeats
            results += rows.values()
    return results


def report(results: list[Result], baseline: bool) -> tuple[list[dict], list[Check]]:
    """Print the table; the JSON rows and the "done when" check."""
    width = max([12] + [len(r.reader) for r in results])
    columns = [Column("cache", 6, "<"), Column("reader", width, "<"), Column("median s", 9),
               Column("GB/s", 7), Column("x dask", 7), Column("x threads", 9)] \
        + ([BASELINE_COLUMN] if baseline else [])
    table: list[list[str] | Unavailable] = []
    rows = []
    for r in results:
        row = {"cache": r.cache, "reader": r.reader, "seconds": [x.seconds for x in r.runs],
               "verified": r.verified}
        if not r.ok:
            table.append(Unavailable([r.cache, r.reader], r.error or "no runs"))
            rows.append(row | {"error": r.error or "no runs"})
            continue
        x_dask, x_base = versus(results, r, "dask"), versus_baseline(results, r)
        x_threads = versus(results, r, "dask_lsio-threads")
        table.append([r.cache, r.reader, f"{r.median_s:.3f}", f"{r.gbps:.3f}", fmt(x_dask),
                      fmt(x_threads)] + ([fmt(x_base)] if baseline else []))
        rows.append(row | {"median_s": r.median_s, "gb_per_s": r.gbps, "x_dask": x_dask,
                           "x_threads": x_threads}
                    | ({"ratio_baseline": x_base} if baseline else {}))
    print()
    print_table(columns, table, "GB/s: decimal, of the decoded array; x dask, x threads: "
                "GB/s over dask.array.from_zarr's on the cluster, and over dask_lsio's on the "
                "threaded scheduler, in the same cache state"
                + ("\n" + BASELINE_LEGEND if baseline else ""))
    ours, theirs = (lookup(results, n, cache="warm") for n in ("dask_lsio", "dask"))
    value = rel(ours.gbps if ours else None, theirs.gbps if theirs else None)
    checks = [Check("warm full scan on a 2-worker LocalCluster: dask_lsio / "
                    "dask.array.from_zarr", value, 5)]
    threads = lookup(results, "dask_lsio-threads", cache="warm")
    for name in ("dask_lsio", "dask_lsio-unqueued"):
        mine = lookup(results, name, cache="warm")
        checks.append(Check(f"warm full scan: {name} on the cluster / on the threaded "
                            "scheduler", rel(mine.gbps if mine else None,
                                             threads.gbps if threads else None), 0.8))
    return rows, checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(__doc__, "cluster", quick="128 steps, 2 repeats", tiny="16 steps, 1 repeat")
    p.add_argument("--readers", default=",".join(READERS), help="comma-separated subset")
    args = cli.parse(p, argv)
    args.readers = cli.name_list(p, args.readers, READERS, "--readers")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return serve(lambda: worker_setup(args.worker))
    started = time.perf_counter()
    baseline = resolve_baseline(args.baseline) if args.baseline else None
    readers = with_twins(args.readers, TWINNED, baseline)
    ds, = prepare_datasets([make_specs(STEPS[args.size])["A"]], args.data_dir)
    workers = {r: Worker(SCRIPT, split_reader(r)[0], baseline)
               for r in readers if split_reader(r)[1]}
    start_all(list(workers.values()))
    try:
        results = run(args, ds, readers, workers)
    finally:
        for w in workers.values():
            w.close()
    rows, checks = report(results, baseline is not None)
    meta = run_meta(args) | {"cluster": "LocalCluster(n_workers=2, threads_per_worker=1, "
                                        "processes=True)"}
    meta |= report_sides(baseline)
    finish(args, meta, rows, checks, started)


if __name__ == "__main__":
    main()
