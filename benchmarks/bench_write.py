#!/usr/bin/env python
"""Write benchmark of dask-lsio: an in-memory array into new Zarr arrays, against the peers.

The data is the read benchmark's float32 field (``harness.zarr_data.make_slab``: a smooth
pattern plus noise, to 0.01), 512 x 512 x 512 (512 MiB; ``--quick``: 128 x 512 x 512;
``--tiny``: 16 x 512 x 512), generated once and held in memory. Two layouts, Zarr v3:

(A) chunks 1x128x128 (8,192 chunk files), blosc-lz4 (``BloscCodec(cname="lz4", clevel=5,
    shuffle="shuffle")``);
(B) shards 16x512x512 (32 files) of 1x128x128 inner chunks, zstd (``ZstdCodec(level=3)``).

Writers (``write_writers.py``), each creating a new array in a new directory (the metadata
write is in the time):

``dask_lsio``    ``dask_lsio.to_zarr(x, path, chunks=..., [shards=...,] compressors=...)``
                 where ``x = da.from_array(data, chunks=(64, 512, 512), name=False)``, made
                 before the clock starts (64 MiB blocks, a whole number of chunks and
                 shards); threaded scheduler, defaults,
                 ``lsio.strict`` on (no silent fallback to zarr-python)
``dask``         ``dask.array.to_zarr`` of the same ``x`` with the same options
``zarr``         zarr-python 3: ``zarr.create_array(...)`` then ``z[:] = data``, default
                 codec pipeline and settings
``zarrs``        the same with ``codec_pipeline.path = zarrs.ZarrsCodecPipeline``
``tensorstore``  ``ts.open(zarr3 spec, create=True)`` then ``.write(data).result()``,
                 default context
``encode-only``  the encode ceiling: numcodecs encodes every (inner) chunk on
                 ``os.cpu_count()`` threads (blosc's own threads off), no IO and no shard
                 assembly
``plain-write``  the IO ceiling: the objects a zarr-python run wrote, already in memory,
                 written again by a plain Python loop (``open``/``write``/``close``,
                 directories made as needed): no encode, no temporary names, no renames
``engine-write`` the same objects in one ``dask_lsio.get_engine().write`` batch: temporary
                 names renamed into place, as dask_lsio writes them, without encoding

Every timed run starts after ``sync`` (untimed), so no run pays for the previous one's
writeback; the page cache holds the written data afterwards, as it would for a user (no
run waits for the disk: ``--durable`` adds ``os.sync()`` to each timed run instead).
Outputs are kept until their layout is done, then deleted: ext4 skips recently freed inodes
when it allocates new ones, so deleting hundreds of thousands of chunk files makes the next
minutes of file creation much slower for every writer (run the benchmark after a quiet
minute). Writers take turns within every repeat. The first run of each writer is untimed and
read back in full with zarr-python (the oracle); every timed run is checked on 8 random
time steps. GB/s are decimal, of the array's bytes; "x dask", "x zarrs" and "x ceil"
(encode-only) compare with those rows of the same layout. zarrs and tensorstore are skipped,
with a note, where they are not installed.

With ``--baseline OTHER`` the dask_lsio writers (dask_lsio, engine-write) also run with the
other dask_lsio, as ``NAME@baseline``, each in a worker process of its own that generates the
same data (the others write from this process), in turns with the others; their arrays are
checked here like the others'; "x baseline" compares with them.

Run (from the repository root, with dask-lsio and the ``bench`` extra installed)::

    python benchmarks/bench_write.py            # full: 5 repeats, ~10 min on 2 cores
    python benchmarks/bench_write.py --quick    # 128 x 512 x 512, 2 repeats
    python benchmarks/bench_write.py --only A --writers dask_lsio,zarrs
    python benchmarks/bench_write.py --quick --writers dask_lsio,zarrs --baseline ../baseline

Raw timings, medians, versions and settings go to ``--json`` (default
``bench-results/bench_write.json``). The last lines print the issue's "done when" checks.
"""

from __future__ import annotations

import argparse
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from harness import args as cli
from harness.peers import installed
from harness.report import (BASELINE_COLUMN, BASELINE_LEGEND, Check, Column, Unavailable,
                            finish, fmt, print_table, run_meta)
