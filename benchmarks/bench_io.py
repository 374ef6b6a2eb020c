#!/usr/bin/env python
"""IO benchmark of dask-lsio: many small files, warm and cold page cache.

Reads two datasets laid out like zarr chunk keys (``<data-dir>/<name>-<n>/c/<i>/<j>``, 128
files per directory, random incompressible bytes; see ``io_files.py``):

(a) 16,384 files of ~54 KiB (sizes uniform in 50-58 KiB, so most end mid-page);
(b) 100,000 files of exactly 4 KiB;

with six readers:

``io_uring``         ``IoUringEngine(direct_io=False).read_ranges`` over the whole dataset
``io_uring-direct``  the same with O_DIRECT
``threads``          ``ThreadEngine().read_ranges``
``python``           ``with open(p, "rb") as f: f.read()`` per file, in a loop, keeping
                     every file's bytes as the engines do (so it pays for fresh memory)
``python-discard``   the same loop dropping each file's bytes at once: a reference for
                     the cost of reading alone (it delivers nothing)
``fio``              fio with ``ioengine=io_uring``, the device ceiling (see
                     ``harness.fio.fio_job``); skipped, with a note, where fio is missing

Warm runs pre-read the dataset once; cold runs drop the page cache (``sync; echo 3 >
/proc/sys/vm/drop_caches``, root only) before every timed run. O_DIRECT bypasses the page
cache, so its warm rows are device reads too. Every reader first does one untimed run, so
the engines' buffer pools are in steady state (a first pass faults in fresh buffer memory,
seconds per GiB on a VM). Each (dataset, cache, reader) is timed ``--repeats`` times (the
readers take turns, so drift hits all of them alike) and the median is reported. Results
are checked outside the timed region: the exact size of every buffer and a sample of
buffers against the files' contents. The engines get a ``size_hint`` just above the largest
file (64 KiB for (a), 8 KiB for (b)), as a zarr store that knows its chunk size would.
GB/s are decimal, of the bytes delivered; "x python" and "x fio" compare GB/s with the
Python loop's and fio's in the same dataset and cache state.

With ``--baseline OTHER`` the three engine readers also run with the other dask_lsio, as
``io_uring@baseline`` etc., each in a worker process of its own (the readers above run in
this process), in turns with the others; "x baseline" compares with them.

Run (from the repository root, with dask-lsio installed)::

    python benchmarks/bench_io.py                 # full: 5 repeats, several minutes
    python benchmarks/bench_io.py --quick         # under a minute: 2,048 + 10,000 files
    python benchmarks/bench_io.py --only a --no-cold --repeats 3 --json out.json
    python benchmarks/bench_io.py --quick --baseline ../baseline

The datasets are generated once under ``--data-dir`` (default ``benchmarks/data``) and
reused while their manifest matches. Raw timings and medians go to ``--json`` (default
``bench-results/bench_io.json``). The last lines print the issue's "done when" checks.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path

from harness import args as cli
from harness.cache import drop_caches, preread_files
from harness.fio import FioReader
from harness.peers import installed
from harness.report import (BASELINE_COLUMN, BASELINE_LEGEND, Check, Column, Unavailable,
                            finish, fmt, print_table, run_meta)
from harness.results import Result, Run, find, lookup, versus, versus_baseline
from harness.sides import Side, report_sides, resolve_baseline, split_reader, with_twins
from harness.workers import Worker, serve, start_all
from io_files import (VERIFIED, Dataset, Reader, Spec, make_reader, make_specs, open_dataset,
                      prepare_dataset)

SCRIPT = Path(__file__).resolve()
READERS = ["io_uring", "io_uring-direct", "threads", "python", "python-discard"]
TWINNED = {"io_uring", "io_uring-direct", "threads"}  # dask_lsio's: twins for --baseline


# -- readers in worker processes (--baseline) ---------------------------------------------


class RemoteError(RuntimeError):
    """A worker's reader failed (or never started): its row becomes "not available"."""


class RemoteReader:
    """A reader of ``io_files`` served by a worker process, run like a local one."""

    def __init__(self, worker: Worker, data_dir: Path) -> None:
        self.worker = worker
        self.name = worker.name
        self.data_dir = data_dir

    def run(self, ds: Dataset) -> Run:
        """One timed, checked run in the worker (the same ``Reader.run`` there)."""
        if self.worker.error:
            raise RemoteError(self.worker.error)
        reply = self.worker.request("run", spec=asdict(ds.spec), data_dir=str(self.data_dir))
        if not reply.get("ok"):
            raise RemoteError(reply.get("error", "no reply"))
        return Run(**reply["run"])

    def close(self) -> None:
        self.worker.close()


