#!/usr/bin/env python
"""Training-loader benchmark of dask-lsio: random-crop batches and ordered streaming.

Dataset (A) of the read benchmark (``bench_read.py``: 1024 x 512 x 512 float32, chunks
1x128x128 blosc-lz4, 16,384 files; ``--quick``: 128 steps), generated there and reused.

``crops``   batches of 32 crops of 8 x 64 x 64 at the same random locations for every reader
            (``dask_lsio.RandomCrops(...).locations``, seed 0), ``--batches`` of them (60;
            quick 10), after three untimed batches at other locations (every reader's
            threads and buffers exist by then; one for dask):

            ``dask_lsio``    ``dask_lsio.RandomCrops(path, (8, 64, 64), 32)``, prefetch 2
            ``zarr``         zarr-python's default pipeline, ``z[t:t+8, y:y+64, x:x+64]`` per
                             crop, one after the other, stacked per batch
            ``zarrs``        the same loop with ``zarrs.ZarrsCodecPipeline`` (strict)
            ``tensorstore``  all crops of a batch issued at once (futures), then stacked
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
``stream``  the whole of A along time, each block summed as it arrives (float32 sums, as
            the read benchmark's scan):
            ``dask_lsio.iter_blocks(path)`` (ordered, prefetch 4); a loop over ``z[t]``
            with zarr-python's default pipeline; and the read benchmark's full scan
            ``dask_lsio.from_zarr(path).sum()`` as the reference. The dask_lsio readers
            make one untimed pass first (a warm process, like bench_read's workers).

Every reader runs in a fresh process per run (``--worker``), readers taking turns within each
repeat; the crops' float64 sum is checked to agree between readers, the stream sums against
the data's. Warm runs pre-read the dataset; cold runs (root only) drop the page cache before
each run. Medians over ``--repeats`` (5; quick 2).

    python benchmarks/bench_crops.py              # full
    python benchmarks/bench_crops.py --quick      # 128 steps, fewer batches
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_io  # noqa: E402  (cache control, JSON layout, checks)
import bench_read  # noqa: E402  (the dataset)

CROP = (8, 64, 64)
BATCH = 32
SEED = 0
CROP_READERS = ["dask_lsio", "zarr", "zarrs", "tensorstore", "dask"]
STREAM_READERS = ["iter_blocks", "zarr-loop", "scan"]
NWP_STEP = 12  # satellite steps per NWP step (5 minutes -> 1 hour)
NWP_CROP = (2, 32, 32)


# -- worker side -------------------------------------------------------------------------


def locations(path: str, batches: int, epoch: int) -> list[np.ndarray]:
    """The crop starts of every batch, as dask_lsio samples them (the same for all)."""
    import dask_lsio

    crops = dask_lsio.RandomCrops(path, CROP, BATCH, seed=SEED, length=batches)
    (name,) = [s.name for s in crops.sources]
    return [crops.locations(epoch, b)[name] for b in range(batches)]


def crop_batches(reader: str, path: str, starts: list[np.ndarray]):
    """A generator of batches (arrays (32, 8, 64, 64)) for ``reader``."""
    windows = [[tuple(slice(a, a + n) for a, n in zip(s, CROP)) for s in b.tolist()]
               for b in starts]
    if reader == "dask_lsio":
        import dask_lsio

        crops = dask_lsio.RandomCrops(path, CROP, BATCH, seed=SEED, length=len(starts))
        crops.locations = lambda e, b: {crops.sources[0].name: starts[b]}  # the given ones
        return (b[crops.sources[0].name] for b in crops.iter_epoch(0))
    if reader in ("zarr", "zarrs"):
        import zarr

        if reader == "zarrs":
            zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline",
                             "codec_pipeline.strict": True})
        z = zarr.open_array(path, mode="r")
        return (np.stack([z[w] for w in batch]) for batch in windows)
    if reader == "tensorstore":
        import tensorstore as ts

        s = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}},
                    read=True).result()
        return (np.stack([f.result() for f in [s[w].read() for w in batch]])
                for batch in windows)
    import dask
    import dask.array as da

    dask.config.set({"scheduler": "threads"})
    a = da.from_zarr(path)
    return (da.stack([a[w] for w in batch]).compute() for batch in windows)


def run_crops(reader: str, path: str, batches: int) -> dict:
    """One timed run: ``batches`` batches after untimed ones elsewhere."""
    warm = locations(path, 1 if reader == "dask" else 3, epoch=99)
    for b in crop_batches(reader, path, warm):
        pass
    if reader == "dask":  # ~20 s a batch on 2 cores: a sixtieth of the batches
        batches = max(1, batches // 60)
    starts = locations(path, batches, epoch=0)
    total = 0.0
    before = decoded_bytes() if reader == "dask_lsio" else 0.0  # no engine for the others
    t0 = time.perf_counter()
    for b in crop_batches(reader, path, starts):
        total += float(b.sum(dtype=np.float64))
    out = {"seconds": time.perf_counter() - t0, "sum": total, "work": batches * BATCH}
    if reader == "dask_lsio":
        out["decoded"] = decoded_bytes() - before
    return out


def decoded_bytes() -> float:
    """Bytes dask_lsio's codecs decoded in this process so far (its ``lsio-decoded``)."""
    import dask_lsio

    return dask_lsio.get_engine().totals.snapshot().get(("lsio-decoded", "bytes"), 0.0)


