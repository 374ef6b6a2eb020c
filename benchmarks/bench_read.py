#!/usr/bin/env python
"""Read benchmark of dask-lsio: Zarr arrays into numpy, against the peers, warm and cold.

Zarr v3 arrays of the same float32 data, shape 1024 x 512 x 512 (1 GiB; ``--quick``:
128 x 512 x 512; ``--tiny``: 16 x 512 x 512), written once with zarr-python:

(A) chunks 1x128x128 (16,384 chunk files), blosc-lz4 (``BloscCodec(cname="lz4", clevel=5,
    shuffle="shuffle")``);
(B) the same inner chunks zstd (``ZstdCodec(level=3)``) in shards of 16x512x512 (64 files);
(C) chunks 1x128x128, uncompressed;
(D) only with ``--only D``: inner chunks of 1x16x16 (1 KiB; 2^20 of them, 16,384 per shard)
    blosc-lz4 in the shards of B: the cost per chunk, planning included. Its scan is run by
    dask_lsio, zarrs and tensorstore (zarr-python's default pipeline and dask's task per
    chunk take minutes a run); "x zarrs" there is the chunks/s ratio too.
(E) only with ``--only E``: chunks of 2x96x128 (96 KiB, ~54 KiB stored; the last row of
    chunks along y holds 32 rows), blosc-lz4, 12,288 files: issue 19's cold small files,
    scanned by dask_lsio, zarrs, tensorstore and fio.

The data is a smooth field (a travelling wave pattern around 285) plus Gaussian noise
(sigma 0.25), rounded to 0.01 like a quantised sensor: it compresses about 1.6x with
blosc-lz4 and 1.85x with zstd (``harness/zarr_data.py``). Five workloads:

``scan``    the sum of the whole array (every reader but lsio-pipeline);
``select``  200 selections ``[t, y0:y0+64, x0:x0+64]`` at random positions (fixed seed),
            each touching 1 to 4 chunks (``--tiny``: 40 selections);
``array``   ``zarr.open_array(path)[:]``, the whole array into one numpy array, with zarr's
            default pipeline (zarr), zarrs' and ours (lsio-pipeline); tensorstore's
            ``read()``; warm, A and B (issue 6). Memory is warm too: just before the clock
            starts, the worker writes and frees as much memory as the output needs (see
            ``touch_memory``: on this VM the first write of memory freed seconds earlier
            costs 1.2-2.6 s per GiB, memory freed a moment ago 0.13 s); even so the page
            faults of a fresh 1 GiB output make these runs vary by 2-3x on this VM;
``array-out`` the same read into the reader's own output array, allocated and written once
            per process: ``z.get_basic_selection(..., out=NDBuffer)`` (zarr, zarrs,
            lsio-pipeline): the reader's own speed, without the page faults of its output;
``xsum``    ``xarray.open_zarr(view, consolidated=False)["v"].sum().compute()`` with zarr's
            default pipeline (zarr: plain xarray), zarrs' and ours (lsio-pipeline), against
            ``dask_lsio.open_zarr(view, ...)`` (dask_lsio); warm, A and B. The view is a Zarr
            group beside the dataset (``xr-A-1024``) holding the array as variable ``v`` with
            dimension names, its chunks a symlink to the dataset's, and an hourly CF ``time``
            coordinate; xarray's default chunks (``chunks="auto"``) apply.

Every timed run opens the array (included in its time), so a cold run also reads
``zarr.json``. Readers:

``dask_lsio``    ``dask_lsio.from_zarr(path).sum().compute()``; selections
                 ``a[sel].compute()`` one after the other; threaded scheduler, defaults,
                 ``lsio.strict`` on (a silent fallback to zarr-python would be no dask-lsio
                 number). A reader that does not exist or raises is "not available".
``dask``         ``dask.array.from_zarr(path)``, default chunks (the zarr chunks, so one
                 task per 1x128x128 chunk, also for B), otherwise the same as above
``zarr``         zarr-python 3, default codec pipeline and concurrency settings; a
                 selection is read as ``z[t:t+1, ...][0]`` (see zarrs)
``zarrs``        zarr-python with ``codec_pipeline.path = zarrs.ZarrsCodecPipeline`` and
                 ``codec_pipeline.strict = True`` (raise instead of silently falling back
                 to the Python pipeline); the rest of its settings at their defaults.
                 zarrs 0.2.3 rejects ``z[t, y0:y1, x0:x1]`` when the window crosses chunks
                 (UnsupportedVIndexingError), so selections use ``z[t:t+1, ...][0]``
``lsio-pipeline`` zarr-python with ``codec_pipeline.path =
                 dask_lsio.zarr.LSIOCodecPipeline`` and ``lsio.strict`` on (array, xsum)
``tensorstore``  ``ts.open({"driver": "zarr3", "kvstore": {"driver": "file", ...}})``,
                 default context (no cache pool); selections are all issued at once and
                 then awaited (its futures API); zarr/zarrs read them one after the other
``decode-only``  the warm ceiling, A and B only: every chunk's bytes already in memory (B:
                 the inner chunks cut out of the shards by their index beforehand),
                 numcodecs decodes them on ``os.cpu_count()`` threads (a ThreadPoolExecutor
                 over batches of chunks, blosc's own threads off) into a per-thread buffer:
                 no IO, no copy into an output array, no sum
``fio``          the IO ceiling: fio reads every chunk (shard) file once, with the job of
                 ``bench_io.py`` (``harness/fio.py``: io_uring, one read per file, page-cache
                 warm / O_DIRECT cold); it reads the stored bytes, and its row shows the
                 decoded GB/s a reader would reach if it took only fio's time

zarrs, tensorstore and fio are skipped, with a note, where they are not installed.

The zarr, zarrs and tensorstore scans read slabs of 64 along axis 0 (64 MiB, a whole number
of B's shards) with the next slab's read in flight while one is summed, rather than
``z[:]``: memory stays bounded (about three slabs), as dask's is, and each slab is 1,024
chunks, enough to keep their internal concurrency busy.

Each reader runs in its own worker process for the whole benchmark (``read_peers.py``),
driven over a pipe:
global settings (zarr's codec pipeline, dask config, thread pools) cannot leak from one
reader to another, and each process's memory is its own. Peak RSS is per timed run: the
worker resets its high-water mark (``/proc/self/clear_refs``, "5") just before the run and
reads ``VmHWM`` after it, so the number includes what the process already holds (imports,
pools) plus what the run added; without clear_refs it falls back to ``ru_maxrss``, the peak
of the worker's life. The machine's busy cores are read from ``/proc/stat`` around each run
(``harness.cpu``): on 2 cores, a reader that keeps both busy is bound by its CPU work, the
kernel's included (page cache, IO completions, path lookups), not by the device. Workloads
run one after another; within a workload, readers take turns in every repeat and the order
of turns rotates from one repeat to the next, so drift and the previous run's effects hit
them alike; cold runs drop the page cache (``sync; echo 3 > /proc/sys/vm/drop_caches``, root
only) before each timed run (``--keep-metadata``: ``echo 1``, the page cache only, so that
the files' directory entries and inodes stay cached, as they are when fio's clock starts);
warm runs pre-read the dataset. Each (dataset, reader, workload)
first runs once untimed (selections: the first 20), which also checks the result. Every
timed run is checked too: the scan's sum against the sum computed when the data was
generated (the whole array's sum after the clock stopped), each selection's sum against
the generator's values. GB/s are decimal, of decoded output (1 GiB = 1.074 GB for a full
scan); "x base", "x zarrs" compare with those readers in the same dataset, cache state and
workload (base: dask for scan and select, the default pipeline for array and xsum); "x ceil"
compares with decode-only (warm, A and B; for array too), else fio.

With ``--baseline OTHER`` the dask_lsio readers (dask_lsio, lsio-pipeline) also run with the
other dask_lsio, as ``dask_lsio@baseline`` and ``lsio-pipeline@baseline``, each in a worker
of its own like every reader, taking turns with the others; "x baseline" compares with them.

Run (from the repository root, with dask-lsio and the ``bench`` extra installed)::

    python benchmarks/bench_read.py                 # full: 5 repeats, ~25 min on 2 cores
    python benchmarks/bench_read.py --quick         # 128 x 512 x 512, 2 repeats, ~2 min
    python benchmarks/bench_read.py --only A --readers dask_lsio,zarrs --no-cold
    python benchmarks/bench_read.py --only D --readers dask_lsio,zarrs,tensorstore,fio
    python benchmarks/bench_read.py --only E --readers dask_lsio,zarrs,tensorstore,fio
    python benchmarks/bench_read.py --workloads array,xsum --no-cold   # issue 6's rows
    python benchmarks/bench_read.py --quick --readers dask_lsio,zarrs --baseline ../baseline

The datasets are generated once under ``--data-dir`` (default ``benchmarks/data``) and
reused while their manifest matches. Raw timings, medians and every reader's versions and
settings go to ``--json`` (default ``bench-results/bench_read.json``). The last lines
print the issue's "done when" checks.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from harness import args as cli
from harness.fio import FioReader
from harness.peers import installed
from harness.report import (BASELINE_COLUMN, BASELINE_LEGEND, CORES_COLUMN, CORES_LEGEND,
                            Check, Column, Unavailable, finish, fmt, fmt_cores, print_table,
                            rel, run_meta)
from harness.results import Result, find, lookup, ratio, versus_baseline
from harness.sides import Side, report_sides, resolve_baseline, split_reader, with_twins
from harness.workers import Worker, serve, start_all
from harness.zarr_data import STEPS, Dataset, Spec, make_specs, prepare_datasets
from read_peers import SCAN_SLAB, WINDOW, expected_selection_sums, make_selections, worker_setup
from read_runs import BASE, ON_REQUEST, READERS, TWINNED, WORKLOADS, run_dataset

SCRIPT = Path(__file__).resolve()
SELECTIONS = {"full": 200, "quick": 200, "tiny": 40}  # selections per run, per size


# -- reporting ---------------------------------------------------------------------------


def ceiling(results: list[Result], r: Result) -> Result | None:
    """What "x ceil" compares with: decode-only for a warm scan or whole array of A or B,
    else fio."""
    if r.workload not in ("scan", "array", "array-out"):
        return None
    if r.cache == "warm":
        dec = lookup(results, "decode-only", r.dataset, "warm", "scan")  # also for arrays
        if dec is not None:
            return dec
    return lookup(results, "fio", r.dataset, r.cache, "scan")


def ratios(results: list[Result], r: Result) -> dict[str, float | None]:
    """Throughput of ``r`` over the base's (``BASE``), zarrs', the ceiling's (same cell)
    and its baseline twin's."""
    return {
        "base": ratio(r, find(results, r, BASE[r.workload])),
        "zarrs": ratio(r, find(results, r, "zarrs")),
        "ceil": ratio(r, ceiling(results, r)),
        "baseline": versus_baseline(results, r),
    }


