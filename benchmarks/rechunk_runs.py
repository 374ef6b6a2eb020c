"""How the rechunk benchmark runs (``bench_rechunk.py``): its sizes, the source arrays, and
the parent's loop that runs the readers in turns and checks what they wrote against
zarr-python.

The readers run in fresh worker processes (``rechunk_peers.py``); this is the parent's side.
A row is one (target, cache, reader) ``harness.results.Result``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.cache import preread_trees
from harness.results import Result, Run
from harness.sides import CURRENT, Side, split_reader
from harness.workers import reason, run_once
from harness.zarr_data import DATA_SEED, make_slab, object_paths, stored_objects
from rechunk_peers import RECHUNKER_SCRIPT, blosc_lz4

MiB = 2**20
SOURCE_VERSION = 1  # of the source's manifest
SLAB = 64  # time steps generated (and written) at a time
WINDOWS = 6  # random pixel windows checked after a reader's first run


@dataclass(frozen=True)
class Size:
    """The arrays of one size: source (v3, and its v2 copy) and targets."""

    shape: tuple[int, int, int]
    source_chunks: tuple[int, int, int]
    target_chunks: tuple[int, int, int]
    shards: tuple[int, int, int]  # of the "sharded" variant (its inner chunks: target_chunks)
    max_mem: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * 4

    def target(self, variant: str) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """(chunks, shards) of a variant's target."""
        return self.target_chunks, self.shards if variant == "sharded" else None


SIZES = {
    "full": Size((1024, 512, 512), (1, 512, 512), (1024, 16, 16), (1024, 64, 64), 256 * MiB),
    "quick": Size((256, 512, 512), (1, 512, 512), (256, 16, 16), (256, 64, 64), 64 * MiB),
    "tiny": Size((16, 128, 128), (1, 128, 128), (16, 16, 16), (16, 32, 32), 2 * MiB),
}


def dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


# -- the source ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """The source array on disk, Zarr v3 and its v2 copy (the same values)."""

    v3: Path
    v2: Path
    paths: list[str]  # the v3 chunk files
    stored: int  # their bytes
    total_sum: float


def _spec(size: Size) -> dict:
    return {"shape": list(size.shape), "chunks": list(size.source_chunks), "dtype": "float32",
            "codec": "blosc-lz4 clevel 5 shuffle", "fill_value": 0.0, "seed": DATA_SEED,
            "version": SOURCE_VERSION}