class Served:
    """The worker's side: one reader, datasets opened as asked for."""

    def __init__(self, name: str) -> None:
        self.reader = make_reader(name)

    def handle(self, request: dict) -> dict:
        spec = Spec(**request["spec"])
        ds = open_dataset(spec, Path(request["data_dir"]))
        return {"ok": True, "run": asdict(self.reader.run(ds))}


def worker_setup(name: str) -> tuple[Served, dict]:
    """Serve reader ``name`` with whichever dask_lsio this process imports."""
    import dask_lsio

    return Served(name), {"dask_lsio": dask_lsio.__version__, "file": dask_lsio.__file__}


def make_readers(args: argparse.Namespace, baseline: Side | None) -> list[Reader | RemoteReader]:
    """The readers (each engine opened once for the whole benchmark) and, with a baseline,
    the engine readers' twins in their worker processes."""
    readers: list[Reader | RemoteReader] = []
    workers = []
    for name in with_twins(READERS, TWINNED, baseline):
        if name in READERS:
            readers.append(make_reader(name))
        else:
            workers.append(Worker(SCRIPT, split_reader(name)[0], baseline))
            readers.append(RemoteReader(workers[-1], args.data_dir))
    start_all(workers)
    return readers


# -- running -----------------------------------------------------------------------------


def attempt(reader: Reader | RemoteReader, ds: Dataset, res: Result, keep: bool) -> None:
    """Run ``reader`` once (``keep``: a timed run, appended to ``res``); a worker's failure
    makes the row "not available", a local reader's failure stops the benchmark."""
    if res.error:
        return
    try:
        run = reader.run(ds)
    except RemoteError as e:
        res.error = str(e)
        return
    if keep:
        res.runs.append(run)


def run_cache_state(
    ds: Dataset,
    cache: str,
    readers: list[Reader | RemoteReader],
    fio: FioReader | None,
    repeats: int,
) -> list[Result]:
    """Time every reader ``repeats`` times on ``ds`` in one cache state, readers in turn."""
    cold = cache == "cold"
    results = {r.name: Result(ds.spec.name, cache, reader=r.name, verified=VERIFIED)
               for r in readers}
    for r in readers:  # steady state: pools allocated, code paths warm
        attempt(r, ds, results[r.name], keep=False)
    if fio is not None:
        results["fio"] = Result(ds.spec.name, cache, reader="fio", note=f"direct={int(cold)}",
                                verified="bytes and reads as fio reports them")
    preread_files(ds.paths)
    for rep in range(repeats):
        for r in readers:
            if cold:
                drop_caches()
            attempt(r, ds, results[r.name], keep=True)
        if fio is not None:
            if cold:
                drop_caches()
            results["fio"].runs.append(fio.run(ds.fileset(), direct=cold))
        print(f"    {cache} repeat {rep + 1}/{repeats} done", flush=True)
    return list(results.values())


# -- reporting ---------------------------------------------------------------------------


def print_results(results: list[Result], specs: dict[str, Spec], baseline: bool) -> None:
    """The medians, one row per (dataset, cache, reader)."""
    width = max([16] + [len(r.reader) for r in results])
    columns = [Column("dataset", 26, "<"), Column("cache", 5, "<"), Column("reader", width, "<"),
               Column("median s", 9), Column("GB/s", 7), Column("files/s", 10),
               Column("x python", 9), Column("x fio", 7)] + ([BASELINE_COLUMN] if baseline else [])
    rows = []
    for r in results:
        lead = [specs[r.dataset].label(), r.cache, r.reader]
        if not r.ok:
            rows.append(Unavailable(lead, r.error or "no runs"))
            continue
        cells = lead + [f"{r.median_s:.4f}", f"{r.gbps:.3f}", f"{r.per_s:,.0f}",
                        fmt(versus(results, r, "python")), fmt(versus(results, r, "fio"))]
        rows.append(cells + ([fmt(versus_baseline(results, r))] if baseline else []))
    legend = ("GB/s: decimal, of the bytes delivered (fio: the bytes it read, tails < 4 KiB "
              "skipped); x python, x fio: GB/s over theirs in the same dataset and cache state")
    print_table(columns, rows, legend + ("\n" + BASELINE_LEGEND if baseline else ""))