def mib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f}"


def print_results(results: list[Result], specs: dict[str, Spec], n_select: int,
                  baseline: bool) -> None:
    """The medians, one row per (dataset, cache, workload, reader)."""
    width = max([13] + [len(r.reader) for r in results])
    columns = [
        Column("dataset", 16, "<"), Column("cache", 5, "<"), Column("work", 9, "<"),
        Column("reader", width, "<"), Column("median s", 9), Column("GB/s", 7),
        Column("sel/s", 7), Column("x base", 7), Column("x zarrs", 7), Column("x ceil", 7),
        Column("peak MiB", 9), CORES_COLUMN,
    ] + ([BASELINE_COLUMN] if baseline else [])
    rows: list[list[str] | Unavailable] = []
    for r in results:
        lead = [specs[r.dataset].label(), r.cache, r.workload, r.reader]
        if not r.ok:
            rows.append(Unavailable(lead, r.error or "no runs"))
            continue
        x = ratios(results, r)
        sel = f"{n_select / r.median_s:,.0f}" if r.workload == "select" else "-"
        rows.append(lead + [f"{r.median_s:.4f}", f"{r.gbps:.3f}", sel, fmt(x["base"]),
                            fmt(x["zarrs"]), fmt(x["ceil"]), mib(r.peak_rss), fmt_cores(r.cores)]
                    + ([fmt(x["baseline"])] if baseline else []))
    legend = (
        "GB/s: decimal, of decoded output (fio: decoded bytes / fio's time to read the stored "
        "bytes); x base, x zarrs, x ceil: GB/s over theirs in the same row group (base: dask "
        "for scan and select, zarr's default pipeline for array and xsum; ceil: decode-only "
        "when warm, else fio); peak MiB: the reader process's RSS high-water mark during a "
        "timed run (max over repeats); " + CORES_LEGEND
    )
    print_table(columns, rows, legend + ("\n" + BASELINE_LEGEND if baseline else ""))


