#!/usr/bin/env python
"""Rechunk benchmark of dask-lsio: "one map per time step" into "one timeseries per pixel".

Source: the read benchmark's float32 field (``harness.zarr_data.make_slab``: a smooth pattern
plus noise, to 0.01), 1024 x 512 x 512 (1 GiB) in chunks 1 x 512 x 512 (1,024 chunk files
of ~0.6 MB), blosc-lz4 (``BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")``), Zarr v3,
and a Zarr v2 copy of it (the same values and codec) for rechunker; generated once with
zarr-python into ``--data-dir`` and reused. ``max_mem`` 256 MiB. Two targets, Zarr v3,
blosc-lz4 as the source:

``chunks``   chunks 1024 x 16 x 16 (1,024 chunk files of 1 MiB decoded), unsharded;
``sharded``  shards 1024 x 64 x 64 (64 shard files of 16 MiB decoded) of inner chunks
             1024 x 16 x 16: every shard spans all of time, and a shard is the write unit.
             (Shards of 1024 x 128 x 128, 64 MiB, do not fit: at 256 MiB for 2 threads
             each thread would hold a 64 MiB unit, its encoded copy and its source reads.)

``--quick``: 256 x 512 x 512 (256 MiB), targets 256 x 16 x 16 (shards 256 x 64 x 64),
``max_mem`` 64 MiB, 2 repeats. ``--tiny`` (the test suite): 16 x 128 x 128 in chunks
1 x 128 x 128, targets 16 x 16 x 16 (shards 16 x 32 x 32), ``max_mem`` 2 MiB, 1 repeat.

Readers (``rechunk_peers.py``), each writing a new target (and temporary array) per run:

``dask_lsio``   ``dask_lsio.rechunk(src, chunks, dst, max_mem, temp=dst + "-temp",
                shards=...).execute()``: threaded scheduler, defaults, ``lsio.strict`` on
                (no silent fallback to zarr-python); its plan's repr is printed once per
                target
``dask-tasks``  ``dask.array.from_zarr(src).rechunk(blocks, method="tasks")`` then
                ``dask.array.to_zarr(..., chunks=, [shards=,] compressors=blosc-lz4)`` on the
                threaded scheduler; ``blocks`` are the target chunks, or the shards for the
                sharded target (dask's to_zarr loses data when blocks are smaller than shards)
``dask-p2p``    the same with ``method="p2p"`` on ``distributed.LocalCluster(n_workers=2,
                threads_per_worker=1, processes=True, memory_limit=0)`` (no memory limit: the
                nanny never restarts a worker), started before the clock; its peak RSS is the
                largest of the two worker processes', the client's (which also runs the
                scheduler) printed beside it
``rechunker``   ``rechunker.rechunk(zarr2_array, chunks, max_mem, dst,
                target_options={"compressor": Blosc(lz4)}, temp_store=...).execute()`` on the
                v2 source, threaded scheduler, in a side virtual environment (rechunker 0.5.4
                needs zarr<3: ``rechunker_run.py``), created on demand under
                ``~/.cache/dask-lsio-bench/rechunker-0.5.4`` by ``python -m venv`` and pip
                (``--tiny`` never creates it: the row is skipped with a note if it is not
                there). It writes Zarr v2 only: the sharded target has no rechunker row. Its
                ``max_mem`` bounds one task's chunks, not the process (ours: the process)
``ceiling``     the IO floor, no decode, regrouping or encode: every source chunk file read
                (``dask_lsio.get_engine().read_ranges`` in batches of 32 files, one read
                each, buffers recycled, bytes dropped: faster than one batch of all or a
                plain ``readinto`` loop, warm and cold), then every object of the target as
                zarr-python writes it (written before the clock, held in memory) written in
                one engine batch, each to a temporary name renamed into place, as dask_lsio
                writes

Every run is a fresh worker process (``harness.workers.run_once``), so its memory is its own.
Before the clock it imports its library and prepares: a trivial compute on the threaded
scheduler (its pool and lazy imports: ~0.2 s the first time in a process), dask_lsio's
engine, the cluster, the ceiling's objects; it writes and frees ``max_mem`` plus twice
the array's bytes of memory (``rechunk_runs.touch_bytes``, the same for every reader: its
writes fill the page cache with memory this VM's host still backs, not memory the host
took back, whose first write costs ~1.2-2.6 s per GiB), drops the page cache for a
cold run (root only), resets its RSS high-water mark (``/proc/self/clear_refs``) and reads
``VmRSS``. The clock runs from opening the source (planning included) to the end of the
writes; ``VmHWM`` is read after it. "peak MiB" is that high-water mark (max over the runs),
"+MiB" its growth over the RSS before the run: what the run itself held. Our memory check:
that growth <= ``max_mem`` + the overhead the library documents
(``dask_lsio.graph.rechunk.MEMORY_OVERHEAD``, bytes, "above a process's RSS after imports";
256 MiB, said so, where that name does not exist).

Warm runs pre-read the source; cold runs drop the page cache (``sync; echo 3 >
/proc/sys/vm/drop_caches``) just before the clock. Every run starts after ``sync``, written
data stays in the page cache (as for a user). Readers take turns in every repeat, the order
rotating. Each reader's first run is read back in full with zarr-python and compared with
the source as zarr-python reads it (the oracle), layout (shape, chunks, shards) included;
its later runs on 6 random 20 x 20-pixel timeseries; the ceiling must also move exactly the
stored bytes. Outputs are deleted after their check (a run writes ~1,000 files: ext4's slow
file creation after mass deletes, see ``bench_write.py``, stays small). GB/s are decimal, of
the array's bytes; "x dask" compares with the better of dask-tasks and dask-p2p, "x rechunker"
and "x ceil" with those rows, all in the same target and cache state.

With ``--baseline OTHER``, ``dask_lsio@baseline`` runs the same with the other dask_lsio, in
turns with the others; "x baseline" compares with it.

Run (from the repository root, with dask-lsio and the ``bench`` extra installed)::

    python benchmarks/bench_rechunk.py              # full: 5 repeats, warm and cold
    python benchmarks/bench_rechunk.py --quick      # 256 x 512 x 512, 2 repeats
    python benchmarks/bench_rechunk.py --quick --only chunks --readers dask_lsio,ceiling

Raw timings, every run's reply, the plans and versions go to ``--json`` (default
``bench-results/bench_rechunk.json``), a chart beside it. The last lines print the issue's
"done when" checks.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings
from pathlib import Path

from harness import args as cli
from harness.report import (BASELINE_COLUMN, BASELINE_LEGEND, Check, Column, Unavailable,
                            finish, fmt, print_table, rel, run_meta)
from harness.results import Result, find, lookup, ratio, versus_baseline
from harness.sides import report_sides, resolve_baseline, with_twins
from harness.workers import answer_once
from rechunk_peers import rechunker_python, run_task
from rechunk_runs import (MiB, SIZES, Oracle, Plan, dims, prepare_source, run_variant, size_meta,
                          versions)

SCRIPT = Path(__file__).resolve()
READERS = ["dask_lsio", "dask-tasks", "dask-p2p", "rechunker", "ceiling"]
VARIANTS = ["chunks", "sharded"]
DASK = ("dask-tasks", "dask-p2p")
TWINNED = {"dask_lsio"}
DEFAULT_OVERHEAD = 256 * MiB


def memory_overhead() -> tuple[int, str]:
    """The fixed overhead our memory bound allows above max_mem, and where it comes from."""
    try:
        from dask_lsio.graph.rechunk import MEMORY_OVERHEAD

        return int(MEMORY_OVERHEAD), "dask_lsio.graph.rechunk.MEMORY_OVERHEAD"
    except (ImportError, AttributeError, TypeError, ValueError):
        return DEFAULT_OVERHEAD, ("256 MiB assumed: dask_lsio.graph.rechunk.MEMORY_OVERHEAD "
                                  "does not exist")


# -- report --------------------------------------------------------------------------------


def growth(r: Result) -> int | None:
    """The largest growth of a run's RSS high-water mark over its RSS before the run."""
    got = [x.rss_peak - x.rss_before for x in r.runs
           if x.rss_peak is not None and x.rss_before is not None]
    return max(got) if got else None