def run_two(path: str, view: str, nwp: str, batches: int) -> dict:
    """Two aligned sources with dask_lsio: satellite (A's view) and NWP."""
    import dask_lsio

    sat = dask_lsio.open_zarr(view, consolidated=False)
    model = dask_lsio.open_zarr(nwp, consolidated=False)
    crop = {"sat": dict(zip(("time", "y", "x"), CROP)),
            "nwp": dict(zip(("time", "y", "x"), NWP_CROP))}
    crops = dask_lsio.RandomCrops({"sat": sat.v, "nwp": model.v}, crop, BATCH, seed=SEED,
                                  length=batches + 1)
    it = iter(crops)
    next(it)  # untimed
    total = 0.0
    t0 = time.perf_counter()
    for b in it:
        total += float(b["sat"].sum(dtype=np.float64)) + float(b["nwp"].sum(dtype=np.float64))
    return {"seconds": time.perf_counter() - t0, "sum": total}


def run_stream(reader: str, path: str) -> dict:
    """The whole array along time, each block summed as it arrives. Imports, the engine and
    (dask_lsio readers) one whole untimed pass come first, so that the timed pass runs in
    a warm process, as the read benchmark's persistent workers do."""
    import zarr

    import dask_lsio

    z = zarr.open_array(path, mode="r")

    def one_pass() -> float:  # float32 sums, as the read benchmark's scan
        if reader == "iter_blocks":
            return sum(float(b.sum()) for b in dask_lsio.iter_blocks(path))
        if reader == "scan":
            return float(dask_lsio.from_zarr(path).sum().compute())
        return sum(float(z[t].sum()) for t in range(z.shape[0]))

    if reader == "zarr-loop":
        z[0]
    else:
        one_pass()
    t0 = time.perf_counter()
    total = one_pass()
    return {"seconds": time.perf_counter() - t0, "sum": total}


def worker_main(task: dict) -> None:
    """Run one task in this fresh process and print its result as JSON."""
    kind = task["kind"]
    if kind == "crops":
        out = run_crops(task["reader"], task["path"], task["batches"])
    elif kind == "two":
        out = run_two(task["path"], task["view"], task["nwp"], task["batches"])
    else:
        out = run_stream(task["reader"], task["path"])
    print(json.dumps(out))


# -- parent side -------------------------------------------------------------------------


def in_worker(task: dict) -> dict:
    """Run ``task`` in a new process; a failure becomes {"error": ...}."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)],
                          capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    ds = xr.Dataset({"v": (("time", "y", "x"), values)}, coords=_coords(shape, 60, 2.0))
    ds.to_zarr(root, mode="w", consolidated=False, zarr_format=3,
               encoding={"v": {"chunks": (1, 64, 64), "compressors": ZstdCodec(level=3)}})
    (root / "done").write_text("")
    return root


def _coords(shape: tuple[int, int, int], minutes: int, km: float) -> dict:
    t0 = np.datetime64("2024-06-01T00:00")
    return {"time": t0 + np.arange(shape[0]) * np.timedelta64(minutes, "m"),
            "y": np.arange(shape[1]) * km, "x": np.arange(shape[2]) * km}


def satellite_view(ds: bench_read.Dataset, data_dir: Path) -> Path:
    """A's xarray view (bench_read) with 5-minute times and a 1 km grid as coordinates."""
    import zarr

    view = bench_read.xarray_view(ds.root, data_dir / f"crops-sat-{ds.spec.shape[0]}")
    group = zarr.open_group(str(view), mode="r+")
    coords = _coords(ds.spec.shape, 5, 1.0)
    minutes = (coords["time"] - coords["time"][0]) // np.timedelta64(1, "m")
    group["time"].attrs.update({"units": "minutes since 2024-06-01"})
    group["time"][:] = minutes.astype("int64")
    for dim in ("y", "x"):
        a = group.create_array(dim, shape=(len(coords[dim]),), dtype="float64",
                               dimension_names=[dim])
        a[:] = coords[dim]
    return view


