#!/usr/bin/env python
"""Read benchmark of dask-lsio: Zarr arrays into numpy, against the peers, warm and cold.

Three Zarr v3 arrays of the same float32 data, shape 1024 x 512 x 512 (1 GiB; ``--quick``:
128 x 512 x 512), written once with zarr-python:

(A) chunks 1x128x128 (16,384 chunk files), blosc-lz4 (``BloscCodec(cname="lz4", clevel=5,
    shuffle="shuffle")``);
(B) the same inner chunks zstd (``ZstdCodec(level=3)``) in shards of 16x512x512 (64 files);
(C) chunks 1x128x128, uncompressed.

The data is a smooth field (a travelling wave pattern around 285) plus Gaussian noise
(sigma 0.25), rounded to 0.01 like a quantised sensor: it compresses about 1.6x with
blosc-lz4 and 1.85x with zstd. Four workloads:

``scan``    the sum of the whole array (every reader but lsio-pipeline);
``select``  200 selections ``[t, y0:y0+64, x0:x0+64]`` at random positions (fixed seed),
            each touching 1 to 4 chunks;
``array``   ``zarr.open_array(path)[:]``, the whole array into one numpy array, with zarr's
            default pipeline (zarr), zarrs' and ours (lsio-pipeline); tensorstore's
            ``read()``; warm, A and B (issue 6). Memory is warm too: just before the clock
            starts, the worker writes and frees as much memory as the output needs (see
            ``touch_memory``: on this VM the first write of memory freed seconds earlier
            costs 1.2-2.6 s per GiB, memory freed a moment ago 0.13 s); even so the page
            faults of a fresh 1 GiB output make these runs vary by 2-3x on this VM;
``array-out`` the same read into the reader's own output array, allocated and written once
            per process: ``z.get_basic_selection(..., out=NDBuffer)`` (zarr, zarrs,
            lsio-pipeline): the reader's own speed, without the page faults of its output;
``xsum``    ``xarray.open_zarr(view, consolidated=False)["v"].sum().compute()`` with zarr's
            default pipeline (zarr: plain xarray), zarrs' and ours (lsio-pipeline), against
            ``dask_lsio.open_zarr(view, ...)`` (dask_lsio); warm, A and B. The view is a Zarr
            group beside the dataset (``xr-A-1024``) holding the array as variable ``v`` with
            dimension names, its chunks a symlink to the dataset's, and an hourly CF ``time``
            coordinate; xarray's default chunks (``chunks="auto"``) apply.

Every timed run opens the array (included in its time), so a cold run also reads
``zarr.json``. Readers:

``dask_lsio``    ``dask_lsio.from_zarr(path).sum().compute()``; selections
                 ``a[sel].compute()`` one after the other; threaded scheduler, defaults,
                 ``lsio.strict`` on (a silent fallback to zarr-python would be no dask-lsio
                 number). A reader that does not exist or raises is "not available".
``dask``         ``dask.array.from_zarr(path)``, default chunks (the zarr chunks, so one
                 task per 1x128x128 chunk, also for B), otherwise the same as above
``zarr``         zarr-python 3, default codec pipeline and concurrency settings; a
                 selection is read as ``z[t:t+1, ...][0]`` (see zarrs)
``zarrs``        zarr-python with ``codec_pipeline.path = zarrs.ZarrsCodecPipeline`` and
                 ``codec_pipeline.strict = True`` (raise instead of silently falling back
                 to the Python pipeline); the rest of its settings at their defaults.
                 zarrs 0.2.3 rejects ``z[t, y0:y1, x0:x1]`` when the window crosses chunks
                 (UnsupportedVIndexingError), so selections use ``z[t:t+1, ...][0]``
``lsio-pipeline`` zarr-python with ``codec_pipeline.path =
                 dask_lsio.zarr.LSIOCodecPipeline`` and ``lsio.strict`` on (array, xsum)
``tensorstore``  ``ts.open({"driver": "zarr3", "kvstore": {"driver": "file", ...}})``,
                 default context (no cache pool); selections are all issued at once and
                 then awaited (its futures API); zarr/zarrs read them one after the other
``decode-only``  the warm ceiling, A and B only: every chunk's bytes already in memory (B:
                 the inner chunks cut out of the shards by their index beforehand),
                 numcodecs decodes them on ``os.cpu_count()`` threads (a ThreadPoolExecutor
                 over batches of chunks, blosc's own threads off) into a per-thread buffer:
                 no IO, no copy into an output array, no sum
``fio``          the IO ceiling: fio reads every chunk (shard) file once, with the job of
                 ``bench_io.py`` (io_uring, one read per file, page-cache warm / O_DIRECT
                 cold); it reads the stored bytes, and its row shows the decoded GB/s a
                 reader would reach if it took only fio's time

The zarr, zarrs and tensorstore scans read slabs of 64 along axis 0 (64 MiB, a whole number
of B's shards) with the next slab's read in flight while one is summed, rather than
``z[:]``: memory stays bounded (about three slabs), as dask's is, and each slab is 1,024
chunks, enough to keep their internal concurrency busy.

Each reader runs in its own worker process for the whole benchmark, driven over a pipe:
global settings (zarr's codec pipeline, dask config, thread pools) cannot leak from one
reader to another, and each process's memory is its own. Peak RSS is per timed run: the
worker resets its high-water mark (``/proc/self/clear_refs``, "5") just before the run and
reads ``VmHWM`` after it, so the number includes what the process already holds (imports,
pools) plus what the run added; without clear_refs it falls back to ``ru_maxrss``, the peak
of the worker's life. Workloads run one after another; within a workload, readers take
turns in every repeat and the order of turns rotates from one repeat to the next, so drift
and the previous run's effects hit them alike;
cold runs drop the page cache (``sync; echo 3 > /proc/sys/vm/drop_caches``, root only)
before each timed run; warm runs pre-read the dataset. Each (dataset, reader, workload)
first runs once untimed (selections: the first 20), which also checks the result. Every
timed run is checked too: the scan's sum against the sum computed when the data was
generated (the whole array's sum after the clock stopped), each selection's sum against
the generator's values. GB/s are decimal, of decoded output (1 GiB = 1.074 GB for a full
scan); "x base", "x zarrs" compare with those readers in the same dataset, cache state and
workload (base: dask for scan and select, the default pipeline for array and xsum); "x ceil"
compares with decode-only (warm, A and B; for array too), else fio.

Run (from the repository root, with dask-lsio and the ``bench`` extra installed)::

    python benchmarks/bench_read.py                 # full: 5 repeats, ~25 min on 2 cores
    python benchmarks/bench_read.py --quick         # 128 x 512 x 512, 2 repeats, ~2 min
    python benchmarks/bench_read.py --only A --readers dask_lsio,zarrs --no-cold
    python benchmarks/bench_read.py --workloads array,xsum --no-cold   # issue 6's rows

The datasets are generated once under ``--data-dir`` (default ``benchmarks/data``) and
reused while their manifest matches. Raw timings, medians and every reader's versions and
settings go to ``--json`` (default ``bench-results/bench_read.json``). The last lines
print the issue's "done when" checks.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_io  # noqa: E402  (same folder: fio job, page cache control, Check)

REPO = Path(__file__).resolve().parents[1]
MANIFEST_VERSION = 1
NY = NX = 512
CHUNK = (1, 128, 128)
SHARD = (16, 512, 512)
SLAB = 64  # axis-0 slab of the zarr / zarrs / tensorstore scans
N_SELECT = 200
WINDOW = 64  # a selection is [t, y0:y0+WINDOW, x0:x0+WINDOW]
WARMUP_SELECT = 20  # selections in the untimed first run (the timed runs do all)
DATA_SEED = 7
SELECT_SEED = 42
EMPTY = 2**64 - 1  # shard index entry of a missing inner chunk
READERS = [
    "dask_lsio", "dask", "zarr", "zarrs", "lsio-pipeline", "tensorstore", "decode-only", "fio",
]
WORKLOADS = ["scan", "select", "array", "array-out", "xsum"]
# who runs which workload; the rest of a workload's rows are "-" (decode-only: warm A, B)
RUNS = {
    "scan": {"dask_lsio", "dask", "zarr", "zarrs", "tensorstore", "decode-only"},
    "select": {"dask_lsio", "dask", "zarr", "zarrs", "tensorstore"},
    "array": {"zarr", "zarrs", "lsio-pipeline", "tensorstore"},
    "array-out": {"zarr", "zarrs", "lsio-pipeline"},
    "xsum": {"dask_lsio", "zarr", "zarrs", "lsio-pipeline"},
}
# the row each workload's "x base" compares with: the stack its users have today
BASE = {"scan": "dask", "select": "dask", "array": "zarr", "array-out": "zarr", "xsum": "zarr"}
XR_VAR = "v"  # the data variable of the xarray views
XR_DIMS = ["time", "y", "x"]


# -- datasets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a dataset holds; its manifest stores exactly these fields.

    Parameters
    ----------
    name : str
        "A", "B" or "C".
    codec : str
        "blosc-lz4", "zstd" (in shards) or "none".
    shape : tuple of int
    shards : tuple of int, optional
        Shard shape (B); the chunk shape is always ``CHUNK``.
    seed : int
        Seed of the noise, so the data is reproducible (and the same in A, B and C).
    """

    name: str
    codec: str
    shape: tuple[int, int, int]
    shards: tuple[int, int, int] | None = None
    chunks: tuple[int, int, int] = CHUNK
    seed: int = DATA_SEED
    version: int = MANIFEST_VERSION

    @property
    def dirname(self) -> str:
        """The dataset's directory under ``--data-dir``: quick and full ones coexist."""
        return f"read-{self.name}-{self.shape[0]}"

    @property
    def nbytes(self) -> int:
        """Decoded size of the whole array."""
        return math.prod(self.shape) * 4

    @property
    def cell(self) -> tuple[int, int, int]:
        """The shape of one stored object: a shard (B) or a chunk."""
        return self.shards or self.chunks

    def label(self) -> str:
        """The table's dataset column, e.g. "A blosc-lz4"."""
        return f"{self.name} {self.codec}" + (" shards" if self.shards else "")

    def describe(self) -> str:
        """One line for the header, e.g. "A: 1024x512x512 f4, chunks 1x128x128, ..."."""
        dims = "x".join(map(str, self.shape))
        text = f"{self.name}: {dims} float32, chunks {'x'.join(map(str, self.chunks))}"
        if self.shards:
            text += f" in shards {'x'.join(map(str, self.shards))}"
        return f"{text}, {self.codec}, {math.prod(grid(self.shape, self.cell)):,} files"