def _v2_paths(root: Path, size: Size) -> list[str]:
    grid = [-(-n // c) for n, c in zip(size.shape, size.source_chunks)]
    return [f"{root}/" + ".".join(map(str, i)) for i in np.ndindex(*grid)]


def _manifest_ok(root: Path, size: Size, paths: list[str]) -> dict | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("spec") != _spec(size):
        return None
    picks = np.random.default_rng().choice(len(paths), min(32, len(paths)), replace=False)
    if not all(os.path.isfile(paths[i]) for i in [*picks.tolist(), len(paths) - 1]):
        return None
    return manifest


def prepare_source(size: Size, data_dir: Path) -> Source:
    """The source of ``size`` under ``data_dir``: reused while both manifests match, else
    written once with zarr-python, v3 and v2 from the same slabs of the read benchmark's field
    (``make_slab``, cut to the shape's y and x)."""
    import numcodecs
    import zarr
    from zarr.codecs import BloscCodec

    name = f"rechunk-src-{dims(size.shape)}"
    v3, v2 = data_dir / name, data_dir / f"{name}-v2"
    paths3 = object_paths(v3, size.shape, size.source_chunks)
    paths2 = _v2_paths(v2, size)
    manifest = _manifest_ok(v3, size, paths3)
    if manifest is None or _manifest_ok(v2, size, paths2) is None:
        t0 = time.perf_counter()
        common = dict(shape=size.shape, dtype="float32", chunks=size.source_chunks,
                      fill_value=0.0)
        for root in (v3, v2):
            shutil.rmtree(root, ignore_errors=True)
        a3 = zarr.create_array(str(v3), zarr_format=3, **common,
                               compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"))
        a2 = zarr.create_array(str(v2), zarr_format=2, **common, compressors=numcodecs.Blosc(
            cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE))
        n0, ny, nx = size.shape
        total = 0.0
        for t0_ in range(0, n0, SLAB):
            slab = make_slab(t0_, min(t0_ + SLAB, n0))[:, :ny, :nx]
            total += float(slab.sum(dtype=np.float64))
            a3[t0_:t0_ + len(slab)] = slab
            a2[t0_:t0_ + len(slab)] = slab
        manifest = {"spec": _spec(size), "sum": total}
        for root in (v3, v2):  # last, so that an interrupted run regenerates
            (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
        print(f"  generated {v3.name} and its v2 copy in {data_dir} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    stored = sum(os.stat(p).st_size for p in paths3)
    return Source(v3, v2, paths3, stored, manifest["sum"])


# -- the parent: runs in turns, checks -----------------------------------------------------------


class Oracle:
    """What zarr-python reads from the source (loaded once) and checks targets against."""

    def __init__(self, src: Source) -> None:
        import zarr

        self.data = zarr.open_array(str(src.v3), mode="r")[:]
        self.rng = np.random.default_rng(0)

    def problem(self, path: Path, chunks: tuple, shards: tuple | None, full: bool) -> str:
        """What is wrong with the array at ``path`` ("" if nothing): its layout, and all of
        its values (``full``) or ``WINDOWS`` random pixel windows' timeseries."""
        import zarr

        try:
            z = zarr.open_array(str(path), mode="r")
        except Exception as e:  # noqa: BLE001  (an unreadable target is a wrong result)
            return f"wrong result: the target does not open ({reason(e)})"
        got = (z.shape, z.dtype, tuple(z.chunks), z.shards and tuple(z.shards))
        want = (self.data.shape, self.data.dtype, chunks, shards)
        if got != want:
            return f"wrong result: target (shape, dtype, chunks, shards) {got}, wanted {want}"
        _, ny, nx = self.data.shape
        if full:
            step = max(chunks[1], (shards or chunks)[1])
            for y in range(0, ny, step):
                if not np.array_equal(z[:, y:y + step, :], self.data[:, y:y + step, :]):
                    return f"wrong result: rows {y}:{y + step} differ from the source"
            return ""
        w = min(20, ny, nx)
        for _ in range(WINDOWS):
            y, x = int(self.rng.integers(0, ny - w + 1)), int(self.rng.integers(0, nx - w + 1))
            if not np.array_equal(z[:, y:y + w, x:x + w], self.data[:, y:y + w, x:x + w]):
                return f"wrong result: window y {y}, x {x} differs from the source"
        return ""


def describe_target(path: Path) -> str:
    """A written target's format and codecs, e.g. "v3 BloscCodec(lz4)"."""
    import zarr

    z = zarr.open_array(str(path), mode="r")
    names = []
    for c in getattr(z, "compressors", ()) or ():
        cname = getattr(c, "cname", None)
        names.append(f"{type(c).__name__}({getattr(cname, 'value', cname)})" if cname
                     else type(c).__name__)
    return f"v{z.metadata.zarr_format} {'+'.join(names) or 'uncompressed'}"


def write_reference(oracle: Oracle, chunks: tuple, shards: tuple | None, path: Path) -> None:
    """The target as zarr-python writes it: the bytes the ceiling writes."""
    import zarr

    shutil.rmtree(path, ignore_errors=True)
    z = zarr.create_array(str(path), shape=oracle.data.shape, dtype="float32", chunks=chunks,
                          shards=shards, compressors=blosc_lz4(), fill_value=0.0)
    z[:] = oracle.data


VERIFIED = ("read back with zarr-python against the source: all of the first run (layout and "
            f"values), {WINDOWS} random 20x20-pixel timeseries of the others")


@dataclass
class Plan:
    """What the parent needs to run a variant's readers."""

    variant: str
    size: Size
    src: Source
    readers: list[str]
    states: list[str]
    repeats: int
    out_dir: Path
    script: Path
    baseline: Side | None
    rechunker: str | None  # the side venv's Python


def touch_bytes(size: Size) -> int:
    """The fresh memory every reader writes and frees before its clock
    (``harness.memory.touch_memory``): ``max_mem`` plus twice the array's bytes, which covers
    what a run newly fills, the page cache of its target and temporary array (each about the
    source's stored size, 0.6 of the array here) and dask-tasks' 1.3 GiB of RSS. Without it
    a run's writes into the page cache pay this VM's host page faults (measured: our sharded
    copy 2.74 s after 15 s idle, 1.73-1.82 s with 2 GiB touched first), for every reader."""
    return size.max_mem + 2 * size.nbytes


def one_task(p: Plan, label: str, state: str, target: Path, reference: Path) -> dict:
    name, _ = split_reader(label)
    chunks, shards = p.size.target(p.variant)
    return {"reader": name, "source": str(p.src.v2 if name == "rechunker" else p.src.v3),
            "target": str(target), "temp": str(target) + "-temp",
            "target_chunks": list(chunks), "shards": list(shards) if shards else None,
            "shape": list(p.size.shape), "source_chunks": list(p.size.source_chunks),
            "max_mem": p.size.max_mem, "touch": touch_bytes(p.size), "cold": state == "cold",
            "reference": str(reference)}


def run_variant(p: Plan, oracle: Oracle, replies: dict) -> list[Result]:
    """Every reader ``p.repeats`` times per cache state, in turns that rotate between repeats,
    each run in a fresh process; each output checked, then deleted. ``replies`` gets every
    run's reply, by (variant, state, reader)."""
    chunks, shards = p.size.target(p.variant)
    out_dir = p.out_dir / p.variant
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    reference = out_dir / "reference"
    ref_bytes = 0
    if "ceiling" in p.readers:
        write_reference(oracle, chunks, shards, reference)
        ref_bytes = sum(len(b) for _, b in stored_objects(reference))
    checked: set[str] = set()  # readers whose first run was checked in full
    results: list[Result] = []
    try:
        for state in p.states:
            rows = {r: Result(p.variant, state, "", r, verified=VERIFIED) for r in p.readers}
            turns = list(p.readers)
            for rep in range(p.repeats):
                for label in turns:
                    res = rows[label]
                    if res.error:  # it failed once: its row is "not available"
                        continue
                    target = out_dir / f"{label.replace('@', '-')}-{state}-{rep}"
                    task = one_task(p, label, state, target, reference)
                    out, wall = timed(p, label, state, task)
                    why = out.get("error", "")
                    if not why:
                        why = oracle.problem(target, chunks, shards, label not in checked)
                        checked.add(label)
                        if not why and "codecs" not in res.note:
                            res.note = f"codecs {describe_target(target)}"
                    if not why and task["reader"] == "ceiling":
                        want = (p.src.stored, ref_bytes)
                        if (out["read"], out["written"]) != want:
                            why = f"wrong result: moved {out['read'], out['written']}, want {want}"
                    for path in (target, Path(task["temp"])):
                        shutil.rmtree(path, ignore_errors=True)
                    replies.setdefault((p.variant, state, label), []).append(
                        out | ({"error": why} if why else {}))
                    if why:
                        res.error = why
                        print(f"  {p.variant} {state} {label}: not available ({why})",
                              flush=True)
                        continue
                    res.runs.append(Run(out["seconds"], p.size.nbytes,
                                        rss_peak=out["rss_peak"], rss_before=out["rss_before"]))
                    extra = (f", client {out['client_peak'] / MiB:,.0f} MiB"
                             if "client_peak" in out else "")
                    print(f"  {p.variant} {state} {label} run {rep + 1}: {out['seconds']:.3f} s "
                          f"({p.size.nbytes / 1e9 / out['seconds']:.3f} GB/s), peak "
                          f"{out['rss_peak'] / MiB:,.0f} MiB (+"
                          f"{(out['rss_peak'] - out['rss_before']) / MiB:,.0f}){extra} "
                          f"(process {wall:.1f} s)", flush=True)
                turns = turns[1:] + turns[:1]
            results += rows.values()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return results


def timed(p: Plan, label: str, state: str, task: dict) -> tuple[dict, float]:
    """One run of ``label`` in a fresh process (warm: its source pre-read first; every run
    after ``sync``, so that none pays for the last one's writeback)."""
    name, side = split_reader(label)
    if state == "warm":
        preread_trees([p.src.v2 if name == "rechunker" else p.src.v3])
    os.sync()
    t0 = time.perf_counter()
    if name == "rechunker":
        out = run_once(RECHUNKER_SCRIPT, task, Side(python=p.rechunker or "", installed=True))
    else:
        out = run_once(p.script, task, p.baseline if side else CURRENT)
    return out, time.perf_counter() - t0


def versions() -> dict:
    out = {}
    for pkg in ("dask-lsio", "dask", "distributed", "zarr", "numcodecs", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def size_meta(size: Size, src: Source) -> dict:
    return asdict(size) | {"source_v3": str(src.v3), "source_v2": str(src.v2),
                           "source_objects": len(src.paths), "source_stored_bytes": src.stored}
