#!/usr/bin/env python
"""Write benchmark of dask-lsio: an in-memory array into new Zarr arrays, against the peers.

The data is the read benchmark's float32 field (``bench_read.make_slab``: a smooth pattern
plus noise, to 0.01), 512 x 512 x 512 (512 MiB; ``--quick``: 128 x 512 x 512), generated once
and held in memory. Two layouts, Zarr v3:

(A) chunks 1x128x128 (8,192 chunk files), blosc-lz4 (``BloscCodec(cname="lz4", clevel=5,
    shuffle="shuffle")``);
(B) shards 16x512x512 (32 files) of 1x128x128 inner chunks, zstd (``ZstdCodec(level=3)``).

Writers, each creating a new array in a new directory (the metadata write is in the time):

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
(encode-only) compare with those rows of the same layout.

Run (from the repository root, with dask-lsio and the ``bench`` extra installed)::

    python benchmarks/bench_write.py            # full: 5 repeats, ~10 min on 2 cores
    python benchmarks/bench_write.py --quick    # 128 x 512 x 512, 2 repeats
    python benchmarks/bench_write.py --only A --writers dask_lsio,zarrs

Raw timings, medians, versions and settings go to ``--json`` (default
``bench-results/bench_write.json``). The last lines print the issue's "done when" checks.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_io  # noqa: E402  (sibling module: the JSON layout and the checks)
import bench_read  # noqa: E402  (the data generator)

WRITERS = ["dask_lsio", "dask", "zarr", "zarrs", "tensorstore", "encode-only", "plain-write",
           "engine-write"]
BLOCK = 64  # axis-0 size of the dask blocks
CHUNK = (1, 128, 128)
SHARD = (16, 512, 512)


@dataclass
class Layout:
    name: str
    shards: tuple[int, ...] | None
    codec: str  # "blosc" or "zstd"

    def zarr_kwargs(self) -> dict:
        from zarr.codecs import BloscCodec, ZstdCodec

        comp = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle") if self.codec == "blosc"
                else ZstdCodec(level=3))
        kwargs = {"chunks": CHUNK, "compressors": comp}
        if self.shards:
            kwargs["shards"] = self.shards
        return kwargs

    def numcodec(self) -> Any:
        import numcodecs

        if self.codec == "blosc":
            return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
        return numcodecs.Zstd(level=3)


LAYOUTS = {"A": Layout("A", None, "blosc"), "B": Layout("B", SHARD, "zstd")}


@dataclass
class Result:
    layout: str
    writer: str
    seconds: list[float] = field(default_factory=list)
    nbytes: int = 0
    error: str = ""

    @property
    def median(self) -> float | None:
        return float(np.median(self.seconds)) if self.seconds else None

    @property
    def gbps(self) -> float | None:
        return self.nbytes / 1e9 / self.median if self.seconds else None


# -- writers ---------------------------------------------------------------------------------
def write_dask_lsio(data: Any, layout: Layout, path: Path) -> None:
    import dask

    import dask_lsio

    with dask.config.set({"lsio.strict": True}):
        dask_lsio.to_zarr(data, str(path), **layout.zarr_kwargs())


def write_dask(data: Any, layout: Layout, path: Path) -> None:
    import dask.array as da

    da.to_zarr(data, str(path), **layout.zarr_kwargs())


def write_zarr(data: np.ndarray, layout: Layout, path: Path, pipeline: str | None = None) -> None:
    import zarr

    cfg = {"codec_pipeline.path": pipeline, "codec_pipeline.strict": True} if pipeline else {}
    with zarr.config.set(cfg):
        z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype,
                              **layout.zarr_kwargs())
        z[:] = data


def write_zarrs(data: np.ndarray, layout: Layout, path: Path) -> None:
    write_zarr(data, layout, path, "zarrs.ZarrsCodecPipeline")


def tensorstore_spec(data: np.ndarray, layout: Layout, path: Path) -> dict:
    """The zarr3 metadata of ``layout`` in tensorstore's terms."""
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    if layout.codec == "blosc":
        comp = {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5,
                                                   "shuffle": "shuffle", "typesize": 4}}
    else:
        comp = {"name": "zstd", "configuration": {"level": 3}}
    codecs = [little, comp]
    grid = list(CHUNK)
    if layout.shards:
        grid = list(layout.shards)
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": list(CHUNK), "codecs": codecs,
            "index_codecs": [little, {"name": "crc32c"}], "index_location": "end"}}]
    metadata = {"shape": list(data.shape), "data_type": "float32", "fill_value": 0,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": grid}},
                "chunk_key_encoding": {"name": "default"}, "codecs": codecs}
    return {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
            "metadata": metadata, "create": True}