def best_uring(results: list[Result], dataset: str, cache: str) -> Result | None:
    """The faster of io_uring buffered and O_DIRECT (median time)."""
    cands = [lookup(results, n, dataset, cache) for n in ("io_uring", "io_uring-direct")]
    cands = [c for c in cands if c is not None]
    return min(cands, key=lambda c: c.median_s) if cands else None


def done_when(results: list[Result]) -> list[Check]:
    """The issue's acceptance checks, measured."""

    def rel(a: Result | None, b_name: str) -> float | None:
        b = find(results, a, b_name) if a else None
        return a.gbps / b.gbps if a and b else None

    warm_a = lookup(results, "io_uring", "a", "warm")
    cold_a = best_uring(results, "a", "cold")
    warm_b = lookup(results, "io_uring", "b", "warm")
    cold_b = best_uring(results, "b", "cold")
    which_a = f"best: {cold_a.reader}" if cold_a else ""
    which_b = f"best: {cold_b.reader}" if cold_b else ""
    return [
        Check("warm a: io_uring / threads", rel(warm_a, "threads"), 2.0),
        Check("warm a: io_uring / python loop", rel(warm_a, "python"), 1.2),
        Check("cold a: io_uring / python loop", rel(cold_a, "python"), 2.5, which_a),
        Check("cold a: io_uring / fio (GB/s)", rel(cold_a, "fio"), 0.6, which_a),
        Check("warm b: io_uring files/s", warm_b.per_s if warm_b else None, 300_000),
        Check("cold b: io_uring files/s", cold_b.per_s if cold_b else None, 60_000, which_b),
    ]


def json_rows(results: list[Result], baseline: bool) -> list[dict]:
    """Every timed run, the medians and ratios of each row, for the JSON file."""
    rows = []
    for r in results:
        row = {"dataset": r.dataset, "cache": r.cache, "reader": r.reader, "note": r.note,
               "verified": r.verified, "seconds": [x.seconds for x in r.runs]}
        if not r.ok:
            rows.append(row | {"error": r.error or "no runs"})
            continue
        row |= {
            "bytes": r.runs[0].nbytes, "files": r.runs[0].count, "median_s": r.median_s,
            "gb_per_s": r.gbps, "files_per_s": r.per_s,
            "ratio_python": versus(results, r, "python"), "ratio_fio": versus(results, r, "fio"),
        }
        rows.append(row | ({"ratio_baseline": versus_baseline(results, r)} if baseline else {}))
    return rows


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The common options (``harness.args``) and ``--only``."""
    p = cli.parser(__doc__, "io", quick="2,048 + 10,000 files, 2 repeats",
                   tiny="256 + 512 files, 1 repeat")
    p.add_argument("--only", choices=["a", "b"], help="run one dataset only")
    return cli.parse(p, argv)


def main(argv: list[str] | None = None) -> None:
    """Prepare the datasets, time every reader, print the table and the checks."""
    args = parse_args(argv)
    if args.worker:
        return serve(lambda: worker_setup(args.worker))
    started = time.perf_counter()
    specs = make_specs(args.size)
    if args.only:
        specs = {args.only: specs[args.only]}
    states = cli.cache_states(args)
    skipped: dict[str, str] = {}
    fio = None
    if installed(["fio"], skipped):  # job files are kept beside the JSON, to rerun by hand
        fio = FioReader(args.json.parent / "fio-jobs", jobs=os.cpu_count() or 1)
    baseline = resolve_baseline(args.baseline) if args.baseline else None
    readers = make_readers(args, baseline)
    results: list[Result] = []
    try:
        for spec in specs.values():
            print(f"dataset {spec.label()}", flush=True)
            ds = prepare_dataset(spec, args.data_dir)
            for cache in states:
                results += run_cache_state(ds, cache, readers, fio, args.repeats)
    finally:
        for r in readers:
            r.close()
    print()
    print_results(results, specs, baseline is not None)
    meta = run_meta(args, skipped) | {
        "datasets": {k: asdict(s) for k, s in specs.items()},
        "fio": fio.info() if fio else None,
    }
    if fio is not None:
        print("\n" + "\n".join(fio.describe()))
    meta |= report_sides(baseline)
    finish(args, meta, json_rows(results, baseline is not None), done_when(results), started)


if __name__ == "__main__":
    main()
