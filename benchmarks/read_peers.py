"""The read benchmark's readers, each served by a worker process (``bench_read.py``).

A worker runs ``bench_read.py --worker NAME``: :func:`worker_setup` imports and configures
the reader (a :class:`Peer`), then every request is one run of a :class:`Job` (a dataset and
a workload), timed in the worker and summarised after the clock stopped (:func:`run_job`).
With ``--baseline`` the same code runs in a worker importing the other dask_lsio.
"""

from __future__ import annotations

import gc
import importlib.metadata
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.cpu import Stopwatch
from harness.memory import peak_rss_kib, reset_peak_rss, rss_kib, touch_memory
from harness.zarr_data import NY, NX, XR_VAR, Dataset, object_paths, make_slice

SCAN_SLAB = 64  # axis-0 slab of the zarr / zarrs / tensorstore scans
WINDOW = 64  # a selection is [t, y0:y0+WINDOW, x0:x0+WINDOW]
SELECT_SEED = 42
EMPTY = 2**64 - 1  # shard index entry of a missing inner chunk


# -- workloads ---------------------------------------------------------------------------

def make_selections(n0: int, n: int) -> list[tuple[int, int, int]]:
    """``n`` window origins (t, y0, x0), the same for every reader and dataset."""
    rng = np.random.default_rng(SELECT_SEED)
    t = rng.integers(0, n0, n)
    y = rng.integers(0, NY - WINDOW, n, endpoint=True)
    x = rng.integers(0, NX - WINDOW, n, endpoint=True)
    return list(zip(t.tolist(), y.tolist(), x.tolist()))


def expected_selection_sums(sels: list[tuple[int, int, int]]) -> np.ndarray:
    """The float64 sum of every selection, from the data generator (not from a reader)."""
    slices: dict[int, np.ndarray] = {}
    out = np.empty(len(sels))
    for i, (t, y, x) in enumerate(sels):
        if t not in slices:
            slices[t] = make_slice(t)
        out[i] = slices[t][y : y + WINDOW, x : x + WINDOW].sum(dtype=np.float64)
    return out


@dataclass(frozen=True)
class Job:
    """What a worker reads: one dataset, one workload (sent over the pipe as JSON)."""

    root: str
    name: str
    shape: list[int]
    chunks: list[int]
    shards: list[int] | None
    sels: list[list[int]] | None = None
    check: bool = False
    xr: str | None = None  # the xarray view (xsum)
    out: bool = False  # read into the reader's own, reused output (array-out)


def make_job(ds: Dataset, workload: str, sels: list, check: bool) -> Job:
    """The job of ``workload`` on ``ds``; ``check`` asks decode-only to sum as well."""
    s = ds.spec
    return Job(
        str(ds.root), s.name, list(s.shape), list(s.chunks),
        list(s.shards) if s.shards else None,
        [list(x) for x in sels] if workload == "select" else None, check,
        str(ds.xr_root) if workload == "xsum" and ds.xr_root else None,
        workload == "array-out",
    )


# -- worker side: the readers ------------------------------------------------------------


def slab_scan(start: Callable[[int, int], Any], n0: int) -> float:
    """Sum of an array read in axis-0 slabs of ``SCAN_SLAB``.

    ``start(t0, t1)`` starts reading a slab and returns a future; the next slab's read is
    started before the current one is awaited and summed.
    """
    bounds = [(t, min(t + SCAN_SLAB, n0)) for t in range(0, n0, SCAN_SLAB)]
    total = 0.0
    pending = start(*bounds[0])
    for nxt in bounds[1:] + [None]:
        following = start(*nxt) if nxt else None
        total += float(pending.result().sum())
        pending = following
    return total