def print_setup(workers: list[Worker], results: list[Result]) -> None:
    """How every reader was configured, and the blocks or pipeline each dataset used."""
    width = max([13] + [len(w.name) for w in workers])
    print("\nreaders:")
    for w in workers:
        print(f"  {w.name:<{width}} {w.error or json.dumps(w.info)}")
    notes = {(r.reader, r.dataset, r.workload, r.note) for r in results
             if r.note and r.workload in ("scan", "xsum")}
    for reader, dataset, workload, note in sorted(notes):
        if reader != "fio":
            print(f"  {reader:<{width}} {dataset} {workload}: {note}")


def done_when(results: list[Result]) -> list[Check]:
    """The issues' acceptance checks, measured (medians): issue 2's full scans, issue 6's
    whole-array reads through the codec pipeline and xarray sums."""

    def cmp(dataset: str, cache: str, other: str, workload: str = "scan",
            ours: str = "dask_lsio") -> float | None:
        a = lookup(results, ours, dataset, cache, workload)
        b = lookup(results, other, dataset, cache, workload)
        return rel(a.gbps if a else None, b.gbps if b else None)

    checks = [
        Check("A warm scan: dask_lsio / dask.array.from_zarr", cmp("A", "warm", "dask"), 8.0),
        Check("A warm scan: dask_lsio / zarrs", cmp("A", "warm", "zarrs"), 1.2),
        Check("A cold scan: dask_lsio / zarrs", cmp("A", "cold", "zarrs"), 2.0),
        Check("A cold scan: dask_lsio / tensorstore", cmp("A", "cold", "tensorstore"), 1.3),
        Check("B warm scan: dask_lsio / zarrs", cmp("B", "warm", "zarrs"), 1.2),
        Check("D warm scan (2^20 chunks of 1 KiB at full size): dask_lsio / zarrs",
              cmp("D", "warm", "zarrs"), 1.5),
        Check("E cold scan (12,288 files of 2x96x128): dask_lsio / tensorstore",
              cmp("E", "cold", "tensorstore"), 1.5),
    ]
    for d in ("A", "B"):
        checks += [
            Check(f"{d} warm z[:]: lsio-pipeline / default pipeline",
                  cmp(d, "warm", "zarr", "array", "lsio-pipeline"), 5.0),
            Check(f"{d} warm z[:]: lsio-pipeline / zarrs pipeline",
                  cmp(d, "warm", "zarrs", "array", "lsio-pipeline"), 1.2),
            Check(f"{d} warm z[:] into a reused out=: lsio-pipeline / zarrs pipeline",
                  cmp(d, "warm", "zarrs", "array-out", "lsio-pipeline"), 1.2),
            Check(f"{d} warm xarray sum: dask_lsio.open_zarr / xarray.open_zarr",
                  cmp(d, "warm", "zarr", "xsum"), 5.0),
        ]
    return checks