def decoded_per_delivered(starts: list[np.ndarray], dedupe: bool) -> float:
    """Decoded chunk bytes per delivered byte over ``starts``' batches (chunks 1x128x128)."""
    chunk = np.array(bench_read.CHUNK)
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
    return decoded * math.prod(bench_read.CHUNK) / delivered


def measured_decoded(rows: list[dict]) -> dict[str, float]:
    """dask_lsio's decoded bytes per delivered byte, as its warm runs counted them."""
    for r in rows:
        if (r["kind"], r["cache"], r["reader"]) == ("crops", "warm", "dask_lsio"):
            ok = [o for o in r["runs"] if "decoded" in o]
            if ok:
                delivered = ok[0]["work"] * math.prod(CROP) * 4
                return {"dask_lsio": float(np.median([o["decoded"] for o in ok])) / delivered}
    return {}


def timed(kind: str, readers: list[str], args, states: list[str], base: dict,
          ds: bench_read.Dataset) -> dict[tuple[str, str], list[dict]]:
    """Every reader of ``kind`` ``--repeats`` times per cache state, in turns."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for state in states:
        for rep in range(args.repeats):
            for reader in readers:
                if state == "warm":
                    bench_io.preread(ds)
                else:
                    bench_io.drop_caches()
                out = in_worker(base | {"kind": kind, "reader": reader})
                runs.setdefault((state, reader), []).append(out)
                shown = out.get("error") or f"{out['seconds']:.3f} s"
                print(f"  {kind} {state} {reader} run {rep + 1}: {shown}", flush=True)
            readers = readers[1:] + readers[:1]
    return runs


def summarise(runs: dict, kind: str, work: float, unit: str) -> list[dict]:
    """Medians per (cache, reader): ``work`` units per run (crops, examples or bytes)."""
    rows = []
    for (state, reader), outs in runs.items():
        ok = [o for o in outs if "error" not in o]
        row = {"kind": kind, "cache": state, "reader": reader, "runs": outs}
        if len(ok) == len(outs) and ok:
            med = float(np.median([o["seconds"] for o in ok]))
            done = ok[0].get("work", work)
            row |= {"median_s": med, f"{unit}_per_s": done / med, "work": done}
            if done == work:  # the same crops as the others: comparable sums
                row["sum"] = ok[0]["sum"]
        else:
            row["error"] = next(o["error"] for o in outs if "error" in o)
        rows.append(row)
    return rows


def check_sums(rows: list[dict], reference: float | None = None, rel: float = 1e-6) -> None:
    """Readers must agree (crops) or match the data's sum (stream)."""
    sums = [r["sum"] for r in rows if "sum" in r]
    want = reference if reference is not None else (sums[0] if sums else None)
    for r in rows:
        if "sum" in r and not math.isclose(r["sum"], want, rel_tol=rel):
            r["error"] = f"wrong result: sum {r['sum']:.8g}, expected {want:.8g}"
            r.pop("median_s", None)


def rate(rows: list[dict], kind: str, cache: str, reader: str, unit: str) -> float | None:
    for r in rows:
        if (r["kind"], r["cache"], r["reader"]) == (kind, cache, reader) and "median_s" in r:
            return r[f"{unit}_per_s"]
    return None


