#!/usr/bin/env python
"""Training-loader benchmark of dask-lsio: random-crop batches and ordered streaming.

Dataset (A) of the read benchmark (``bench_read.py``: 1024 x 512 x 512 float32, chunks
1x128x128 blosc-lz4, 16,384 files; ``--quick``: 128 steps; ``--tiny``: 16), generated
once (``harness/zarr_data.py``) and reused.

``crops``   batches of 32 crops of 8 x 64 x 64 at the same random locations for every reader
            (``dask_lsio.RandomCrops(...).locations``, seed 0), ``--batches`` of them (60;
            quick 10; tiny 2), after three untimed batches at other locations (every reader's
            threads and buffers exist by then; one for dask):

            ``dask_lsio``    ``dask_lsio.RandomCrops(path, (8, 64, 64), 32)``, prefetch 3
            ``zarr``         zarr-python's default pipeline, ``z[t:t+8, y:y+64, x:x+64]`` per
                             crop, one after the other, stacked per batch
            ``zarrs``        the same loop with ``zarrs.ZarrsCodecPipeline`` (strict)
            ``tensorstore``  all crops of a batch issued at once (futures), then stacked
                             (zarrs and tensorstore: skipped, with a note, if not installed)
            ``dask``         ``dask.array.from_zarr(path)`` sliced per crop, one
                             ``da.stack(...).compute()`` per batch (threaded scheduler);
                             a sixtieth of the batches (each takes ~20 s), so its sum
                             is not compared

            Reported: crops/s, GB/s delivered (the crops' bytes), and decoded bytes per
            delivered byte: dask_lsio's as it counted them (``lsio-decoded``: distinct
            chunks per batch, of which a chunk one crop needs is decoded only as far as
            the crop needs it), the others' as the chunks they decode (distinct chunks per
            batch for dask, the chunks of every crop for the per-crop readers).
``two``     dask_lsio with two sources at once: A as a satellite (5-minute steps, 1 km grid,
            crops 8 x 64 x 64) and an NWP-like array generated here (hourly, 2 km grid over
            the same area, 86 x 256 x 256 float32, 1x64x64 zstd chunks, crops 2 x 32 x 32),
            both opened with ``dask_lsio.open_zarr`` and aligned by their coordinates;
            examples/s against the single-source rate of the same run.
``boxes``   many small selections ``a[t, y:y+64, x:x+64]`` at once (4,096 at random places;
            quick 1,024, tiny 64): ``dask_lsio.read_boxes(z, starts, (1, 64, 64))`` (one
            call) against tensorstore (every read issued, then every result awaited)
``box``     the same selections one at a time (the first 512; quick 256, tiny 16), as a
            user loops: ``dask_lsio.read_boxes`` of one box per call, zarr-python's
            ``z[sel]`` with dask_lsio's codec pipeline (``lsio-pipeline``) and its default
            one (``zarr``), tensorstore's ``t[sel].read().result()``, and
            ``dask_lsio.from_zarr(path)[sel].compute()`` (``dask``). Readers open the array
            before the clock and read 16 untimed boxes elsewhere first. The front ends' own
            cost per selection, with no IO and no codec (A's values in memory): zarr-python
            over a ``MemoryStore`` of A's chunks stored raw (``zarr-memory``) and
            ``dask.array.from_array`` of a numpy array in dask_lsio's blocks
            (``dask-memory``), the ceilings of ``lsio-pipeline`` and ``dask``.
``stream``  the whole of A along time, each block summed as it arrives (float32 sums, as
            the read benchmark's scan):
            ``dask_lsio.iter_blocks(path)`` (ordered, prefetch 4); a loop over ``z[t]``
            with zarr-python's default pipeline; and the read benchmark's full scan
            ``dask_lsio.from_zarr(path).sum()`` as the reference. The dask_lsio readers
            make one untimed pass first (a warm process, like bench_read's workers).

Every reader runs in a fresh process per run (``--worker``, ``crops_tasks.py``), readers
taking turns within each repeat; the crops' float64 sum is checked to agree between readers,
the stream sums against the data's. Warm runs pre-read the dataset; cold runs (root only)
drop the page cache before each run. Medians over ``--repeats`` (5; quick 2).

With ``--baseline OTHER`` the dask_lsio readers (crops and two: dask_lsio; stream:
iter_blocks, scan) also run with the other dask_lsio, as ``NAME@baseline``, in turns with
the others; "x baseline" compares with them.

    python benchmarks/bench_crops.py              # full
    python benchmarks/bench_crops.py --quick      # 128 steps, fewer batches
    python benchmarks/bench_crops.py --quick --parts crops --baseline ../baseline
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from harness import args as cli
from harness.cache import drop_caches, preread_files
from harness.peers import installed
from harness.report import (BASELINE_COLUMN, BASELINE_LEGEND, CORES_COLUMN, CORES_LEGEND,
                            Check, Column, Unavailable, finish, fmt, fmt_cores, print_table,
                            rel, run_meta)
from harness.results import Result, Run, check_values, lookup, versus_baseline
from harness.sides import CURRENT, Side, report_sides, resolve_baseline, split_reader, with_twins
from harness.workers import run_once
from harness.zarr_data import CHUNK, STEPS, Dataset, make_specs, prepare_datasets, xarray_view
from crops_tasks import BATCH, BOX, CROP, NWP_CROP, locations, run_task

SCRIPT = Path(__file__).resolve()
CROP_READERS = ["dask_lsio", "zarr", "zarrs", "tensorstore", "dask"]
STREAM_READERS = ["iter_blocks", "zarr-loop", "scan"]
TWINNED = {"dask_lsio", "iter_blocks", "scan"}  # the readers that are dask_lsio
BOX_READERS = {"boxes": ["dask_lsio", "tensorstore"],
               "box": ["dask_lsio", "lsio-pipeline", "zarr", "tensorstore", "dask",
                       "zarr-memory", "dask-memory"]}
PARTS = ["crops", "two", "boxes", "box", "stream"]
BATCHES = {"full": 60, "quick": 10, "tiny": 2}  # timed batches per run, per size
BOXES = {"full": (4096, 512), "quick": (1024, 256), "tiny": (64, 16)}  # (at once, one by one)
NWP_STEP = 12  # satellite steps per NWP step (5 minutes -> 1 hour)
UNITS = {"crops": "crops", "two": "examples", "boxes": "boxes", "box": "boxes",
         "stream": "bytes"}  # what a row counts


# -- data --------------------------------------------------------------------------------


def nwp_dataset(data_dir: Path, sat_shape: tuple[int, int, int]) -> Path:
    """The NWP-like array: hourly, on a 2 km grid over the satellite's 1 km area."""
    import xarray as xr
    from zarr.codecs import ZstdCodec

    steps = math.ceil(sat_shape[0] / NWP_STEP) + 1
    root = data_dir / f"crops-nwp-{steps}"
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(1)
    shape = (steps, sat_shape[1] // 2, sat_shape[2] // 2)
    values = (280 + rng.standard_normal(shape, dtype=np.float32)).round(2)
    ds = xr.Dataset({"v": (("time", "y", "x"), values)}, coords=coords(shape, 60, 2.0))
    ds.to_zarr(root, mode="w", consolidated=False, zarr_format=3,
               encoding={"v": {"chunks": (1, 64, 64), "compressors": ZstdCodec(level=3)}})
    (root / "done").write_text("")
    return root


def coords(shape: tuple[int, int, int], minutes: int, km: float) -> dict:
    """Time (every ``minutes`` from 2024-06-01), y and x (every ``km``) coordinates."""
    t0 = np.datetime64("2024-06-01T00:00")
    return {"time": t0 + np.arange(shape[0]) * np.timedelta64(minutes, "m"),
            "y": np.arange(shape[1]) * km, "x": np.arange(shape[2]) * km}


def satellite_view(ds: Dataset, data_dir: Path) -> Path:
    """A's xarray view with 5-minute times and a 1 km grid as coordinates."""
    import zarr

    view = xarray_view(ds.root, data_dir / f"crops-sat-{ds.spec.shape[0]}")
    group = zarr.open_group(str(view), mode="r+")
    c = coords(ds.spec.shape, 5, 1.0)
    minutes = (c["time"] - c["time"][0]) // np.timedelta64(1, "m")
    group["time"].attrs.update({"units": "minutes since 2024-06-01"})
    group["time"][:] = minutes.astype("int64")
    for dim in ("y", "x"):
        a = group.create_array(dim, shape=(len(c[dim]),), dtype="float64",
                               dimension_names=[dim])
        a[:] = c[dim]
    return view


def decoded_per_delivered(starts: list[np.ndarray], dedupe: bool) -> float:
    """Decoded chunk bytes per delivered byte over ``starts``' batches (chunks 1x128x128)."""
    chunk = np.array(CHUNK)
    decoded = 0
    for batch in starts:
        cells = []
        for s in batch:
            lo, hi = s // chunk, (s + np.array(CROP) - 1) // chunk
            grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)],
                                        indexing="ij"), -1).reshape(-1, 3)
            cells.append(grid)
        cells = np.concatenate(cells)
        decoded += len(np.unique(cells, axis=0)) if dedupe else len(cells)
    delivered = len(starts) * BATCH * math.prod(CROP)
    return decoded * math.prod(CHUNK) / delivered