class Peer:
    """A reader, living in its own worker process.

    ``setup`` imports and configures it (raising makes it "not available") and returns its
    versions and settings; ``prepare`` runs untimed before every run; ``scan`` and ``xsum``
    return the sum (None: not computed) and the decoded bytes; ``select`` returns one array
    per window; ``array`` returns the whole array.
    """

    name = ""
    detail = ""  # what a run used (blocks, pipeline), reported with each reply

    def setup(self) -> dict:
        return {}

    def prepare(self, job: Job) -> None:
        pass

    def scan(self, job: Job) -> tuple[float | None, int]:
        raise NotImplementedError

    def select(self, job: Job) -> list[np.ndarray]:
        raise NotImplementedError(f"{self.name} has no selection workload")

    def array(self, job: Job) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no whole-array workload")

    def xsum(self, job: Job) -> tuple[float | None, int]:
        raise NotImplementedError(f"{self.name} has no xarray workload")


def xarray_sum(opened: Any) -> tuple[float, int]:
    """The sum of an xarray Dataset's data variable, computed by dask (threaded)."""
    var = opened[XR_VAR]
    return float(var.sum().compute()), var.nbytes


class DaskPeer(Peer):
    """``dask_lsio.from_zarr`` or ``dask.array.from_zarr`` on the threaded scheduler."""

    def __init__(self, lsio: bool) -> None:
        self.lsio = lsio
        self.name = "dask_lsio" if lsio else "dask"

    def setup(self) -> dict:
        import dask
        import dask.array as da

        dask.config.set({"scheduler": "threads"})
        info = {"dask": dask.__version__, "scheduler": "threads", "workers": os.cpu_count()}
        if not self.lsio:
            self.open = da.from_zarr
            return info | {"chunks": "default (the zarr chunks)"}
        import dask_lsio

        self.open = getattr(dask_lsio, "from_zarr", None)
        if self.open is None:
            raise RuntimeError("dask_lsio.from_zarr does not exist yet")
        dask.config.set({"lsio.strict": True})
        engine = type(dask_lsio.get_engine()).__name__
        return info | {"dask_lsio": dask_lsio.__version__, "engine": engine, "lsio.strict": True}

    def scan(self, job: Job) -> tuple[float | None, int]:
        a = self.open(job.root)
        self.detail = f"blocks {'x'.join(map(str, a.chunksize))}, {a.npartitions:,} tasks"
        return float(a.sum().compute()), a.nbytes

    def select(self, job: Job) -> list[np.ndarray]:
        a = self.open(job.root)
        return [a[t, y : y + WINDOW, x : x + WINDOW].compute() for t, y, x in job.sels]

    def xsum(self, job: Job) -> tuple[float | None, int]:
        """``dask_lsio.open_zarr``: xarray's dataset, our arrays (lsio only)."""
        import dask_lsio

        if not self.lsio:
            raise NotImplementedError("plain xarray is the zarr reader's xsum")
        opened = dask_lsio.open_zarr(job.xr, consolidated=False)
        self.detail = f"dask_lsio.open_zarr, {opened[XR_VAR].data.npartitions:,} tasks"
        return xarray_sum(opened)