def json_rows(results: list[Result], baseline: bool) -> list[dict]:
    """Every timed run, the medians, the ratios and what was checked, for the JSON file."""
    rows = []
    for r in results:
        row = {
            "dataset": r.dataset, "cache": r.cache, "workload": r.workload, "reader": r.reader,
            "note": r.note, "error": r.error, "verified": r.verified,
            "runs": [{"seconds": x.seconds, "nbytes": x.nbytes, "rss_peak": x.rss_peak,
                      "rss_before": x.rss_before, "cpu_busy": x.cpu_busy,
                      "cpu_kernel": x.cpu_kernel} for x in r.runs],
        }
        if r.ok:
            x = ratios(results, r)
            row |= {
                "bytes": r.runs[0].nbytes, "median_s": r.median_s, "gb_per_s": r.gbps,
                "peak_rss": r.peak_rss, "ratio_base": x["base"], "ratio_zarrs": x["zarrs"],
                "ratio_ceiling": x["ceil"],
            } | ({"ratio_baseline": x["baseline"]} if baseline else {})
        rows.append(row)
    return rows


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The common options (``harness.args``), ``--only``, ``--readers``, ``--workloads``."""
    p = cli.parser(__doc__, "read", quick="128 x 512 x 512, 2 repeats",
                   tiny="16 x 512 x 512, 40 selections, 1 repeat")
    p.add_argument("--only", choices=["A", "B", "C", "D", "E"],
                   help="run one dataset only (D and E run only when named)")
    p.add_argument("--readers", default=",".join(READERS), help="comma-separated subset")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    p.add_argument("--keep-metadata", action="store_true",
                   help="cold runs drop the page cache only (echo 1): directory entries and "
                        "inodes stay cached, the state fio's clock starts in")
    args = cli.parse(p, argv)
    args.readers = cli.name_list(p, args.readers, READERS, "--readers")
    chosen = cli.name_list(p, args.workloads, WORKLOADS, "--workloads")
    args.workloads = [w for w in WORKLOADS if w in chosen]
    return args


def make_fio(args: argparse.Namespace) -> FioReader | None:
    """fio, when asked for and installed; its job files are kept beside the JSON."""
    if "fio" not in args.readers or "scan" not in args.workloads:
        return None
    return FioReader(args.json.parent / "fio-jobs", jobs=os.cpu_count() or 1)


def start_workers(readers: list[str], baseline: Side | None) -> list[Worker]:
    """One worker per reader (fio runs in this process) and, with a baseline, one per twin;
    all start at once."""
    workers = []
    for label in with_twins([r for r in readers if r != "fio"], TWINNED, baseline):
        name, side = split_reader(label)
        workers.append(Worker(SCRIPT, name, baseline) if side else Worker(SCRIPT, name))
    return start_all(workers)


def meta_info(args: argparse.Namespace, skipped: dict, datasets: list[Dataset],
              workers: list[Worker], fio: FioReader | None, n_select: int) -> dict:
    """Where and how the benchmark ran, for the JSON file."""
    return run_meta(args, skipped) | {
        "datasets": {
            d.spec.name: asdict(d.spec) | {"files": len(d.paths), "stored_bytes": d.stored_bytes,
                                           "ratio": d.spec.nbytes / d.stored_bytes}
            for d in datasets
        },
        "readers": {w.name: w.error or w.info for w in workers},
        "slab": SCAN_SLAB, "selections": n_select, "window": WINDOW,
        "fio": fio.info() if fio else None,
        "cold_drop_caches": 1 if args.keep_metadata else 3,
    }


def main(argv: list[str] | None = None) -> None:
    """Prepare the datasets, time every reader, print the table and the checks."""
    args = parse_args(argv)
    if args.worker:
        return serve(lambda: worker_setup(args.worker))
    started = time.perf_counter()
    specs = make_specs(STEPS[args.size])
    specs = {k: v for k, v in specs.items()
             if k == args.only or (not args.only and k not in ON_REQUEST)}
    states = cli.cache_states(args)
    if args.keep_metadata and "cold" in states:
        print("note: --keep-metadata: cold runs drop the page cache only (echo 1 > "
              "drop_caches); directory entries and inodes stay cached")
    skipped: dict[str, str] = {}
    args.readers = installed(args.readers, skipped)
    baseline = resolve_baseline(args.baseline) if args.baseline else None
    for s in specs.values():
        print(f"dataset {s.describe()}")
    datasets = prepare_datasets(list(specs.values()), args.data_dir)
    for d in datasets:
        print(f"  {d.spec.name}: {d.stored_bytes / 1e9:.3f} GB stored, "
              f"ratio {d.spec.nbytes / d.stored_bytes:.2f}")
    n_select = SELECTIONS[args.size]
    sels = make_selections(next(iter(specs.values())).shape[0], n_select)
    expected = expected_selection_sums(sels)
    fio = make_fio(args)
    workers = start_workers(args.readers, baseline)
    results: list[Result] = []
    try:
        for ds in datasets:
            t0 = time.perf_counter()
            results += run_dataset(ds, workers, fio, states, sels, expected, args.repeats,
                                   args.workloads, drop=1 if args.keep_metadata else 3)
            print(f"  dataset {ds.spec.name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        for w in workers:
            w.close()
    print()
    print_results(results, specs, n_select, baseline is not None)
    print_setup(workers, results)
    if fio is not None:
        print("\n" + "\n".join(fio.describe()))
    meta = meta_info(args, skipped, datasets, workers, fio, n_select)
    meta |= report_sides(baseline)
    finish(args, meta, json_rows(results, baseline is not None), done_when(results), started)


if __name__ == "__main__":
    main()