def best_dask(results: list[Result], r: Result) -> Result | None:
    found = [x for x in (find(results, r, d) for d in DASK) if x is not None]
    return max(found, key=lambda x: x.gbps) if found else None


def ratios(results: list[Result], r: Result) -> dict[str, float | None]:
    return {"dask": ratio(r, best_dask(results, r)),
            "rechunker": ratio(r, find(results, r, "rechunker")),
            "ceil": ratio(r, find(results, r, "ceiling")),
            "baseline": versus_baseline(results, r)}


def mib(x: int | None) -> str:
    return "-" if x is None else f"{x / MiB:,.0f}"


def print_results(results: list[Result], baseline: bool) -> None:
    width = max([10] + [len(r.reader) for r in results])
    columns = [Column("target", 7, "<"), Column("cache", 5, "<"), Column("reader", width, "<"),
               Column("median s", 9), Column("GB/s", 7), Column("peak MiB", 9),
               Column("+MiB", 6), Column("x dask", 7), Column("x rechunker", 11),
               Column("x ceil", 7)] + ([BASELINE_COLUMN] if baseline else [])
    rows: list[list[str] | Unavailable] = []
    for r in results:
        lead = [r.dataset, r.cache, r.reader]
        if not r.ok:
            rows.append(Unavailable(lead, r.error or "no runs"))
            continue
        x = ratios(results, r)
        rows.append(lead + [f"{r.median_s:.3f}", f"{r.gbps:.3f}", mib(r.peak_rss),
                            mib(growth(r)), fmt(x["dask"]), fmt(x["rechunker"]),
                            fmt(x["ceil"])] + ([fmt(x["baseline"])] if baseline else []))
    legend = ("GB/s: decimal, of the array's bytes; peak MiB: the process's RSS high-water mark "
              "during a run (dask-p2p: its largest worker's), +MiB: its growth over the RSS "
              "before the run (max over runs); x dask: GB/s over the better of dask-tasks and "
              "dask-p2p; x rechunker, x ceil: over those rows (same target and cache state)")
    print()
    print_table(columns, rows, legend + ("\n" + BASELINE_LEGEND if baseline else ""))


