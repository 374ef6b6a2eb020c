"""The rechunk benchmark's readers (``bench_rechunk.py``), each timed in a fresh worker
process, and the side environment rechunker runs in (``rechunker_run.py``).

A worker process gets one task (a JSON dict: reader, source, target, temp, chunks, shards,
max_mem, cold) and prints one JSON reply: the seconds of the timed part, the process's RSS
before it and its high-water mark during it, and what the reader reports about itself.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import drop_caches
from harness.memory import peak_rss_kib, reset_peak_rss, rss_kib, touch_memory
from harness.zarr_data import object_paths, stored_objects

RECHUNKER = "0.5.4"
# the rechunker side venv: pinned to what works on Python 3.11 (zarr<3 needs numcodecs<0.16)
RECHUNKER_REQS = [f"rechunker=={RECHUNKER}", "zarr==2.18.7", "numcodecs==0.15.2"]
RECHUNKER_SCRIPT = Path(__file__).resolve().with_name("rechunker_run.py")
CLUSTER = dict(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
               dashboard_address=None, memory_limit=0)
CEILING_BATCH = 32  # source files per engine read batch of the ceiling


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
        touch_memory(task["touch"])  # the same for all: rechunk_runs.touch_bytes
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