class ZarrPeer(Peer):
    """zarr-python, with its own codec pipeline or zarrs'."""

    PIPELINES = {
        "zarr": {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"},
        "zarrs": {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline", "codec_pipeline.strict": True},
        "lsio-pipeline": {"codec_pipeline.path": "dask_lsio.zarr.LSIOCodecPipeline"},
    }

    def __init__(self, name: str) -> None:
        self.name = name
        self.pool = ThreadPoolExecutor(1)  # the slab read ahead

    def setup(self) -> dict:
        import zarr

        info = {"zarr": zarr.__version__}
        if self.name == "zarrs":
            import zarrs

            info["zarrs"] = zarrs.__version__
        if self.name == "lsio-pipeline":
            import dask
            import dask_lsio

            dask.config.set({"lsio.strict": True})  # raise rather than delegate (codecs, store)
            info |= {"dask_lsio": dask_lsio.__version__, "lsio.strict": True}
        zarr.config.set(self.PIPELINES[self.name])
        keys = ["codec_pipeline", "threading.max_workers", "async.concurrency"]
        return info | {k: zarr.config.get(k) for k in keys}

    def open(self, job: Job, path: str | None = None) -> Any:
        """Open read-only; make sure the intended pipeline is the one in use."""
        import zarr

        z = zarr.open_array(path or job.root, mode="r")
        pipeline = type(z._async_array.codec_pipeline).__name__
        wanted = self.PIPELINES[self.name]["codec_pipeline.path"].rsplit(".", 1)[1]
        if pipeline != wanted:
            raise RuntimeError(f"codec pipeline is {pipeline}, not {wanted}")
        self.detail = f"pipeline {pipeline}"
        return z

    def scan(self, job: Job) -> tuple[float | None, int]:
        z = self.open(job)
        total = slab_scan(lambda a, b: self.pool.submit(z.__getitem__, slice(a, b)), z.shape[0])
        return total, z.nbytes

    def select(self, job: Job) -> list[np.ndarray]:
        z = self.open(job)  # t:t+1, not t: zarrs 0.2.3 (strict) rejects an integer index
        # with a window across chunks; the same form for zarr, for the same work
        return [z[t : t + 1, y : y + WINDOW, x : x + WINDOW][0] for t, y, x in job.sels]

    def array(self, job: Job) -> np.ndarray:
        """``z[:]``; array-out: ``z.get_basic_selection(..., out=)`` into a reused array."""
        z = self.open(job)
        if not job.out:
            return z[:]
        from zarr.core.buffer import default_buffer_prototype

        out = default_buffer_prototype().nd_buffer.from_numpy_array(self.out)
        return z.get_basic_selection(Ellipsis, out=out)

    def prepare(self, job: Job) -> None:
        """Untimed: xsum: check that xarray's arrays will get the intended pipeline;
        array-out: the output array, allocated and written once per process."""
        if job.xr:
            self.open(job, os.path.join(job.xr, XR_VAR))
        if job.out and getattr(self, "out", np.empty(0)).shape != tuple(job.shape):
            self.out = np.zeros(job.shape, np.float32)

    def xsum(self, job: Job) -> tuple[float | None, int]:
        """``xarray.open_zarr`` with this reader's codec pipeline, default chunks."""
        import xarray as xr

        opened = xr.open_zarr(job.xr, consolidated=False)
        self.detail += f", xarray.open_zarr, {opened[XR_VAR].data.npartitions:,} tasks"
        return xarray_sum(opened)


class TensorstorePeer(Peer):
    """tensorstore's zarr3 driver on the file kvstore, default context."""

    name = "tensorstore"

    def setup(self) -> dict:
        import tensorstore as ts

        self.ts = ts
        version = importlib.metadata.version("tensorstore")  # no __version__
        return {"tensorstore": version, "context": "default (no cache pool)"}

    def open(self, job: Job) -> Any:
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": job.root}}
        return self.ts.open(spec, read=True).result()

    def scan(self, job: Job) -> tuple[float | None, int]:
        s = self.open(job)
        total = slab_scan(lambda a, b: s[a:b].read(), s.shape[0])
        return total, math.prod(s.shape) * s.dtype.numpy_dtype.itemsize

    def select(self, job: Job) -> list[np.ndarray]:
        s = self.open(job)
        futures = [s[t, y : y + WINDOW, x : x + WINDOW].read() for t, y, x in job.sels]
        return [f.result() for f in futures]

    def array(self, job: Job) -> np.ndarray:
        return self.open(job).read().result()


class DecodeOnlyPeer(Peer):
    """The warm ceiling: numcodecs decodes chunks already in memory on every core."""

    name = "decode-only"

    def setup(self) -> dict:
        import numcodecs
        import numcodecs.blosc

        numcodecs.blosc.use_threads = False  # our threads parallelise, not blosc's
        self.numcodecs = numcodecs
        self.threads = os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.threads)
        self.loaded: dict[str, tuple[list[Any], Any]] = {}
        return {"numcodecs": numcodecs.__version__, "threads": self.threads}

    def prepare(self, job: Job) -> None:
        """Read every chunk's bytes once (untimed); B: cut inner chunks out of the shards."""
        if job.root in self.loaded:
            return
        self.loaded.clear()  # one dataset in memory at a time
        if job.name == "C":
            raise NotImplementedError("nothing to decode in C")
        codec = self.numcodecs.Zstd() if job.shards else self.numcodecs.Blosc()
        paths = object_paths(job.root, job.shape, job.shards or job.chunks)
        blobs = [Path(p).read_bytes() for p in paths]
        if job.shards:
            per_shard = math.prod(s // c for s, c in zip(job.shards, job.chunks))
            blobs = [c for b in blobs for c in inner_chunks(b, per_shard)]
        self.loaded[job.root] = (blobs, codec)

    def scan(self, job: Job) -> tuple[float | None, int]:
        chunks, codec = self.loaded[job.root]
        nbytes = math.prod(job.chunks) * 4
        cuts = np.linspace(0, len(chunks), 16 * self.threads + 1).astype(int).tolist()

        def batch(lo: int, hi: int) -> float:
            out = np.empty(nbytes // 4, dtype=np.float32)
            total = 0.0
            for c in chunks[lo:hi]:
                codec.decode(c, out=out)
                if job.check:
                    total += float(out.sum(dtype=np.float64))
            return total

        futures = [self.pool.submit(batch, lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:])]
        total = sum(f.result() for f in futures)
        return (total if job.check else None), len(chunks) * nbytes


def inner_chunks(shard: bytes, n: int) -> list[memoryview]:
    """The inner chunks of a shard, by its index at the end (n x (offset, nbytes) + crc32c)."""
    index = np.frombuffer(shard, dtype="<u8", count=2 * n, offset=len(shard) - 16 * n - 4)
    view = memoryview(shard)
    return [view[o : o + k] for o, k in index.reshape(n, 2).tolist() if o != EMPTY]


def make_peer(name: str) -> Peer:
    """The reader called ``name``."""
    if name in ("dask_lsio", "dask"):
        return DaskPeer(lsio=name == "dask_lsio")
    if name in ZarrPeer.PIPELINES:
        return ZarrPeer(name)
    return {"tensorstore": TensorstorePeer, "decode-only": DecodeOnlyPeer}[name]()


def run_job(peer: Peer, op: str, job: Job) -> dict:
    """Run one timed read; the result is summarised after the clock stopped."""
    peer.prepare(job)
    if op == "array":
        touch_memory(math.prod(job.shape) * 4)  # float32; see touch_memory
    gc.collect()
    exact = reset_peak_rss()
    rss_before = rss_kib("VmRSS")
    clock = Stopwatch()
    if op in ("scan", "xsum"):
        value, nbytes = getattr(peer, op)(job)
        timing = clock.stop()
        reply = {"value": value, "nbytes": nbytes}
    elif op in ("array", "array-out"):
        out = peer.array(job)
        timing = clock.stop()
        reply = {"value": float(out.sum(dtype=np.float64)), "nbytes": out.nbytes}
        del out
    else:
        outs = peer.select(job)
        timing = clock.stop()
        reply = {
            "sums": [float(np.asarray(o).sum(dtype=np.float64)) for o in outs],
            "shapes_ok": all(np.shape(o) == (WINDOW, WINDOW) for o in outs),
            "nbytes": int(sum(np.asarray(o).nbytes for o in outs)),
        }
    return reply | timing | {
        "ok": True, "rss_before": rss_before * 1024,
        "rss_peak": peak_rss_kib(exact) * 1024, "rss_exact": exact, "detail": peer.detail,
    }


class Served:
    """The worker's side of the pipe: one reader, one :class:`Job` per request."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def handle(self, request: dict) -> dict:
        return run_job(self.peer, request["op"], Job(**request["job"]))


def worker_setup(name: str) -> tuple[Served, dict]:
    """Import and configure reader ``name`` (raising makes it "not available")."""
    peer = make_peer(name)
    return Served(peer), peer.setup()