def print_notes(results: list[Result], replies: dict) -> dict:
    """The plan of dask_lsio (once per target), the p2p client's memory, the targets' codecs;
    returned for the JSON file too."""
    plans = {}
    for (variant, _, label), runs in replies.items():
        if label == "dask_lsio" and variant not in plans:
            plan = next((x["plan"] for x in runs if x.get("plan")), None)
            if plan:
                plans[variant] = plan
                print(f"\ndask_lsio's plan for the {variant} target:\n{plan}")
    for (variant, state, label), runs in replies.items():
        clients = [x["client_peak"] for x in runs if "client_peak" in x]
        if clients:
            print(f"{variant} {state} {label}: client process (client and scheduler) peak "
                  f"{max(clients) / MiB:,.0f} MiB")
    for key in dict.fromkeys((r.dataset, r.reader, r.note) for r in results if r.note):
        print(f"{key[0]} {key[1]}: target {key[2]}")
    return plans


def done_when(results: list[Result], variants: list[str], states: list[str], bound: int,
              overhead_from: str) -> list[Check]:
    """The issue's checks, per target and cache state; memory per target over both states."""
    checks = []
    for v in variants:
        for s in states:
            ours = lookup(results, "dask_lsio", v, s)
            if ours is None:
                ours = Result(v, s)  # no runs: every check of it is "not measured"
            best = best_dask(results, ours) if ours.ok else None
            checks.append(Check(f"{v} {s}: dask_lsio / dask rechunk+to_zarr (better of tasks, "
                                "p2p)", ratio(ours, best), 3,
                                f"better: {best.reader}" if best else ""))
            if v == "chunks":
                checks.append(Check(f"{v} {s}: dask_lsio / rechunker",
                                    ratio(ours, lookup(results, "rechunker", v, s)), 2))
            checks.append(Check(f"{v} {s}: dask_lsio / ceiling",
                                ratio(ours, lookup(results, "ceiling", v, s)), 0.5))
        grown = [g for s in states if (r := lookup(results, "dask_lsio", v, s))
                 and (g := growth(r)) is not None]
        worst = max(grown) if grown else None
        checks.append(Check(f"{v}: dask_lsio peak RSS growth within max_mem + overhead "
                            "(bound / growth)", rel(bound, worst), 1,
                            f"growth {mib(worst)} MiB, bound {mib(bound)} MiB; overhead: "
                            f"{overhead_from}"))
    return checks