def print_rows(rows: list[dict], amp: dict[str, float]) -> None:
    print(f"\n{'work':7} {'cache':5} {'reader':12} {'median s':>9} {'crops/s':>9} "
          f"{'GB/s':>7} {'decoded/delivered':>18}")
    crop_bytes = math.prod(CROP) * 4
    for r in rows:
        lead = f"{r['kind']:7} {r['cache']:5} {r['reader']:12}"
        if "median_s" not in r:
            print(f"{lead} not available: {r.get('error')}")
            continue
        if r["kind"] == "stream":
            print(f"{lead} {r['median_s']:9.3f} {'-':>9} {r['bytes_per_s'] / 1e9:7.3f}")
            continue
        per_s = r.get("crops_per_s") or r.get("examples_per_s")
        gbs = per_s * crop_bytes / 1e9
        ratio = amp.get(r["reader"]) if r["kind"] == "crops" else None
        print(f"{lead} {r['median_s']:9.3f} {per_s:9,.0f} {gbs:7.3f} "
              f"{'-' if ratio is None else f'{ratio:.2f}':>18}")
    print("crops/s: examples/s for 'two' (each example is a satellite and an NWP crop; GB/s "
          "there counts the satellite crops only); GB/s decimal, of delivered crops (stream: "
          "of the array)")


def done_when(rows: list[dict]) -> list[bench_io.Check]:
    def rel(a, b):
        return a / b if a and b else None

    ours = rate(rows, "crops", "warm", "dask_lsio", "crops")
    scan = rate(rows, "stream", "warm", "scan", "bytes")
    Check = bench_io.Check
    return [
        Check("warm crops: dask_lsio / tensorstore (all crops of a batch at once)",
              rel(ours, rate(rows, "crops", "warm", "tensorstore", "crops")), 1.5),
        Check("warm crops: dask_lsio / zarr-python loop",
              rel(ours, rate(rows, "crops", "warm", "zarr", "crops")), 15),
        Check("warm two sources: examples/s / single-source crops/s",
              rel(rate(rows, "two", "warm", "dask_lsio", "examples"), ours), 0.5),
        Check("warm ordered streaming: iter_blocks / full scan",
              rel(rate(rows, "stream", "warm", "iter_blocks", "bytes"), scan), 0.8),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="128 steps, 10 batches, 2 repeats")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--batches", type=int, default=None, help="timed batches per run (60)")
    p.add_argument("--readers", default=",".join(CROP_READERS))
    p.add_argument("--parts", default="crops,two,stream", help="which workloads to run")
    p.add_argument("--no-cold", dest="cold", action="store_false", help="warm runs only")
    p.add_argument("--data-dir", type=Path, default=bench_read.REPO / "benchmarks" / "data")
    p.add_argument("--json", type=Path,
                   default=bench_read.REPO / "bench-results" / "bench_crops.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.batches = args.batches or (10 if args.quick else 60)
    parts = args.parts.split(",")
    ds, = bench_read.prepare_datasets([bench_read.make_specs(args.quick)["A"]], args.data_dir)
    path = str(ds.root)
    states = ["warm"] + (["cold"] if args.cold and bench_io.can_drop_caches() else [])
    base = {"path": path, "batches": args.batches}
    rows: list[dict] = []
    amp: dict[str, float] = {}
    if "crops" in parts:
        readers = [r for r in args.readers.split(",") if r]
        crop_rows = summarise(timed("crops", readers, args, states, base, ds), "crops",
                              args.batches * BATCH, "crops")
        check_sums(crop_rows)
        rows += crop_rows
        starts = locations(path, args.batches, 0)
        amp = {r: decoded_per_delivered(starts, dedupe=r in ("dask_lsio", "dask"))
               for r in readers}
        amp |= measured_decoded(crop_rows)
    if "two" in parts:
        view = satellite_view(ds, args.data_dir)
        nwp = nwp_dataset(args.data_dir, ds.spec.shape)
        two = timed("two", ["dask_lsio"], args, ["warm"], base | {"view": str(view),
                                                                  "nwp": str(nwp)}, ds)
        rows += summarise(two, "two", args.batches * BATCH, "examples")
    if "stream" in parts:
        stream = timed("stream", list(STREAM_READERS), args, ["warm"], base, ds)
        stream_rows = summarise(stream, "stream", ds.spec.nbytes, "bytes")
        check_sums(stream_rows, ds.total_sum, rel=1e-4)  # float32 sums, as bench_read
        rows += stream_rows
    print_rows(rows, amp)
    meta = bench_io.run_meta(args) | {"crop": CROP, "batch": BATCH, "nwp_crop": NWP_CROP,
                                      "decoded_per_delivered": amp}
    bench_io.finish(args.json, meta, rows, done_when(rows))


if __name__ == "__main__":
    main()