def write_tensorstore(data: np.ndarray, layout: Layout, path: Path) -> None:
    import tensorstore as ts

    arr = ts.open(tensorstore_spec(data, layout, path)).result()
    arr.write(data).result()


def encode_only(data: np.ndarray, layout: Layout) -> None:
    """Encode every (inner) chunk on cpu_count threads; nothing is kept or written."""
    import numcodecs.blosc

    numcodecs.blosc.use_threads = False
    codec = layout.numcodec()
    steps = np.array_split(np.arange(data.shape[0]), os.cpu_count() or 1)

    def work(ts: np.ndarray) -> None:
        for t in ts:
            for i in range(0, data.shape[1], CHUNK[1]):
                for j in range(0, data.shape[2], CHUNK[2]):
                    codec.encode(np.ascontiguousarray(data[t, i:i + CHUNK[1], j:j + CHUNK[2]]))

    with ThreadPoolExecutor(len(steps)) as ex:
        list(ex.map(work, steps))


def stored_objects(root: Path) -> list[tuple[str, bytes]]:
    """Every object under an array directory, as (relative path, bytes)."""
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            full = os.path.join(d, f)
            out.append((os.path.relpath(full, root), Path(full).read_bytes()))
    return out


def plain_write(objects: list[tuple[str, bytes]], path: Path) -> None:
    made: set[str] = set()
    for rel, blob in objects:
        full = os.path.join(path, rel)
        parent = os.path.dirname(full)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        with open(full, "wb") as f:
            f.write(blob)


def engine_write(objects: list[tuple[str, bytes]], path: Path) -> None:
    from dask_lsio import get_engine

    get_engine().write([(os.path.join(path, rel), blob) for rel, blob in objects])


WRITE_FUNCS: dict[str, Callable] = {
    "dask_lsio": write_dask_lsio, "dask": write_dask, "zarr": write_zarr,
    "zarrs": write_zarrs, "tensorstore": write_tensorstore,
}


def versions() -> dict:
    out = {}
    for pkg in ("dask-lsio", "dask", "zarr", "zarrs", "tensorstore", "numcodecs", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# -- runs ------------------------------------------------------------------------------------
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


def one_run(writer: str, data: np.ndarray, layout: Layout, path: Path, objects: list,
            durable: bool) -> float:
    if writer in ("dask_lsio", "dask"):  # the dask array exists before the clock starts
        import dask.array as da

        source: Any = da.from_array(data, chunks=(BLOCK, *data.shape[1:]), name=False)
    else:
        source = data
    os.sync()
    t0 = time.perf_counter()
    if writer == "encode-only":
        encode_only(data, layout)
    elif writer == "plain-write":
        plain_write(objects, path)
    elif writer == "engine-write":
        engine_write(objects, path)
    else:
        WRITE_FUNCS[writer](source, layout, path)
    if durable:
        os.sync()
    return time.perf_counter() - t0


def run_layout(layout: Layout, data: np.ndarray, writers: list[str], args) -> list[Result]:
    out_dir = args.out_dir / layout.name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    results = {w: Result(layout.name, w, nbytes=data.nbytes) for w in writers}
    rng = np.random.default_rng(0)
    objects: list = []
    if {"plain-write", "engine-write"} & set(writers):  # the bytes a zarr-python run stores
        write_zarr(data, layout, out_dir / "reference")
        objects = stored_objects(out_dir / "reference")
    try:
        for rep in range(args.repeats + 1):  # run 0: untimed, checked in full
            for i, w in enumerate(writers):
                res = results[w]
                if res.error:
                    continue
                path = out_dir / f"{w}-{rep}"
                try:
                    s = one_run(w, data, layout, path, objects, args.durable)
                    if w != "encode-only":
                        check_written(path, data, full=rep == 0, rng=rng)
                except Exception as e:  # a writer that is missing or fails is reported
                    res.error = f"{type(e).__name__}: {e}"[:300]
                    print(f"  {layout.name} {w}: not available ({res.error})", flush=True)
                    continue
                if rep:
                    res.seconds.append(s)
                    print(f"  {layout.name} {w} run {rep}: {s:.3f} s "
                          f"({data.nbytes / 1e9 / s:.3f} GB/s)", flush=True)
            writers = writers[1:] + writers[:1]  # turns rotate between repeats
    finally:
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)
    return list(results.values())