def json_rows(results: list[Result], replies: dict, baseline: bool) -> list[dict]:
    rows = []
    for r in results:
        row = {"layout": r.dataset, "cache": r.cache, "reader": r.reader,
               "verified": r.verified, "note": r.note,
               "runs": replies.get((r.dataset, r.cache, r.reader), []),
               "seconds": [x.seconds for x in r.runs]}
        if not r.ok:
            rows.append(row | {"error": r.error or "no runs"})
            continue
        x = ratios(results, r)
        row |= {"bytes": r.runs[0].nbytes, "median_s": r.median_s, "gb_per_s": r.gbps,
                "peak_rss": r.peak_rss, "rss_growth": growth(r), "x_dask_best": x["dask"],
                "x_rechunker": x["rechunker"], "x_ceiling": x["ceil"]}
        rows.append(row | ({"ratio_baseline": x["baseline"]} if baseline else {}))
    return rows


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(__doc__, "rechunk", quick="256 x 512 x 512, max_mem 64 MiB, 2 repeats",
                   tiny="16 x 128 x 128, max_mem 2 MiB, 1 repeat")
    p.add_argument("--only", default=",".join(VARIANTS), help="targets: chunks, sharded")
    p.add_argument("--readers", default=",".join(READERS), help="comma-separated subset")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the targets are written (default: DATA_DIR/rechunk-out)")
    args = cli.parse(p, argv)
    args.only = cli.name_list(p, args.only, VARIANTS, "--only")
    args.readers = cli.name_list(p, args.readers, READERS, "--readers")
    args.out_dir = args.out_dir or args.data_dir / "rechunk-out"
    return args


def available(args: argparse.Namespace, skipped: dict[str, str]) -> tuple[list[str], str | None]:
    """The readers that can run here (the others noted), and rechunker's Python."""
    why = {}
    if "dask-p2p" in args.readers and importlib.util.find_spec("distributed") is None:
        why["dask-p2p"] = "distributed is not installed (pip install distributed)"
    python = None
    if "rechunker" in args.readers:
        python, note = rechunker_python(create=args.size != "tiny")
        if python is None:
            why["rechunker"] = note
    for name, text in why.items():
        print(f"note: {name}: {text}: its rows are skipped")
        skipped[name] = text
    return [r for r in args.readers if r not in why], python


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return answer_once(args.worker, run_task)
    started = time.perf_counter()
    warnings.filterwarnings("ignore", category=FutureWarning)
    skipped: dict[str, str] = {}
    readers, rechunker = available(args, skipped)
    baseline = resolve_baseline(args.baseline) if args.baseline else None
    readers = with_twins(readers, TWINNED, baseline)
    size = SIZES[args.size]
    overhead, overhead_from = memory_overhead()
    states = cli.cache_states(args)
    src = prepare_source(size, args.data_dir)
    print(f"source {dims(size.shape)} float32 ({size.nbytes / MiB:,.0f} MiB), chunks "
          f"{dims(size.source_chunks)}, blosc-lz4, {len(src.paths):,} files "
          f"({src.stored / 1e6:,.0f} MB); targets: chunks {dims(size.target_chunks)}, sharded "
          f"{dims(size.shards)}; max_mem {size.max_mem / MiB:,.0f} MiB; memory bound of ours "
          f"max_mem + {overhead / MiB:,.0f} MiB ({overhead_from}); {args.repeats} repeats, "
          f"readers {readers}", flush=True)
    oracle = Oracle(src)
    results: list[Result] = []
    replies: dict = {}
    for variant in args.only:
        who = [r for r in readers if not (variant == "sharded" and r == "rechunker")]
        if variant == "sharded" and "rechunker" in readers:
            print("note: rechunker writes Zarr v2 only: no rechunker row for the sharded target")
        plan = Plan(variant, size, src, who, states, args.repeats, args.out_dir, SCRIPT,
                    baseline, rechunker)
        results += run_variant(plan, oracle, replies)
    print_results(results, baseline is not None)
    plans = print_notes(results, replies)
    meta = run_meta(args, skipped) | {
        "versions": versions(), "size": size_meta(size, src), "plans": plans,
        "memory_overhead": overhead, "memory_overhead_from": overhead_from,
        "rechunker_python": rechunker,
        "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True, "
                   "memory_limit=0)"}
    meta |= report_sides(baseline)
    checks = done_when(results, args.only, states, size.max_mem + overhead, overhead_from)
    finish(args, meta, json_rows(results, replies, baseline is not None), checks, started)


if __name__ == "__main__":
    main()