from harness.results import Result, Run, lookup, versus, versus_baseline
from harness.sides import Side, report_sides, resolve_baseline, split_reader, with_twins
from harness.workers import Worker, reason, serve, start_all
from write_writers import (BLOCK, LAYOUTS, Layout, make_data, one_run, versions,
                           worker_setup, write_zarr)
from harness.zarr_data import CHUNK, SHARD, stored_objects

SCRIPT = Path(__file__).resolve()
WRITERS = ["dask_lsio", "dask", "zarr", "zarrs", "tensorstore", "encode-only", "plain-write",
           "engine-write"]
TWINNED = {"dask_lsio", "engine-write"}  # the writers that are dask_lsio: --baseline twins
STEPS = {"full": 512, "quick": 128, "tiny": 16}  # axis 0 of the array, per size
VERIFIED = "read back with zarr-python: all of the untimed first run, 8 random steps of each"


def check_written(path: Path, data: np.ndarray, full: bool, rng: np.random.Generator) -> None:
    """zarr-python reads back what was written: all of it, or 8 random time steps."""
    import zarr

    z = zarr.open_array(str(path), mode="r")
    if full:
        for t in range(0, data.shape[0], BLOCK):
            if not np.array_equal(z[t:t + BLOCK], data[t:t + BLOCK]):
                raise AssertionError(f"{path}: steps {t}:{t + BLOCK} differ from the data")
        return
    for t in rng.integers(0, data.shape[0], 8):
        if not np.array_equal(z[int(t)], data[t]):
            raise AssertionError(f"{path}: step {t} differs from the data")


def write_once(label: str, workers: dict[str, Worker], data: np.ndarray, layout: Layout,
               path: Path, objects: list, reference: Path, args: argparse.Namespace) -> float:
    """One timed write by ``label``: here, or in its worker (a baseline twin)."""
    if label not in workers:
        return one_run(label, data, layout, path, objects, args.durable)
    w = workers[label]
    if w.error:
        raise RuntimeError(w.error)
    reply = w.request("write", layout=layout.name, path=str(path), steps=data.shape[0],
                      reference=str(reference) if objects else "", durable=args.durable)
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "no reply"))
    return reply["seconds"]


def run_layout(layout: Layout, data: np.ndarray, writers: list[str],
               workers: dict[str, Worker], args: argparse.Namespace) -> list[Result]:
    """Every writer ``--repeats`` times (after an untimed run, checked in full), in turns."""
    out_dir = args.out_dir / layout.name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    results = {w: Result(layout.name, reader=w, verified=VERIFIED) for w in writers}
    if "encode-only" in results:
        results["encode-only"].verified = "nothing to check (it writes nothing)"
    rng = np.random.default_rng(0)
    objects: list = []
    reference = out_dir / "reference"
    if {"plain-write", "engine-write"} & {split_reader(w)[0] for w in writers}:
        write_zarr(data, layout, reference)  # the bytes a zarr-python run stores
        objects = stored_objects(reference)
    try:
        for rep in range(args.repeats + 1):  # run 0: untimed, checked in full
            for w in writers:
                res = results[w]
                if res.error:
                    continue
                path = out_dir / f"{w}-{rep}"
                try:
                    s = write_once(w, workers, data, layout, path, objects, reference, args)
                    if split_reader(w)[0] != "encode-only":
                        check_written(path, data, full=rep == 0, rng=rng)
                except AssertionError as e:
                    res.error = f"wrong result: {e}"[:300]
                except Exception as e:  # a writer that is missing or fails is reported
                    res.error = reason(e)
                if res.error:
                    print(f"  {layout.name} {w}: not available ({res.error})", flush=True)
                    continue
                if rep:
                    res.runs.append(Run(s, data.nbytes))
                    print(f"  {layout.name} {w} run {rep}: {s:.3f} s "
                          f"({data.nbytes / 1e9 / s:.3f} GB/s)", flush=True)
            writers = writers[1:] + writers[:1]  # turns rotate between repeats
    finally:
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)
    return list(results.values())


# -- report ----------------------------------------------------------------------------------