def measured_decoded(outs: dict[tuple[str, str], list[dict]]) -> dict[str, float]:
    """dask_lsio's decoded bytes per delivered byte (each side's), as its warm runs counted
    them (``lsio-decoded``)."""
    amp = {}
    for (state, reader), runs in outs.items():
        ok = [o for o in runs if "decoded" in o]
        if state == "warm" and ok:
            delivered = ok[0]["work"] * math.prod(CROP) * 4
            amp[reader] = float(np.median([o["decoded"] for o in ok])) / delivered
    return amp


# -- running -----------------------------------------------------------------------------


def timed(kind: str, readers: list[str], args: argparse.Namespace, states: list[str],
          base: dict, ds: Dataset, baseline: Side | None) -> dict[tuple[str, str], list[dict]]:
    """Every reader of ``kind`` ``--repeats`` times per cache state, in turns, each run in a
    fresh process (of the baseline's Python for a ``NAME@baseline`` twin)."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for state in states:
        for rep in range(args.repeats):
            for label in readers:
                if state == "warm":
                    preread_files(ds.paths)
                else:
                    drop_caches()
                name, side = split_reader(label)
                out = run_once(SCRIPT, base | {"kind": kind, "reader": name},
                               baseline if side else CURRENT)
                runs.setdefault((state, label), []).append(out)
                shown = out.get("error") or f"{out['seconds']:.3f} s"
                print(f"  {kind} {state} {label} run {rep + 1}: {shown}", flush=True)
            readers = readers[1:] + readers[:1]
    return runs


def summarise(outs: dict[tuple[str, str], list[dict]], kind: str, work: int,
              bytes_per_unit: int) -> list[Result]:
    """One row per (cache, reader): its runs (``work`` units each, ``bytes_per_unit`` bytes
    per unit delivered); ``value``: their sum, when they did the same work as the others."""
    rows = []
    for (state, reader), runs in outs.items():
        r = Result(cache=state, workload=kind, reader=reader)
        failed = [o["error"] for o in runs if "error" in o]
        if failed:
            r.error = failed[0]
        elif not all(math.isclose(o["sum"], runs[0]["sum"], rel_tol=1e-9) for o in runs):
            r.error = "wrong result: the runs' sums differ"
        else:
            r.runs = [Run(o["seconds"], o["work"] * bytes_per_unit, count=o["work"],
                          cpu_busy=o.get("cpu_busy"), cpu_kernel=o.get("cpu_kernel"))
                      for o in runs]
            if runs[0]["work"] == work:  # the same crops as the others: comparable sums
                r.value = runs[0]["sum"]
            else:
                r.verified = "its runs' sums agree (fewer batches: not compared)"
        rows.append(r)
    return rows


# -- reporting ---------------------------------------------------------------------------


def print_results(results: list[Result], amp: dict[str, float], baseline: bool) -> None:
    width = max([12] + [len(r.reader) for r in results])
    columns = ([Column("work", 7, "<"), Column("cache", 5, "<"), Column("reader", width, "<"),
                Column("median s", 9), Column("crops/s", 9), Column("GB/s", 7),
                Column("decoded/delivered", 18), CORES_COLUMN]
               + ([BASELINE_COLUMN] if baseline else []))
    rows: list[list[str] | Unavailable] = []
    for r in results:
        lead = [r.workload, r.cache, r.reader]
        if not r.ok:
            rows.append(Unavailable(lead, r.error or "no runs"))
            continue
        per_s = "-" if r.workload == "stream" else f"{r.per_s:,.0f}"  # crops, boxes ...
        ratio = amp.get(r.reader) if r.workload == "crops" else None
        rows.append(lead + [f"{r.median_s:.3f}", per_s, f"{r.gbps:.3f}", fmt(ratio),
                            fmt_cores(r.cores)]
                    + ([fmt(versus_baseline(results, r))] if baseline else []))
    legend = ("crops/s: examples/s for 'two' (each example is a satellite and an NWP crop; GB/s "
              "there counts the satellite crops only), boxes/s for 'boxes' and 'box'; GB/s "
              "decimal, of delivered crops (stream: of the array); " + CORES_LEGEND)
    print()
    print_table(columns, rows, legend + ("\n" + BASELINE_LEGEND if baseline else ""))


def done_when(results: list[Result]) -> list[Check]:
    def rate(kind: str, reader: str) -> float | None:
        r = lookup(results, reader, cache="warm", workload=kind)
        return r.per_s if r else None

    ours = rate("crops", "dask_lsio")
    return [
        Check("warm crops: dask_lsio / tensorstore (all crops of a batch at once)",
              rel(ours, rate("crops", "tensorstore")), 1.5),
        Check("warm boxes at once: dask_lsio.read_boxes / tensorstore",
              rel(rate("boxes", "dask_lsio"), rate("boxes", "tensorstore")), 1.5),
        Check("warm boxes one at a time: zarr-python with dask_lsio's pipeline / tensorstore",
              rel(rate("box", "lsio-pipeline"), rate("box", "tensorstore")), 1.0),
        Check("warm boxes one at a time: dask_lsio.from_zarr(...)[sel].compute() per second",
              rate("box", "dask"), 1000),
        Check("warm crops: dask_lsio / zarr-python loop", rel(ours, rate("crops", "zarr")), 15),
        Check("warm two sources: examples/s / single-source crops/s",
              rel(rate("two", "dask_lsio"), ours), 0.5),
        Check("warm ordered streaming: iter_blocks / full scan",
              rel(rate("stream", "iter_blocks"), rate("stream", "scan")), 0.8),
    ]


def json_rows(results: list[Result], outs: dict, baseline: bool) -> list[dict]:
    """Each row's runs as its workers reported them, its medians and what was checked."""
    rows = []
    for r in results:
        row = {"kind": r.workload, "cache": r.cache, "reader": r.reader, "verified": r.verified,
               "runs": outs[r.workload][(r.cache, r.reader)]}
        if not r.ok:
            rows.append(row | {"error": r.error or "no runs"})
            continue
        row |= {"median_s": r.median_s, f"{UNITS[r.workload]}_per_s": r.per_s,
                "work": r.runs[0].count}
        if r.value is not None:
            row["sum"] = r.value
        rows.append(row | ({"ratio_baseline": versus_baseline(results, r)} if baseline else {}))
    return rows


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(__doc__, "crops", quick="128 steps, 10 batches, 2 repeats",
                   tiny="16 steps, 2 batches, 1 repeat")
    p.add_argument("--batches", type=int, default=None, help="timed batches per run (60)")
    p.add_argument("--readers", default=",".join(CROP_READERS), help="crops readers")
    p.add_argument("--parts", default=",".join(PARTS), help="which workloads to run")
    args = cli.parse(p, argv)
    args.batches = args.batches or BATCHES[args.size]
    args.readers = cli.name_list(p, args.readers, CROP_READERS, "--readers")
    args.parts = cli.name_list(p, args.parts, PARTS, "--parts")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_task(json.loads(args.worker))))
        return
    started = time.perf_counter()
    skipped: dict[str, str] = {}
    readers = installed(args.readers, skipped)
    baseline = resolve_baseline(args.baseline) if args.baseline else None
    ds, = prepare_datasets([make_specs(STEPS[args.size])["A"]], args.data_dir)
    path = str(ds.root)
    states = cli.cache_states(args)
    base = {"path": path, "batches": args.batches}
    crop_bytes = math.prod(CROP) * 4
    results: list[Result] = []
    outs: dict[str, dict] = {}
    amp: dict[str, float] = {}
    if "crops" in args.parts:
        labels = with_twins(readers, TWINNED, baseline)
        outs["crops"] = timed("crops", labels, args, states, base, ds, baseline)
        rows = summarise(outs["crops"], "crops", args.batches * BATCH, crop_bytes)
        check_values(rows, None, 1e-6, "the crops' sum agrees with the other readers'")
        results += rows
        starts = locations(path, args.batches, 0)
        amp = {r: decoded_per_delivered(starts, dedupe=split_reader(r)[0] in ("dask_lsio", "dask"))
               for r in labels}
        amp |= measured_decoded(outs["crops"])
    if "two" in args.parts:
        view = satellite_view(ds, args.data_dir)
        nwp = nwp_dataset(args.data_dir, ds.spec.shape)
        task = base | {"view": str(view), "nwp": str(nwp)}
        outs["two"] = timed("two", with_twins(["dask_lsio"], TWINNED, baseline), args, ["warm"],
                            task, ds, baseline)
        rows = summarise(outs["two"], "two", args.batches * BATCH, crop_bytes)
        check_values(rows, None, 1e-6,
                     "the examples' sum: the same in every run (and with the baseline)")
        results += rows
    for kind in ("boxes", "box"):
        if kind in args.parts:
            n = BOXES[args.size][kind == "box"]
            outs[kind] = timed(kind, with_twins(installed(BOX_READERS[kind], skipped),
                                                TWINNED, baseline),
                               args, ["warm"], base | {"boxes": n}, ds, baseline)
            rows = summarise(outs[kind], kind, n, math.prod(BOX) * 4)
            check_values(rows, None, 1e-9, "the boxes' sum agrees with the other readers'")
            results += rows
    if "stream" in args.parts:
        outs["stream"] = timed("stream", with_twins(STREAM_READERS, TWINNED, baseline), args,
                               ["warm"], base, ds, baseline)
        rows = summarise(outs["stream"], "stream", ds.spec.nbytes, 1)
        # float32 sums, as bench_read
        check_values(rows, ds.total_sum, 1e-4, "the sum against the data's")
        results += rows
    print_results(results, amp, baseline is not None)
    meta = run_meta(args, skipped) | {"crop": CROP, "batch": BATCH, "nwp_crop": NWP_CROP,
                                      "decoded_per_delivered": amp}
    meta |= report_sides(baseline)
    finish(args, meta, json_rows(results, outs, baseline is not None), done_when(results),
           started)


if __name__ == "__main__":
    main()