# -- report ----------------------------------------------------------------------------------
def find(results: list[Result], layout: str, writer: str) -> Result | None:
    for r in results:
        if r.layout == layout and r.writer == writer and r.seconds:
            return r
    return None


def ratio(results: list[Result], r: Result, other: str) -> float | None:
    o = find(results, r.layout, other)
    return r.gbps / o.gbps if o and r.gbps else None


def print_table(results: list[Result]) -> None:
    print(f"\n{'layout':7} {'writer':12} {'median s':>9} {'GB/s':>7} {'x dask':>7} "
          f"{'x zarrs':>8} {'x ceil':>7}")
    for r in results:
        if not r.seconds:
            print(f"{r.layout:7} {r.writer:12} {'not available: ' + r.error[:60]}")
            continue
        cells = [ratio(results, r, o) for o in ("dask", "zarrs", "encode-only")]
        text = " ".join(f"{c:>7.2f}" if c else f"{'-':>7}" for c in cells)
        print(f"{r.layout:7} {r.writer:12} {r.median:9.3f} {r.gbps:7.3f} {text}")


def done_when(results: list[Result]) -> list[bench_io.Check]:
    def check(text, layout, other, target):
        r = find(results, layout, "dask_lsio")
        value = ratio(results, r, other) if r else None
        return bench_io.Check(text, value, target)

    return [
        check("A (unsharded blosc-lz4) dask_lsio / dask.array.to_zarr", "A", "dask", 3),
        check("A (unsharded blosc-lz4) dask_lsio / zarrs", "A", "zarrs", 2),
        check("B (sharded zstd) dask_lsio / dask.array.to_zarr", "B", "dask", 2),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="128 x 512 x 512, 2 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per writer (5)")
    p.add_argument("--only", default="A,B", help="layouts, e.g. A or A,B")
    p.add_argument("--writers", default=",".join(WRITERS), help="comma-separated writers")
    p.add_argument("--durable", action="store_true", help="os.sync() inside each timed run")
    p.add_argument("--keep", action="store_true", help="keep the written arrays")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/data/write-out"))
    p.add_argument("--json", type=Path, default=Path("bench-results/bench_write.json"))
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    n0 = 128 if args.quick else 512
    data = np.concatenate([bench_read.make_slab(t, min(t + BLOCK, n0)) for t in range(0, n0, BLOCK)])
    writers = [w for w in args.writers.split(",") if w]
    print(f"writing {data.shape} float32 ({data.nbytes / 2**20:.0f} MiB), "
          f"{args.repeats} repeats, writers {writers}", flush=True)
    results: list[Result] = []
    for name in args.only.split(","):
        results += run_layout(LAYOUTS[name], data, writers, args)
    print_table(results)
    checks = done_when(results)
    meta = bench_io.run_meta(args) | {"versions": versions(), "shape": list(data.shape),
                                      "block": BLOCK, "chunk": CHUNK, "shard": SHARD}
    rows = [{"layout": r.layout, "writer": r.writer, "seconds": r.seconds, "bytes": r.nbytes,
             "median_s": r.median, "gb_per_s": r.gbps, "error": r.error,
             "x_dask": ratio(results, r, "dask"), "x_zarrs": ratio(results, r, "zarrs"),
             "x_ceiling": ratio(results, r, "encode-only")} for r in results]
    bench_io.finish(args.json, meta, rows, checks)


if __name__ == "__main__":
    main()