def print_results(results: list[Result], baseline: bool) -> None:
    width = max([12] + [len(r.reader) for r in results])
    columns = [Column("layout", 7, "<"), Column("writer", width, "<"), Column("median s", 9),
               Column("GB/s", 7), Column("x dask", 7), Column("x zarrs", 8), Column("x ceil", 7)]
    columns += [BASELINE_COLUMN] if baseline else []
    rows: list[list[str] | Unavailable] = []
    for r in results:
        if not r.ok:
            rows.append(Unavailable([r.dataset, r.reader], r.error[:60] or "no runs"))
            continue
        cells = [fmt(versus(results, r, o)) for o in ("dask", "zarrs", "encode-only")]
        rows.append([r.dataset, r.reader, f"{r.median_s:.3f}", f"{r.gbps:.3f}", *cells]
                    + ([fmt(versus_baseline(results, r))] if baseline else []))
    print()
    print_table(columns, rows, "GB/s: decimal, of the array's bytes; x dask, x zarrs, x ceil "
                "(encode-only): GB/s over theirs in the same layout"
                + ("\n" + BASELINE_LEGEND if baseline else ""))


def done_when(results: list[Result]) -> list[Check]:
    def check(text: str, layout: str, other: str, target: float) -> Check:
        r = lookup(results, "dask_lsio", layout)
        return Check(text, versus(results, r, other) if r else None, target)

    return [
        check("A (unsharded blosc-lz4) dask_lsio / dask.array.to_zarr", "A", "dask", 3),
        check("A (unsharded blosc-lz4) dask_lsio / zarrs", "A", "zarrs", 2),
        check("B (sharded zstd) dask_lsio / dask.array.to_zarr", "B", "dask", 2),
    ]


def json_rows(results: list[Result], baseline: bool) -> list[dict]:
    """Every timed run, the medians, the ratios and what was checked, for the JSON file."""
    rows = []
    for r in results:
        row = {"layout": r.dataset, "writer": r.reader, "seconds": [x.seconds for x in r.runs],
               "bytes": r.runs[0].nbytes if r.runs else 0,
               "median_s": r.median_s if r.ok else None, "gb_per_s": r.gbps if r.ok else None,
               "error": r.error, "verified": r.verified, "x_dask": versus(results, r, "dask"),
               "x_zarrs": versus(results, r, "zarrs"),
               "x_ceiling": versus(results, r, "encode-only")}
        rows.append(row | ({"ratio_baseline": versus_baseline(results, r)} if baseline else {}))
    return rows


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(__doc__, "write", quick="128 x 512 x 512, 2 repeats",
                   tiny="16 x 512 x 512, 1 repeat")
    p.add_argument("--only", default="A,B", help="layouts, e.g. A or A,B")
    p.add_argument("--writers", default=",".join(WRITERS), help="comma-separated writers")
    p.add_argument("--durable", action="store_true", help="os.sync() inside each timed run")
    p.add_argument("--keep", action="store_true", help="keep the written arrays")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the arrays are written (default: DATA_DIR/write-out)")
    args = cli.parse(p, argv)
    args.only = cli.name_list(p, args.only, LAYOUTS, "--only")
    args.writers = cli.name_list(p, args.writers, WRITERS, "--writers")
    args.out_dir = args.out_dir or args.data_dir / "write-out"
    return args


def start_workers(writers: list[str], baseline: Side | None) -> dict[str, Worker]:
    """A worker per baseline twin (the other writers run in this process)."""
    workers = {label: Worker(SCRIPT, split_reader(label)[0], baseline)
               for label in writers if split_reader(label)[1]}
    start_all(list(workers.values()))
    return workers


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return serve(lambda: worker_setup(args.worker))
    started = time.perf_counter()
    warnings.filterwarnings("ignore", category=FutureWarning)
    skipped: dict[str, str] = {}
    baseline = resolve_baseline(args.baseline) if args.baseline else None
    writers = with_twins(installed(args.writers, skipped), TWINNED, baseline)
    data = make_data(STEPS[args.size])
    print(f"writing {data.shape} float32 ({data.nbytes / 2**20:.0f} MiB), "
          f"{args.repeats} repeats, writers {writers}", flush=True)
    workers = start_workers(writers, baseline)
    results: list[Result] = []
    try:
        for name in args.only:
            results += run_layout(LAYOUTS[name], data, writers, workers, args)
    finally:
        for w in workers.values():
            w.close()
    print_results(results, baseline is not None)
    meta = run_meta(args, skipped) | {"versions": versions(), "shape": list(data.shape),
                                      "block": BLOCK, "chunk": CHUNK, "shard": SHARD}
    meta |= report_sides(baseline)
    finish(args, meta, json_rows(results, baseline is not None), done_when(results), started)


if __name__ == "__main__":
    main()