@dataclass
class Dataset:
    """A dataset on disk: its objects (chunk or shard files) and the checks' reference."""

    spec: Spec
    root: Path
    paths: list[str]
    sizes: np.ndarray
    total_sum: float
    xr_root: Path | None = None  # the xarray view of the array (see ``xarray_view``)

    @property
    def stored_bytes(self) -> int:
        return int(self.sizes.sum())


def make_specs(quick: bool) -> dict[str, Spec]:
    """The three datasets of the issue, 128 instead of 1024 along axis 0 for ``--quick``."""
    shape = (128 if quick else 1024, NY, NX)
    return {
        "A": Spec("A", "blosc-lz4", shape),
        "B": Spec("B", "zstd", shape, shards=SHARD),
        "C": Spec("C", "none", shape),
    }


def grid(shape: tuple[int, ...], cell: tuple[int, ...]) -> tuple[int, ...]:
    """How many cells fit along each axis (the last may be partial)."""
    return tuple(-(-n // c) for n, c in zip(shape, cell))


def object_paths(root: str | Path, shape: tuple[int, ...], cell: tuple[int, ...]) -> list[str]:
    """Zarr v3 default keys ``c/<i>/<j>/<k>`` of every cell, in C order."""
    return [f"{root}/c/" + "/".join(map(str, idx)) for idx in np.ndindex(*grid(shape, cell))]


def make_slice(t: int, seed: int = DATA_SEED) -> np.ndarray:
    """Time step ``t`` of the data: a smooth travelling pattern plus noise, to 0.01.

    Each step is computed on its own (own noise stream), so any slab of the array is the
    same whatever slabs it is generated in.
    """
    y = np.arange(NY, dtype=np.float32)[:, None]
    x = np.arange(NX, dtype=np.float32)[None, :]
    wave = np.sin(2 * np.pi * (x / 301 + t / 97)) * np.cos(2 * np.pi * (y / 211 - t / 131))
    ripple = np.sin(2 * np.pi * (x + y) / 57 + t / 23)
    smooth = (285 + 12 * wave + 4 * ripple).astype(np.float32)
    noise = np.random.default_rng([seed, t]).standard_normal((NY, NX), dtype=np.float32)
    return np.round(smooth + np.float32(0.25) * noise, 2)


def make_slab(t0: int, t1: int, seed: int = DATA_SEED) -> np.ndarray:
    """Time steps ``t0`` to ``t1`` of the data."""
    return np.stack([make_slice(t, seed) for t in range(t0, t1)])


def prepare_datasets(specs: list[Spec], data_dir: Path) -> list[Dataset]:
    """Reuse each dataset whose manifest matches; write the others in one pass over the data."""
    missing = [s for s in specs if _manifest(data_dir / s.dirname, s) is None]
    if missing:
        t0 = time.perf_counter()
        _generate(missing, data_dir)
        names = ", ".join(s.name for s in missing)
        print(f"  generated {names} in {data_dir} ({time.perf_counter() - t0:.1f} s)")
    out = []
    for s in specs:
        root = data_dir / s.dirname
        manifest = _manifest(root, s)
        if manifest is None:
            raise RuntimeError(f"dataset {root} was written but its manifest does not match")
        paths = object_paths(root, s.shape, s.cell)
        sizes = np.array([os.stat(p).st_size for p in paths], dtype=np.int64)
        view = xarray_view(root, data_dir / f"xr-{s.name}-{s.shape[0]}")
        out.append(Dataset(s, root, paths, sizes, manifest["sum"], view))
    return out


def xarray_view(array_root: Path, view: Path) -> Path:
    """An xarray-readable Zarr v3 group over the array at ``array_root``, without a copy.

    The group holds the array as variable ``XR_VAR`` (its metadata plus dimension names,
    its ``c/`` folder a symlink to the array's chunks) and a CF-encoded hourly ``time``
    coordinate, as a forecast or satellite dataset has. Rebuilt on every run: it is small
    and then always points at the current data.
    """
    import zarr

    shutil.rmtree(view, ignore_errors=True)
    group = zarr.open_group(str(view), mode="w", zarr_format=3)
    meta = json.loads((array_root / "zarr.json").read_text())
    time_axis = group.create_array("time", shape=(meta["shape"][0],), dtype="int64",
                                   chunks=(meta["shape"][0],), dimension_names=["time"],
                                   attributes={"units": "hours since 2020-01-01",
                                               "calendar": "proleptic_gregorian"})
    time_axis[:] = np.arange(meta["shape"][0])
    var = view / XR_VAR
    var.mkdir()
    (var / "zarr.json").write_text(json.dumps(meta | {"dimension_names": XR_DIMS}))
    (var / "c").symlink_to(os.path.relpath(array_root / "c", var))
    return view


def _manifest(root: Path, spec: Spec) -> dict | None:
    """The manifest of ``root`` if it describes ``spec`` and a sample of its files exist."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("spec") != json.loads(json.dumps(asdict(spec))):
        return None
    paths = object_paths(root, spec.shape, spec.cell)
    picks = np.random.default_rng().choice(len(paths), min(64, len(paths)), replace=False)
    if not all(os.path.isfile(paths[i]) for i in [*picks.tolist(), len(paths) - 1]):
        return None
    return manifest


def _create_array(spec: Spec, root: Path) -> Any:
    """An empty zarr-python array of ``spec`` at ``root`` (replacing what was there)."""
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    compressors: Any = {
        "blosc-lz4": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
        "zstd": ZstdCodec(level=3),
        "none": None,
    }[spec.codec]
    shutil.rmtree(root, ignore_errors=True)
    return zarr.create_array(
        store=str(root), shape=spec.shape, dtype="float32", chunks=spec.chunks,
        shards=spec.shards, compressors=compressors, fill_value=0.0, zarr_format=3,
    )


def _generate(specs: list[Spec], data_dir: Path) -> None:
    """Write the data into every array of ``specs``, then their manifests (last, so an
    interrupted run regenerates)."""
    arrays = [_create_array(s, data_dir / s.dirname) for s in specs]
    n0 = specs[0].shape[0]
    total = 0.0
    for t0 in range(0, n0, SLAB):
        slab = make_slab(t0, min(t0 + SLAB, n0))
        total += float(slab.sum(dtype=np.float64))
        for z in arrays:
            z[t0 : t0 + len(slab)] = slab
    for s in specs:
        manifest = {"spec": asdict(s), "sum": total}
        (data_dir / s.dirname / "manifest.json").write_text(json.dumps(manifest, indent=1))


def preread(ds: Dataset) -> None:
    """Bring every file of the dataset (metadata too, and its xarray view's) into the page
    cache."""
    roots = [ds.root] + ([ds.xr_root] if ds.xr_root else [])
    for dirpath, _, names in (step for root in roots for step in os.walk(root)):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 24):
                    pass


# -- workloads ---------------------------------------------------------------------------


def make_selections(n0: int) -> list[tuple[int, int, int]]:
    """``N_SELECT`` window origins (t, y0, x0), the same for every reader and dataset."""
    rng = np.random.default_rng(SELECT_SEED)
    t = rng.integers(0, n0, N_SELECT)
    y = rng.integers(0, NY - WINDOW, N_SELECT, endpoint=True)
    x = rng.integers(0, NX - WINDOW, N_SELECT, endpoint=True)
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


@dataclass
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
    """Sum of an array read in axis-0 slabs of ``SLAB``.

    ``start(t0, t1)`` starts reading a slab and returns a future; the next slab's read is
    started before the current one is awaited and summed.
    """
    bounds = [(t, min(t + SLAB, n0)) for t in range(0, n0, SLAB)]
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


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_kib(field_name: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in KiB (ru_maxrss if there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def touch_memory(nbytes: int) -> None:
    """Write ``nbytes`` of fresh memory and free it again, so that the next allocation of
    that size reuses memory the hypervisor still backs.

    This VM's balloon device reports freed guest memory to the host (free page reporting),
    which takes it back after a few seconds: the first write of 1 GiB then costs 1.2 to 2.6
    s (host page faults), against 0.13 s for memory freed a moment ago. A whole-array read
    writes a fresh 1 GiB output, so without this its time would depend on how long ago
    this process (or another) freed memory, not on the reader.
    """
    block = np.empty(nbytes, np.uint8)
    block.fill(0)
    del block


def serve(peer: Peer, op: str, job: Job) -> dict:
    """Run one timed read; the result is summarised after the clock stopped."""
    peer.prepare(job)
    if op == "array":
        touch_memory(math.prod(job.shape) * 4)  # float32; see touch_memory
    gc.collect()
    exact = reset_peak_rss()
    rss_before = rss_kib("VmRSS")
    t0 = time.perf_counter()
    if op in ("scan", "xsum"):
        value, nbytes = getattr(peer, op)(job)
        seconds = time.perf_counter() - t0
        reply = {"value": value, "nbytes": nbytes}
    elif op in ("array", "array-out"):
        out = peer.array(job)
        seconds = time.perf_counter() - t0
        reply = {"value": float(out.sum(dtype=np.float64)), "nbytes": out.nbytes}
        del out
    else:
        outs = peer.select(job)
        seconds = time.perf_counter() - t0
        reply = {
            "sums": [float(np.asarray(o).sum(dtype=np.float64)) for o in outs],
            "shapes_ok": all(np.shape(o) == (WINDOW, WINDOW) for o in outs),
            "nbytes": int(sum(np.asarray(o).nbytes for o in outs)),
        }
    peak = rss_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return reply | {
        "ok": True, "seconds": seconds, "rss_before": rss_before * 1024,
        "rss_peak": peak * 1024, "rss_exact": exact, "detail": peer.detail,
    }


def reason(e: BaseException) -> str:
    """A one-line account of an exception for a "not available" row."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:160]


def worker_main(name: str) -> None:
    """Serve one reader over stdin/stdout, one JSON line per request and per reply."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the protocol

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")

    try:
        peer = make_peer(name)
        send({"ok": True, "info": peer.setup()})
    except Exception as e:  # noqa: BLE001  (any failure makes the reader unavailable)
        send({"ok": False, "error": reason(e)})
        return
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        try:
            send(serve(peer, cmd["op"], Job(**cmd["job"])))
        except Exception as e:  # noqa: BLE001
            send({"ok": False, "error": reason(e)})


# -- parent side -------------------------------------------------------------------------


class Worker:
    """A reader's worker process; ``error`` is set when it could not start.

    Parameters
    ----------
    name : str
        One of ``READERS`` except fio.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.info: dict = {}
        self.error = ""

    def wait_ready(self) -> None:
        """Wait for the worker's greeting: its reader's settings, or why it cannot run.
        (Separate from ``__init__``, so that all workers start at once.)"""
        hello = self._receive()
        self.info = hello.get("info", {})
        self.error = hello.get("error", "")

    def _receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            return {"ok": False, "error": f"worker exited with code {code}"}
        return json.loads(line)

    def request(self, op: str, job: Job) -> dict:
        """Run one read in the worker and return its reply."""
        if self.proc.poll() is not None:
            return {"ok": False, "error": f"worker exited with code {self.proc.returncode}"}
        self.proc.stdin.write(json.dumps({"op": op, "job": asdict(job)}) + "\n")
        return self._receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


@dataclass
class Run:
    """One timed run: seconds, decoded bytes, peak RSS (bytes; None: not measured)."""

    seconds: float
    nbytes: int
    rss_peak: int | None = None
    rss_before: int | None = None


@dataclass
class Result:
    """All timed runs of one (dataset, cache, workload, reader); ``error``: not available."""

    dataset: str
    cache: str
    workload: str
    reader: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.runs)

    @property
    def median_s(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def gbps(self) -> float:
        return self.runs[0].nbytes / self.median_s / 1e9

    @property
    def peak_rss(self) -> int | None:
        peaks = [r.rss_peak for r in self.runs if r.rss_peak is not None]
        return max(peaks) if peaks else None


def check_reply(reply: dict, ds: Dataset, workload: str, expected: np.ndarray) -> str:
    """What is wrong with a reader's result ("" if nothing)."""
    if workload != "select":
        value = reply["value"]
        if value is not None and not math.isclose(value, ds.total_sum, rel_tol=1e-4):
            return f"wrong result: sum {value:.6g}, expected {ds.total_sum:.6g}"
        return ""
    if not reply["shapes_ok"]:
        return f"wrong result: selections are not {WINDOW}x{WINDOW}"
    sums = np.asarray(reply["sums"])
    if len(sums) not in (len(expected), WARMUP_SELECT):
        return f"wrong result: {len(sums)} selections returned"
    bad = np.flatnonzero(~np.isclose(sums, expected[: len(sums)], rtol=1e-9, atol=1e-6))
    if bad.size:
        return f"wrong result: {bad.size} of {len(sums)} selections differ"
    return ""


def applies(reader: str, ds: Dataset, workload: str, cache: str) -> bool:
    """Whether a reader has a row (``RUNS``): decode-only is a warm scan of A and B only;
    the whole-array and xarray workloads are warm runs of A and B."""
    if reader not in RUNS[workload]:
        return False
    if reader == "decode-only" or workload in ("array", "array-out", "xsum"):
        return cache == "warm" and ds.spec.codec != "none"
    return True


def timed_run(worker: Worker, job: Job, ds: Dataset, res: Result, expected: np.ndarray) -> None:
    """One run of ``worker``; appended to ``res``, or ``res.error`` set."""
    reply = worker.request(res.workload, job)
    problem = reply.get("error", "") or check_reply(reply, ds, res.workload, expected)
    if problem:
        res.error = problem
        return
    res.note = res.note or reply.get("detail", "")
    res.runs.append(Run(reply["seconds"], reply["nbytes"], reply["rss_peak"], reply["rss_before"]))


def fio_dataset(ds: Dataset) -> bench_io.Dataset:
    """The dataset's objects as ``bench_io`` describes files, for its fio job."""
    spec = bench_io.Spec(
        f"read-{ds.spec.name}", len(ds.paths), int(ds.sizes.min()), int(ds.sizes.max()), seed=0
    )
    return bench_io.Dataset(spec, ds.root, ds.paths, ds.sizes)


def fio_run(fio: bench_io.FioReader, ds: Dataset, cold: bool, res: Result) -> None:
    """fio over the objects; its bytes count as the decoded output they hold."""
    try:
        run = fio.run(fio_dataset(ds), direct=cold)
    except RuntimeError as e:
        res.error = reason(e)
        return
    res.note = f"direct={int(cold)}, read {run.nbytes / 1e9:.3f} GB stored"
    res.runs.append(Run(run.seconds, ds.spec.nbytes))


def warm_up(workers: list[Worker], ds: Dataset, sels: list, expected: np.ndarray,
            workloads: list[str]) -> dict:
    """One untimed, checked run of every reader and workload (the first ``WARMUP_SELECT``
    selections only: enough to warm their code paths); returns what failed."""
    failed = {}
    for workload in workloads:
        job = make_job(ds, workload, sels[:WARMUP_SELECT], check=True)
        for w in workers:
            if not applies(w.name, ds, workload, "warm"):
                continue
            if w.error:
                failed[(workload, w.name)] = w.error
                continue
            probe = Result(ds.spec.name, "warm", workload, w.name)
            timed_run(w, job, ds, probe, expected)
            if probe.error:
                failed[(workload, w.name)] = probe.error
    return failed


def run_dataset(
    ds: Dataset,
    workers: list[Worker],
    fio: bench_io.FioReader | None,
    states: list[str],
    sels: list,
    expected: np.ndarray,
    repeats: int,
    workloads: list[str],
) -> list[Result]:
    """Warm every reader up on ``ds``, then time it in each cache state."""
    failed = warm_up(workers, ds, sels, expected, workloads)  # (workload, reader) -> why
    jobs = {wl: make_job(ds, wl, sels, check=False) for wl in workloads}
    results: list[Result] = []
    for cache in states:
        rows = {
            (wl, w.name): Result(ds.spec.name, cache, wl, w.name)
            for wl in workloads
            for w in workers
            if applies(w.name, ds, wl, cache)
        }
        for key, res in rows.items():
            res.error = failed.get(key, "")
        fio_res = Result(ds.spec.name, cache, "scan", "fio") if fio else None
        run_cache_state(ds, cache, workers, rows, jobs, expected, fio, fio_res, repeats)
        results += list(rows.values()) + ([fio_res] if fio_res else [])
    return _in_table_order(results, states)


def run_cache_state(
    ds: Dataset,
    cache: str,
    workers: list[Worker],
    rows: dict[tuple[str, str], Result],
    jobs: dict[str, Job],
    expected: np.ndarray,
    fio: bench_io.FioReader | None,
    fio_res: Result | None,
    repeats: int,
) -> None:
    """Time every reader ``repeats`` times on ``ds`` in one cache state, readers in turn;
    the runs go into ``rows`` (by workload and reader) and ``fio_res``."""
    cold = cache == "cold"
    if not cold:
        preread(ds)
    for wl in jobs:  # one workload after another: minutes of xarray runs between two
        # whole-array reads changed the second one's speed by up to 2x on this VM
        for rep in range(repeats):
            # turns rotate between repeats: on this VM a run's speed depends on what ran just
            # before it (memory the previous reader freed), so each reader takes each place
            for w in workers[rep % len(workers):] + workers[: rep % len(workers)]:
                res = rows.get((wl, w.name))
                if res is None or res.error:
                    continue
                if cold:
                    bench_io.drop_caches()
                timed_run(w, jobs[wl], ds, res, expected)
            if wl == "scan" and fio_res is not None and not fio_res.error:
                if cold:
                    bench_io.drop_caches()
                fio_run(fio, ds, cold, fio_res)
            print(f"    {ds.spec.name} {cache} {wl} repeat {rep + 1}/{repeats} done", flush=True)


def _in_table_order(results: list[Result], states: list[str]) -> list[Result]:
    """Rows by cache state (warm first), workload, then reader in ``READERS`` order."""
    order = {name: i for i, name in enumerate(READERS)}
    return sorted(
        results,
        key=lambda r: (states.index(r.cache), WORKLOADS.index(r.workload), order[r.reader]),
    )


# -- reporting ---------------------------------------------------------------------------


def find(results: list[Result], dataset: str, cache: str, workload: str, reader: str):
    """The result of one (dataset, cache, workload, reader) if it ran and succeeded."""
    for r in results:
        if (r.dataset, r.cache, r.workload, r.reader) == (dataset, cache, workload, reader):
            return r if r.ok else None
    return None


def ceiling(results: list[Result], r: Result) -> Result | None:
    """What "x ceil" compares with: decode-only for a warm scan or whole array of A or B,
    else fio."""
    if r.workload not in ("scan", "array", "array-out"):
        return None
    if r.cache == "warm":
        dec = find(results, r.dataset, "warm", "scan", "decode-only")  # also for arrays
        if dec is not None:
            return dec
    return find(results, r.dataset, r.cache, "scan", "fio")


def ratios(results: list[Result], r: Result) -> dict[str, float | None]:
    """Throughput of ``r`` over the base's (``BASE``), zarrs' and the ceiling's (same cell)."""
    refs = {
        "base": find(results, r.dataset, r.cache, r.workload, BASE[r.workload]),
        "zarrs": find(results, r.dataset, r.cache, r.workload, "zarrs"),
        "ceil": ceiling(results, r),
    }
    return {k: (r.gbps / v.gbps if v and r.ok else None) for k, v in refs.items()}


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f}"


def print_table(results: list[Result], specs: dict[str, Spec]) -> None:
    """The medians, one row per (dataset, cache, workload, reader)."""
    head = (
        f"{'dataset':<16} {'cache':<5} {'work':<6} {'reader':<13} {'median s':>9} {'GB/s':>7} "
        f"{'sel/s':>7} {'x base':>7} {'x zarrs':>7} {'x ceil':>7} {'peak MiB':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        lead = f"{specs[r.dataset].label():<16} {r.cache:<5} {r.workload:<6} {r.reader:<13}"
        if not r.ok:
            print(f"{lead} not available: {r.error or 'no runs'}")
            continue
        x = ratios(results, r)
        sel = f"{N_SELECT / r.median_s:,.0f}" if r.workload == "select" else "-"
        print(
            f"{lead} {r.median_s:>9.4f} {r.gbps:>7.3f} {sel:>7} {bench_io._fmt(x['base']):>7} "
            f"{bench_io._fmt(x['zarrs']):>7} {bench_io._fmt(x['ceil']):>7} {_mib(r.peak_rss):>9}"
        )
    print(
        "GB/s: decimal, of decoded output (fio: decoded bytes / fio's time to read the stored "
        "bytes); x base, x zarrs, x ceil: GB/s over theirs in the same row group (base: dask "
        "for scan and select, zarr's default pipeline for array and xsum; ceil: decode-only "
        "when warm, else fio); peak MiB: the reader process's RSS high-water mark during a "
        "timed run (max over repeats)"
    )


def print_setup(workers: list[Worker], results: list[Result]) -> None:
    """How every reader was configured, and the blocks or pipeline each dataset used."""
    print("\nreaders:")
    for w in workers:
        print(f"  {w.name:<13} {w.error or json.dumps(w.info)}")
    notes = {(r.reader, r.dataset, r.workload, r.note) for r in results
             if r.note and r.workload in ("scan", "xsum")}
    for reader, dataset, workload, note in sorted(notes):
        if reader != "fio":
            print(f"  {reader:<13} {dataset} {workload}: {note}")


def done_when(results: list[Result]) -> list[bench_io.Check]:
    """The issues' acceptance checks, measured (medians): issue 2's full scans, issue 6's
    whole-array reads through the codec pipeline and xarray sums."""

    def rel(dataset: str, cache: str, other: str, workload: str = "scan",
            ours: str = "dask_lsio") -> float | None:
        a = find(results, dataset, cache, workload, ours)
        b = find(results, dataset, cache, workload, other)
        return a.gbps / b.gbps if a and b else None

    Check = bench_io.Check
    checks = [
        Check("A warm scan: dask_lsio / dask.array.from_zarr", rel("A", "warm", "dask"), 8.0),
        Check("A warm scan: dask_lsio / zarrs", rel("A", "warm", "zarrs"), 1.2),
        Check("A cold scan: dask_lsio / zarrs", rel("A", "cold", "zarrs"), 2.0),
        Check("A cold scan: dask_lsio / tensorstore", rel("A", "cold", "tensorstore"), 1.3),
        Check("B warm scan: dask_lsio / zarrs", rel("B", "warm", "zarrs"), 1.2),
    ]
    for d in ("A", "B"):
        checks += [
            Check(f"{d} warm z[:]: lsio-pipeline / default pipeline",
                  rel(d, "warm", "zarr", "array", "lsio-pipeline"), 5.0),
            Check(f"{d} warm z[:]: lsio-pipeline / zarrs pipeline",
                  rel(d, "warm", "zarrs", "array", "lsio-pipeline"), 1.2),
            Check(f"{d} warm z[:] into a reused out=: lsio-pipeline / zarrs pipeline",
                  rel(d, "warm", "zarrs", "array-out", "lsio-pipeline"), 1.2),
            Check(f"{d} warm xarray sum: dask_lsio.open_zarr / xarray.open_zarr",
                  rel(d, "warm", "zarr", "xsum"), 5.0),
        ]
    return checks


def write_json(path: Path, results: list[Result], checks: list, meta: dict) -> None:
    """Every timed run, the medians, the checks and how they were measured."""
    rows = []
    for r in results:
        row = {
            "dataset": r.dataset, "cache": r.cache, "workload": r.workload, "reader": r.reader,
            "note": r.note, "error": r.error, "runs": [asdict(x) for x in r.runs],
        }
        if r.ok:
            x = ratios(results, r)
            row |= {
                "bytes": r.runs[0].nbytes, "median_s": r.median_s, "gb_per_s": r.gbps,
                "peak_rss": r.peak_rss, "ratio_base": x["base"], "ratio_zarrs": x["zarrs"],
                "ratio_ceiling": x["ceil"],
            }
        rows.append(row)
    bench_io.save_json(path, meta, rows, checks)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; defaults resolve against the repository, not the working dir."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=REPO / "benchmarks" / "data")
    p.add_argument("--quick", action="store_true", help="128 x 512 x 512, 2 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; quick 2)")
    p.add_argument("--only", choices=["A", "B", "C"], help="run one dataset only")
    p.add_argument("--readers", default=",".join(READERS), help="comma-separated subset")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    p.add_argument("--json", type=Path, default=REPO / "bench-results" / "bench_read.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: serve one reader
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    args.readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    unknown = set(args.readers) - set(READERS)
    if unknown:
        p.error(f"unknown readers {sorted(unknown)}; choose from {READERS}")
    args.workloads = [w for w in WORKLOADS if w in args.workloads.split(",")]
    if not args.workloads:
        p.error(f"--workloads: choose from {WORKLOADS}")
    return args


def cache_states(args: argparse.Namespace) -> list[str]:
    """The cache states to run, printing why cold is skipped when it is."""
    if args.no_cold:
        print("note: --no-cold given, cold-cache runs skipped")
        return ["warm"]
    if not bench_io.can_drop_caches():
        print(f"note: cold-cache runs skipped (need root to write {bench_io.DROP_CACHES})")
        return ["warm"]
    return ["warm", "cold"]


def make_fio(args: argparse.Namespace) -> bench_io.FioReader | None:
    """fio, when asked for and installed; its job files are kept beside the JSON."""
    if "fio" not in args.readers or "scan" not in args.workloads:
        return None
    if shutil.which("fio") is None:
        print("note: fio not found on PATH, the fio ceiling is skipped")
        return None
    return bench_io.FioReader(args.json.parent / "fio-jobs", jobs=os.cpu_count() or 1)


def meta_info(args, datasets: list[Dataset], workers: list[Worker], fio) -> dict:
    """Where and how the benchmark ran, for the JSON file."""
    return bench_io.run_meta(args) | {
        "datasets": {
            d.spec.name: asdict(d.spec) | {"files": len(d.paths), "stored_bytes": d.stored_bytes,
                                           "ratio": d.spec.nbytes / d.stored_bytes}
            for d in datasets
        },
        "readers": {w.name: w.error or w.info for w in workers},
        "slab": SLAB, "selections": N_SELECT, "window": WINDOW,
        "fio": fio.info() if fio else None,
    }


def main(argv: list[str] | None = None) -> None:
    """Prepare the datasets, time every reader, print the table and the checks."""
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    t_start = time.perf_counter()
    specs = make_specs(args.quick)
    if args.only:
        specs = {args.only: specs[args.only]}
    states = cache_states(args)
    for s in specs.values():
        print(f"dataset {s.describe()}")
    datasets = prepare_datasets(list(specs.values()), args.data_dir)
    for d in datasets:
        print(f"  {d.spec.name}: {d.stored_bytes / 1e9:.3f} GB stored, "
              f"ratio {d.spec.nbytes / d.stored_bytes:.2f}")
    sels = make_selections(next(iter(specs.values())).shape[0])
    expected = expected_selection_sums(sels)
    fio = make_fio(args)
    workers = [Worker(name) for name in args.readers if name != "fio"]
    for w in workers:
        w.wait_ready()
    results: list[Result] = []
    try:
        for ds in datasets:
            t0 = time.perf_counter()
            results += run_dataset(ds, workers, fio, states, sels, expected, args.repeats,
                                   args.workloads)
            print(f"  dataset {ds.spec.name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        for w in workers:
            w.close()
    print()
    print_table(results, specs)
    print_setup(workers, results)
    if fio is not None:
        print("\n" + "\n".join(fio.describe()))
    checks = done_when(results)
    meta = meta_info(args, datasets, workers, fio)
    meta["wall_s"] = time.perf_counter() - t_start
    write_json(args.json, results, checks, meta)
    print(f"\nraw timings: {args.json}   (total {meta['wall_s']:.1f} s)")
    if args.quick:
        print("note: --quick uses small datasets; the targets are meant for the full run")
    print("\ndone when:")
    for c in checks:
        print(c.line())


if __name__ == "__main__":
    main()
