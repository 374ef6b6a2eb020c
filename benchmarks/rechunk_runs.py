"""How the rechunk benchmark runs (``bench_rechunk.py``): its sizes, the source arrays, the
rechunker side environment, the readers (each timed in a fresh worker process) and the
parent's loop that runs them in turns and checks what they wrote.

A worker process gets one task (a JSON dict: reader, source, target, temp, chunks, shards,
max_mem, cold) and prints one JSON reply: the seconds of the timed part, the process's RSS
before it and its high-water mark during it, and what the reader reports about itself.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import drop_caches, preread_trees
from harness.memory import peak_rss_kib, reset_peak_rss, rss_kib, touch_memory
from harness.results import Result, Run
from harness.sides import CURRENT, Side, split_reader
from harness.workers import reason, run_once
from harness.zarr_data import DATA_SEED, make_slab, object_paths

MiB = 2**20
SOURCE_VERSION = 1  # of the source's manifest
SLAB = 64  # time steps generated (and written) at a time
RECHUNKER = "0.5.4"
# the rechunker side venv: pinned to what works on Python 3.11 (zarr<3 needs numcodecs<0.16)
RECHUNKER_REQS = [f"rechunker=={RECHUNKER}", "zarr==2.18.7", "numcodecs==0.15.2"]
RECHUNKER_SCRIPT = Path(__file__).resolve().with_name("rechunker_run.py")
CLUSTER = dict(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
               dashboard_address=None, memory_limit=0)
CEILING_BATCH = 32  # source files per engine read batch of the ceiling
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


# -- the rechunker side environment ----------------------------------------------------------


def rechunker_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dask-lsio-bench" / f"rechunker-{RECHUNKER}"


def rechunker_python(create: bool) -> tuple[str | None, str]:
    """The side venv's Python (rechunker 0.5.4, zarr 2, the dask and numpy versions of this
    environment), created on demand when ``create``; else (None, why)."""
    import dask

    venv = rechunker_venv()
    python = venv / "bin" / "python"
    reqs = RECHUNKER_REQS + [f"dask[array]=={dask.__version__}", f"numpy=={np.__version__}"]
    ready = venv / "ready.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(ready.read_text())["requirements"] == reqs and python.is_file():
            return str(python), ""
    if not create:
        return None, (f"rechunker's side venv {venv} is not there (--tiny never creates it; "
                      "a --quick or full run does)")
    print(f"creating rechunker's side venv {venv}: pip install {' '.join(reqs)}", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", "") or shutil.which("python3") or "python3"
    log = venv.parent / f"rechunker-{RECHUNKER}-install.log"
    with open(log, "w") as f:
        steps = [[base, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "--disable-pip-version-check", *reqs]]
        for cmd in steps:
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
                return None, f"rechunker's side venv could not be made (see {log})"
    ready.write_text(json.dumps({"requirements": reqs}))
    return str(python), ""


# -- the readers, in a worker process ---------------------------------------------------------


def blosc_lz4() -> Any:
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def stored_objects(root: Path) -> list[tuple[str, bytes]]:
    """Every object under an array directory, as (relative path, bytes)."""
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            full = os.path.join(d, f)
            out.append((os.path.relpath(full, root), Path(full).read_bytes()))
    return out


def warm_up_threads() -> None:
    """A trivial compute on dask's threaded scheduler: its pool (and the first compute's lazy
    imports, ~0.2 s here) exist before the clock, as a cluster does for dask-p2p."""
    import dask

    dask.compute(dask.delayed(int)(0), scheduler="threads")


class Job:
    """One reader's run in its worker: ``prepare`` (before the clock), ``run`` (timed),
    ``report`` (after it), ``close``."""

    def __init__(self, task: dict) -> None:
        self.task = task
        self.chunks = tuple(task["target_chunks"])
        self.shards = tuple(task["shards"]) if task["shards"] else None

    def prepare(self) -> None:
        pass

    def reset_peaks(self) -> None:
        pass

    def run(self) -> None:
        raise NotImplementedError

    def report(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class LsioJob(Job):
    """``dask_lsio.rechunk(...).execute()``, threaded scheduler, defaults, lsio.strict."""

    def prepare(self) -> None:
        import dask_lsio

        self.dask_lsio = dask_lsio
        self.plan: Any = None
        dask_lsio.get_engine()  # this process's engine (rings, threads) before the clock
        warm_up_threads()

    def run(self) -> None:
        import dask

        t = self.task
        with dask.config.set({"lsio.strict": True, "scheduler": "threads"}):
            self.plan = self.dask_lsio.rechunk(t["source"], self.chunks, t["target"],
                                               t["max_mem"], temp=t["temp"],
                                               shards=self.shards)
            self.plan.execute()

    def report(self) -> dict:
        p = self.plan
        stages = [{k: getattr(s, k, None) for k in ("block", "tasks", "memory",
                                                    "read_amplification")}
                  for s in getattr(p, "stages", ())]
        return {"plan": repr(p), "tasks": getattr(p, "tasks", None),
                "memory_per_task": getattr(p, "memory_per_task", None), "stages": stages,
                "version": self.dask_lsio.__version__, "file": self.dask_lsio.__file__}


def dask_target_kwargs(chunks: tuple, shards: tuple | None) -> dict:
    """zarr.create_array's options of a target as dask's to_zarr takes them."""
    kwargs = dict(chunks=chunks, compressors=blosc_lz4(), fill_value=0.0, zarr_format=3)
    return kwargs | ({"shards": shards} if shards else {})


class DaskJob(Job):
    """``da.from_zarr(src).rechunk(blocks, method=...)`` then ``da.to_zarr``; blocks are the
    target's shards where it has them (dask's to_zarr loses data in smaller blocks)."""

    method = "tasks"

    def prepare(self) -> None:
        import dask.array  # noqa: F401

        warm_up_threads()

    def run(self) -> None:
        import dask
        import dask.array as da

        t = self.task
        x = da.from_zarr(t["source"])
        y = x.rechunk(self.shards or self.chunks, method=self.method)
        with dask.config.set(scheduler="threads"):
            da.to_zarr(y, t["target"], **dask_target_kwargs(self.chunks, self.shards))

    def report(self) -> dict:
        import dask

        return {"dask": dask.__version__}


class P2PJob(DaskJob):
    """The same with ``method="p2p"`` on a 2-worker LocalCluster, started before the clock;
    peak RSS: the worker processes' (and the client's, which also runs the scheduler)."""

    method = "p2p"

    def prepare(self) -> None:
        import distributed

        self.cluster = distributed.LocalCluster(**CLUSTER)
        self.client = distributed.Client(self.cluster)
        self.client.submit(int, 0).result()  # the workers are up and compute
        self.before: dict = {}
        self.exact = True

    def reset_peaks(self) -> None:
        self.client.run(gc.collect)
        self.exact = all(self.client.run(reset_peak_rss).values())
        self.before = self.client.run(rss_kib, "VmRSS")

    def run(self) -> None:
        import dask.array as da

        t = self.task
        x = da.from_zarr(t["source"])
        y = x.rechunk(self.shards or self.chunks, method="p2p")
        da.to_zarr(y, t["target"], **dask_target_kwargs(self.chunks, self.shards))  # on client

    def report(self) -> dict:
        import distributed

        peaks = self.client.run(peak_rss_kib, self.exact)
        worst = max(peaks, key=peaks.get)
        return {"worker_peaks": {k: v * 1024 for k, v in peaks.items()},
                "worker_before": {k: v * 1024 for k, v in self.before.items()},
                "peak_worker": worst, "distributed": distributed.__version__}

    def close(self) -> None:
        for part in ("client", "cluster"):  # whatever was started
            if hasattr(self, part):
                getattr(self, part).close()


class CeilingJob(Job):
    """Every source chunk file read (engine batches of 32 files, one read each: the buffers
    are recycled; measured faster than one batch of all, or a plain ``readinto`` loop, warm
    and cold) and every object of a zarr-python-written target (held in memory) written in
    one engine batch (temporary names renamed into place): no decode, regrouping or encode."""

    def prepare(self) -> None:
        from dask_lsio import get_engine

        self.engine = get_engine()
        t = self.task
        self.paths = object_paths(t["source"], tuple(t["shape"]), tuple(t["source_chunks"]))
        self.objects = stored_objects(Path(t["reference"]))
        self.hint = max(os.stat(p).st_size for p in self.paths)
        self.moved = (0, 0)

    def run(self) -> None:
        read = 0
        for i in range(0, len(self.paths), CEILING_BATCH):  # recycled buffers, one read each
            for _, buf in self.engine.read_ranges(self.paths[i:i + CEILING_BATCH],
                                                  size_hint=self.hint):
                read += len(buf)
        target = self.task["target"]
        written = sum(self.engine.write([(os.path.join(target, rel), blob)
                                         for rel, blob in self.objects]))
        self.moved = (read, written)

    def report(self) -> dict:
        return {"read": self.moved[0], "written": self.moved[1], "engine": self.engine.kind,
                "objects": len(self.objects)}


JOBS = {"dask_lsio": LsioJob, "dask-tasks": DaskJob, "dask-p2p": P2PJob, "ceiling": CeilingJob}


def run_task(task: dict) -> dict:
    """A worker's one timed run (the ``--worker`` side of ``bench_rechunk.py``)."""
    import zarr  # noqa: F401  (imported before the baseline RSS, as by every reader)

    job = JOBS[task["reader"]](task)
    try:
        job.prepare()
        touch_memory(task["max_mem"])  # see harness.memory.touch_memory; the same for all
        if task["cold"]:
            drop_caches()
        gc.collect()
        job.reset_peaks()
        exact = reset_peak_rss()
        before = rss_kib("VmRSS")
        t0 = time.perf_counter()
        job.run()
        seconds = time.perf_counter() - t0
        peak = peak_rss_kib(exact)
        out = {"seconds": seconds, "rss_before": before * 1024, "rss_peak": peak * 1024,
               "rss_exact": exact} | job.report()
    finally:
        job.close()
    if task["reader"] == "dask-p2p":  # the row's peak: the worst worker's; the client's apart
        w = out["peak_worker"]
        out |= {"client_peak": out["rss_peak"], "client_before": out["rss_before"],
                "rss_peak": out["worker_peaks"][w], "rss_before": out["worker_before"][w]}
    return out


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


def one_task(p: Plan, label: str, state: str, target: Path, reference: Path) -> dict:
    name, _ = split_reader(label)
    chunks, shards = p.size.target(p.variant)
    return {"reader": name, "source": str(p.src.v2 if name == "rechunker" else p.src.v3),
            "target": str(target), "temp": str(target) + "-temp",
            "target_chunks": list(chunks), "shards": list(shards) if shards else None,
            "shape": list(p.size.shape), "source_chunks": list(p.size.source_chunks),
            "max_mem": p.size.max_mem, "cold": state == "cold", "reference": str(reference)}


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
