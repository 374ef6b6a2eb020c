#!/usr/bin/env python
"""IO benchmark of dask-lsio: many small files, warm and cold page cache.

Reads two datasets laid out like zarr chunk keys (``<data-dir>/<name>-<n>/c/<i>/<j>``, 128
files per directory, random incompressible bytes):

(a) 16,384 files of ~54 KiB (sizes uniform in 50-58 KiB, so most end mid-page);
(b) 100,000 files of exactly 4 KiB;

with six readers:

``io_uring``         ``IoUringEngine(direct_io=False).read_ranges`` over the whole dataset
``io_uring-direct``  the same with O_DIRECT
``threads``          ``ThreadEngine().read_ranges``
``python``           ``with open(p, "rb") as f: f.read()`` per file, in a loop, keeping
                     every file's bytes as the engines do (so it pays for fresh memory)
``python-discard``   the same loop dropping each file's bytes at once: a reference for
                     the cost of reading alone (it delivers nothing)
``fio``              fio with ``ioengine=io_uring``, the device ceiling (see :func:`fio_job`)

Warm runs pre-read the dataset once; cold runs drop the page cache (``sync; echo 3 >
/proc/sys/vm/drop_caches``, root only) before every timed run. O_DIRECT bypasses the page
cache, so its warm rows are device reads too. Every reader first does one untimed run, so
the engines' buffer pools are in steady state (a first pass faults in fresh buffer memory,
seconds per GiB on a VM). Each (dataset, cache, reader) is timed ``--repeats`` times (the
readers take turns, so drift hits all of them alike) and the median is reported. Results
are checked outside the timed region: the exact size of every buffer and a sample of
buffers against the files' contents. The engines get a ``size_hint`` just above the largest
file (64 KiB for (a), 8 KiB for (b)), as a zarr store that knows its chunk size would.
GB/s are decimal, of the bytes delivered; "x python" and "x fio" compare GB/s with the
Python loop's and fio's in the same dataset and cache state.

Run (from the repository root, with dask-lsio installed)::

    python benchmarks/bench_io.py                 # full: 5 repeats, several minutes
    python benchmarks/bench_io.py --quick         # under a minute: 2,048 + 10,000 files
    python benchmarks/bench_io.py --only a --no-cold --repeats 3 --json out.json

The datasets are generated once under ``--data-dir`` (default ``benchmarks/data``) and
reused while their manifest matches. Raw timings and medians go to ``--json`` (default
``bench-results/bench_io.json``). The last lines print the issue's "done when" checks.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dask_lsio.io import IoUringEngine, ThreadEngine
from dask_lsio.io.engine import Engine

REPO = Path(__file__).resolve().parents[1]
KiB = 1024
PAGE = 4096
MANIFEST_VERSION = 1
PER_DIR = 128  # files per directory, as a zarr array with 128 chunks along its last axis
SAMPLE = 32  # buffers per run compared with the files' contents
FIO_IODEPTH = 64
DROP_CACHES = "/proc/sys/vm/drop_caches"


# -- datasets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a dataset holds; its manifest stores exactly these fields.

    Parameters
    ----------
    name : str
        "a" or "b".
    n_files : int
    min_size, max_size : int
        File sizes are uniform in ``[min_size, max_size]`` bytes.
    seed : int
        Seed of sizes and contents, so a dataset is reproducible.
    """

    name: str
    n_files: int
    min_size: int
    max_size: int
    seed: int
    per_dir: int = PER_DIR
    version: int = MANIFEST_VERSION

    @property
    def dirname(self) -> str:
        """The dataset's directory under ``--data-dir``: quick and full ones coexist."""
        return f"{self.name}-{self.n_files}"

    @property
    def size_hint(self) -> int:
        """A read buffer strictly larger than every file (a full buffer would mean "grow")."""
        return 1 << self.max_size.bit_length()

    def label(self) -> str:
        """The table's dataset column, e.g. "a: 16,384 x 50-58 KiB"."""
        size = f"{self.min_size // KiB}-{self.max_size // KiB} KiB"
        if self.min_size == self.max_size:
            size = f"{self.max_size // KiB} KiB"
        return f"{self.name}: {self.n_files:,} x {size}"


@dataclass
class Dataset:
    """A dataset on disk: its files in key order and their sizes."""

    spec: Spec
    root: Path
    paths: list[str]
    sizes: np.ndarray

    @property
    def total_bytes(self) -> int:
        """What a reader must deliver: the sum of the file sizes."""
        return int(self.sizes.sum())


def make_specs(quick: bool) -> dict[str, Spec]:
    """The two datasets of the issue, or their small versions for ``--quick``."""
    n_a, n_b = (2_048, 10_000) if quick else (16_384, 100_000)
    return {
        "a": Spec("a", n_a, 50 * KiB, 58 * KiB, seed=1),
        "b": Spec("b", n_b, 4 * KiB, 4 * KiB, seed=2),
    }


def file_sizes(spec: Spec) -> np.ndarray:
    """The size of every file, from the spec's seed (so no manifest needs to list them)."""
    rng = np.random.default_rng(spec.seed)
    return rng.integers(spec.min_size, spec.max_size, size=spec.n_files, endpoint=True)


def file_paths(spec: Spec, root: Path) -> list[str]:
    """Zarr v3 style chunk keys ``c/<i>/<j>``, ``per_dir`` files per directory."""
    return [f"{root}/c/{k // spec.per_dir}/{k % spec.per_dir}" for k in range(spec.n_files)]


def prepare_dataset(spec: Spec, data_dir: Path) -> Dataset:
    """Reuse the dataset under ``data_dir`` if its manifest matches ``spec``, else write it."""
    root = data_dir / spec.dirname
    sizes = file_sizes(spec)
    paths = file_paths(spec, root)
    if not _manifest_matches(root, spec, paths, sizes):
        t0 = time.perf_counter()
        _generate(spec, root, paths, sizes)
        print(f"  generated {spec.label()} in {root} ({time.perf_counter() - t0:.1f} s)")
    return Dataset(spec, root, paths, sizes)


def _manifest_matches(root: Path, spec: Spec, paths: list[str], sizes: np.ndarray) -> bool:
    """Whether ``root`` holds ``spec``'s files: the manifest, plus a spot check of sizes."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if manifest != asdict(spec):
        return False
    # Cheap insurance against files removed or rewritten since: stat a sample and the last.
    picks = set(np.random.default_rng().choice(len(paths), min(64, len(paths)), replace=False))
    picks.add(len(paths) - 1)
    try:
        return all(os.stat(paths[i]).st_size == sizes[i] for i in picks)
    except OSError:
        return False


def _generate(spec: Spec, root: Path, paths: list[str], sizes: np.ndarray) -> None:
    """Write the files, then the manifest (last, so an interrupted run regenerates)."""
    shutil.rmtree(root, ignore_errors=True)
    for d in range((spec.n_files + spec.per_dir - 1) // spec.per_dir):
        (root / "c" / str(d)).mkdir(parents=True)
    rng = np.random.default_rng(spec.seed + 1000)
    for path, size in zip(paths, sizes.tolist()):
        with open(path, "wb") as f:
            f.write(rng.bytes(size))  # random bytes: incompressible, like compressed chunks
    (root / "manifest.json").write_text(json.dumps(asdict(spec), indent=1) + "\n")


# -- cache control -----------------------------------------------------------------------


def can_drop_caches() -> bool:
    """Whether this process may drop the page cache (root, writable sysctl)."""
    return os.geteuid() == 0 and os.access(DROP_CACHES, os.W_OK)


def drop_caches() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: page cache, dentries and inodes."""
    os.sync()
    with open(DROP_CACHES, "w") as f:
        f.write("3\n")


def preread(ds: Dataset) -> None:
    """Bring the whole dataset into the page cache."""
    for p in ds.paths:
        with open(p, "rb") as f:
            f.read()


# -- readers -----------------------------------------------------------------------------


@dataclass
class Run:
    """One timed run: seconds, bytes and files delivered (fio: as fio reports them)."""

    seconds: float
    nbytes: int
    files: int


class Reader:
    """A way of reading every file of a dataset once.

    Parameters
    ----------
    name : str
        Its row label.
    read : callable
        ``read(ds)`` returns one buffer per file, in file order.
    close : callable, optional
        Releases the reader's resources (engines).
    delivers : bool, default True
        False for a reference reader that drops each file's bytes and returns only their
        total: it shows what reading costs without keeping the data (no fresh memory).
    """

    def __init__(
        self,
        name: str,
        read: Callable[[Dataset], Any],
        close: Callable[[], None] = lambda: None,
        delivers: bool = True,
    ) -> None:
        self.name = name
        self.read = read
        self.close = close
        self.delivers = delivers

    def run(self, ds: Dataset, verify: bool = True) -> Run:
        """Time one read of the dataset; check the buffers after the clock stopped."""
        gc.collect()  # no collection of an earlier run's garbage inside the timed region
        t0 = time.perf_counter()
        bufs = self.read(ds)
        seconds = time.perf_counter() - t0
        if not self.delivers:
            if bufs != ds.total_bytes:
                raise AssertionError(f"{self.name}: read {bufs} bytes, expected {ds.total_bytes}")
            return Run(seconds, bufs, len(ds.paths))
        if verify:
            verify_buffers(self.name, ds, bufs)
        nbytes = sum(len(b) for b in bufs)
        del bufs  # engine buffers go back to the pool before the next run
        return Run(seconds, nbytes, len(ds.paths))


def engine_reader(name: str, engine: Engine) -> Reader:
    """Reads a dataset as one ``read_ranges`` call (the column fast path, to EOF)."""

    def read(ds: Dataset) -> list[Any]:
        out: list[Any] = [None] * len(ds.paths)
        for i, buf in engine.read_ranges(ds.paths, size_hint=ds.spec.size_hint):
            out[i] = buf
        return out

    return Reader(name, read, engine.close)


def python_read(ds: Dataset) -> list[bytes]:
    """The baseline: what a plain Python store does, one file after the other."""
    out = []
    for p in ds.paths:
        with open(p, "rb") as f:
            out.append(f.read())
    return out


def python_discard(ds: Dataset) -> int:
    """Reference only: the same loop dropping each file's bytes at once, so it never touches
    fresh memory; it delivers nothing a caller could use."""
    total = 0
    for p in ds.paths:
        with open(p, "rb") as f:
            total += len(f.read())
    return total


def verify_buffers(name: str, ds: Dataset, bufs: list[Any]) -> None:
    """Exact size of every buffer, and contents of a random sample, against the files."""
    lengths = np.fromiter((len(b) for b in bufs), dtype=np.int64, count=len(bufs))
    if len(bufs) != len(ds.paths) or not np.array_equal(lengths, ds.sizes):
        bad = np.flatnonzero(lengths != ds.sizes)[:5].tolist()
        raise AssertionError(
            f"{name}: read {int(lengths.sum())} bytes, expected {ds.total_bytes}; "
            f"wrong sizes at {[ds.paths[i] for i in bad]}"
        )
    rng = np.random.default_rng()
    for i in rng.choice(len(bufs), min(SAMPLE, len(bufs)), replace=False).tolist():
        with open(ds.paths[i], "rb") as f:
            if bytes(bufs[i]) != f.read():
                raise AssertionError(f"{name}: wrong contents for {ds.paths[i]}")


# -- fio ---------------------------------------------------------------------------------


def fio_job(ds: Dataset, direct: bool, jobs: int) -> str:
    """A fio job file that reads every file of ``ds`` exactly once, one read per file.

    fio has no "read to EOF": a job reads each file in blocks of ``bs`` and skips a last
    block that does not fit, so a job with ``bs`` above a file's size reads nothing of it.
    Files are therefore grouped by their size rounded down to 4 KiB and every job gets
    files of one group, with ``bs`` = that size: one read per file, like the engines' one
    read per file; only the sub-page tails are not read (< 4 KiB per file: ~4% of (a),
    nothing of (b)). fio opens, reads and closes files in one thread per job, which is
    what limits it on small files, so each group is split in shards to give about
    ``jobs`` (one per core) jobs that all run at once, each with ``iodepth`` reads in
    flight. A job's files are listed as several ``filename=`` lines (they add up; one value
    may not exceed 4096 characters), relative to ``directory``.

    Why it is a fair ceiling: the same files in the same page cache state, the same kernel
    interface (io_uring; O_DIRECT when cold, so no page cache copy), at least as many
    threads as cores, and no Python, no buffers handed to a caller, no tail reads. It errs
    in fio's favour: its clock starts after its setup stat()ed every file (so a cold run
    finds the inodes already read: fio's wall time is well above its runtime) and it reads
    up to 4 KiB less per file.
    """
    groups: dict[int, list[str]] = {}
    for path, size in zip(ds.paths, ds.sizes.tolist()):
        groups.setdefault(size // PAGE * PAGE, []).append(os.path.relpath(path, ds.root))
    lines = [
        "[global]",
        f"directory={ds.root}",
        "ioengine=io_uring",
        "rw=read",
        f"iodepth={FIO_IODEPTH}",
        f"direct={int(direct)}",
        "invalidate=0",  # fio would otherwise evict the files before a warm run
        "fadvise_hint=0",  # the engines give no hints either
        f"openfiles={4 * FIO_IODEPTH}",  # files are opened during the run, as the engines do
        "gtod_reduce=1",  # no per-IO latency clock reads: fio's cheapest accounting
        "allow_file_create=0",
        "thread",
    ]
    for size, names in sorted(groups.items()):
        shards = max(1, round(jobs * len(names) / len(ds.paths)))
        for k in range(shards):
            part = names[k::shards]
            lines += [f"[f{size}-{k}]", f"bs={size}", f"nrfiles={len(part)}"]
            for lo in range(0, len(part), 200):
                lines.append("filename=" + ":".join(part[lo : lo + 200]))
    return "\n".join(lines) + "\n"


def fio_expected_bytes(ds: Dataset) -> int:
    """What :func:`fio_job` reads: every file rounded down to whole pages."""
    return int((ds.sizes // PAGE * PAGE).sum())


class FioReader:
    """fio on the same files; a run returns fio's own io_bytes and runtime.

    Parameters
    ----------
    workdir : Path
        Where the job files are written.
    jobs : int
        About how many fio jobs (threads) run at once.
    """

    name = "fio"

    def __init__(self, workdir: Path, jobs: int) -> None:
        self.workdir = workdir
        self.jobs = jobs
        self.njobs: dict[str, int] = {}
        self.command: dict[str, str] = {}
        self.job_head = ""
        workdir.mkdir(parents=True, exist_ok=True)
        self._written: set[Path] = set()

    def run(self, ds: Dataset, direct: bool) -> Run:
        """Run fio once over ``ds``; check it read every file once, as expected."""
        job = self.workdir / f"{ds.spec.dirname}-direct{int(direct)}.fio"
        if job not in self._written:  # rewritten once per benchmark: the dataset may be new
            text = fio_job(ds, direct, self.jobs)
            job.write_text(text)
            self._written.add(job)
            self.job_head = text.split("\n[f")[0]
            self.njobs[job.name] = text.count("\n[f")
        cmd = ["fio", "--readonly", "--output-format=json", str(job)]
        self.command[job.name] = " ".join(cmd)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"fio failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
        report = json.loads(proc.stdout[proc.stdout.index("{") :])
        jobs = report["jobs"]
        nbytes = sum(j["read"]["io_bytes"] for j in jobs)
        ios = sum(j["read"]["total_ios"] for j in jobs)
        seconds = max(j["read"]["runtime"] for j in jobs) / 1e3  # ms; the jobs run at once
        errors = [j["jobname"] for j in jobs if j.get("error")]
        if errors or ios != len(ds.paths) or nbytes != fio_expected_bytes(ds):
            raise RuntimeError(
                f"fio read {nbytes} bytes in {ios} reads, expected {fio_expected_bytes(ds)} "
                f"in {len(ds.paths)} (job errors: {errors})"
            )
        return Run(seconds, nbytes, ios)

    def describe(self) -> list[str]:
        """How fio was run: the common job settings and each command line."""
        head = " ".join(  # without [global], directory= and direct=
            x for x in self.job_head.split("\n")[2:] if not x.startswith("direct=")
        )
        lines = [
            "fio: one job per shard of each file-size group (bs = size rounded down to 4 KiB),",
            f"     all jobs of a job file at once, direct=0 warm / direct=1 cold; {head}",
        ]
        for name, cmd in self.command.items():
            lines.append(f"  {cmd}    # {self.njobs[name]} jobs")
        return lines

    def info(self) -> dict:
        """fio's version and how it was run, for the JSON file."""
        version = subprocess.run(["fio", "--version"], capture_output=True, text=True)
        return {
            "version": version.stdout.strip(), "commands": self.command,
            "jobs_per_file": self.njobs, "global": self.job_head,
        }


# -- running -----------------------------------------------------------------------------


@dataclass
class Result:
    """All timed runs of one (dataset, cache, reader)."""

    dataset: str
    cache: str
    reader: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def gbps(self) -> float:
        return self.runs[0].nbytes / self.median_s / 1e9

    @property
    def files_per_s(self) -> float:
        return self.runs[0].files / self.median_s


def run_cache_state(
    ds: Dataset,
    cache: str,
    readers: list[Reader],
    fio: FioReader | None,
    repeats: int,
) -> list[Result]:
    """Time every reader ``repeats`` times on ``ds`` in one cache state, readers in turn."""
    cold = cache == "cold"
    results = {r.name: Result(ds.spec.name, cache, r.name) for r in readers}
    for r in readers:  # steady state: pools allocated, code paths warm
        r.run(ds)
    if fio is not None:
        results["fio"] = Result(ds.spec.name, cache, "fio", note=f"direct={int(cold)}")
    preread(ds)
    for rep in range(repeats):
        for r in readers:
            if cold:
                drop_caches()
            results[r.name].runs.append(r.run(ds))
        if fio is not None:
            if cold:
                drop_caches()
            results["fio"].runs.append(fio.run(ds, direct=cold))
        print(f"    {cache} repeat {rep + 1}/{repeats} done", flush=True)
    return list(results.values())


def make_readers() -> list[Reader]:
    """The readers, each engine opened once for the whole benchmark."""
    return [
        engine_reader("io_uring", IoUringEngine(direct_io=False)),
        engine_reader("io_uring-direct", IoUringEngine(direct_io=True)),
        engine_reader("threads", ThreadEngine()),
        Reader("python", python_read),
        Reader("python-discard", python_discard, delivers=False),
    ]


# -- reporting ---------------------------------------------------------------------------


def find(results: list[Result], dataset: str, cache: str, reader: str) -> Result | None:
    """The result of one (dataset, cache, reader), if it ran."""
    for r in results:
        if (r.dataset, r.cache, r.reader) == (dataset, cache, reader):
            return r
    return None


def ratios(results: list[Result], r: Result) -> tuple[float | None, float | None]:
    """Throughput of ``r`` over the Python loop's and over fio's (same dataset and cache)."""
    py = find(results, r.dataset, r.cache, "python")
    fio = find(results, r.dataset, r.cache, "fio")
    return (
        r.gbps / py.gbps if py else None,
        r.gbps / fio.gbps if fio else None,
    )


def print_table(results: list[Result], specs: dict[str, Spec]) -> None:
    """The medians, one row per (dataset, cache, reader)."""
    head = (
        f"{'dataset':<26} {'cache':<5} {'reader':<16} {'median s':>9} {'GB/s':>7} "
        f"{'files/s':>10} {'x python':>9} {'x fio':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        py, fio = ratios(results, r)
        print(
            f"{specs[r.dataset].label():<26} {r.cache:<5} {r.reader:<16} {r.median_s:>9.4f} "
            f"{r.gbps:>7.3f} {r.files_per_s:>10,.0f} {_fmt(py):>9} {_fmt(fio):>7}"
        )
    print("GB/s: decimal, of the bytes delivered (fio: the bytes it read, tails < 4 KiB "
          "skipped); x python, x fio: GB/s over theirs in the same dataset and cache state")


def _fmt(x: float | None) -> str:
    """A ratio for the table; "-" where there is nothing to compare with."""
    return "-" if x is None else f"{x:.2f}"


@dataclass
class Check:
    """One of the issue's "done when" lines."""

    text: str
    value: float | None
    target: float
    detail: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "SKIP"
        return "PASS" if self.value >= self.target else "FAIL"

    def line(self) -> str:
        value = "not measured" if self.value is None else f"{self.value:,.2f}"
        detail = f" ({self.detail})" if self.detail else ""
        return f"[{self.status}] {self.text}: {value} (target >= {self.target:,g}){detail}"


def best_uring(results: list[Result], dataset: str, cache: str) -> Result | None:
    """The faster of io_uring buffered and O_DIRECT (median time)."""
    cands = [find(results, dataset, cache, n) for n in ("io_uring", "io_uring-direct")]
    cands = [c for c in cands if c is not None]
    return min(cands, key=lambda c: c.median_s) if cands else None


def done_when(results: list[Result]) -> list[Check]:
    """The issue's acceptance checks, measured."""

    def rel(a: Result | None, b_name: str, dataset: str, cache: str) -> float | None:
        b = find(results, dataset, cache, b_name)
        return a.gbps / b.gbps if a and b else None

    warm_a = find(results, "a", "warm", "io_uring")
    cold_a = best_uring(results, "a", "cold")
    warm_b = find(results, "b", "warm", "io_uring")
    cold_b = best_uring(results, "b", "cold")
    which_a = f"best: {cold_a.reader}" if cold_a else ""
    which_b = f"best: {cold_b.reader}" if cold_b else ""
    return [
        Check("warm a: io_uring / threads", rel(warm_a, "threads", "a", "warm"), 2.0),
        Check("warm a: io_uring / python loop", rel(warm_a, "python", "a", "warm"), 1.2),
        Check("cold a: io_uring / python loop", rel(cold_a, "python", "a", "cold"), 2.5, which_a),
        Check("cold a: io_uring / fio (GB/s)", rel(cold_a, "fio", "a", "cold"), 0.6, which_a),
        Check("warm b: io_uring files/s", warm_b.files_per_s if warm_b else None, 300_000),
        Check("cold b: io_uring files/s", cold_b.files_per_s if cold_b else None, 60_000, which_b),
    ]


def run_meta(args: argparse.Namespace) -> dict:
    """Where and how a benchmark ran (date, machine, Python, its arguments), for its JSON."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "python": sys.version.split()[0], "numpy": np.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
    }


def finish(path: Path, meta: dict, rows: list[dict], checks: list[Check]) -> None:
    """Save the JSON file and print the "done when" checks: a benchmark's last lines."""
    save_json(path, meta, rows, checks)
    print()
    for c in checks:
        print(c.line())


def save_json(path: Path, meta: dict, rows: list[dict], checks: list[Check]) -> None:
    """A benchmark's JSON file: how it was measured, its result rows and its checks (the
    layout the IO and read benchmarks share)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checks_out = [
        {"check": c.text, "status": c.status, "value": c.value, "target": c.target,
         "detail": c.detail}
        for c in checks
    ]
    path.write_text(json.dumps({"meta": meta, "results": rows, "checks": checks_out}, indent=1))
    save_chart(path.with_suffix(".png"), rows, f"{path.stem} ({meta.get('date', '')[:10]}, "
               f"{meta.get('cpus', '?')} cores)")


# row keys that say which case a result is (a chart's groups), and the rates it can show
_CASE_KEYS = ("dataset", "kind", "workload", "cache")
_RATES = {"gb_per_s": "GB/s", "files_per_s": "files/s", "crops_per_s": "crops/s",
          "examples_per_s": "examples/s", "steps_per_s": "steps/s"}


def save_chart(path: Path, rows: list[dict], title: str) -> Path | None:
    """A bar chart of ``rows`` beside the JSON: per case (dataset, workload, cache ...) one
    bar per reader, on a log scale (readers differ by 100x); one panel per unit. Needs
    matplotlib (the bench extra); without it, says so and draws nothing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(no chart: matplotlib is not installed; pip install -e '.[bench]')")
        return None
    panels: dict[str, list[tuple[str, str, float]]] = {}
    for r in rows:
        key = next((k for k in _RATES if isinstance(r.get(k), (int, float)) and r[k] > 0), None)
        if key is None or r.get("error"):
            continue
        case = " ".join(str(r[k]) for k in _CASE_KEYS if r.get(k) not in (None, ""))
        panels.setdefault(key, []).append((case, str(r.get("reader", "?")), float(r[key])))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(10, 3.2 * len(panels) + 0.8))
    for ax, (key, items) in zip(axes[:, 0], panels.items()):
        cases = list(dict.fromkeys(c for c, _, _ in items))
        readers = list(dict.fromkeys(r for _, r, _ in items))
        width = 0.8 / len(readers)
        for i, reader in enumerate(readers):
            got = {c: v for c, r, v in items if r == reader}
            xs = [k + (i - (len(readers) - 1) / 2) * width for k, c in enumerate(cases) if c in got]
            values = [got[c] for c in cases if c in got]
            bars = ax.bar(xs, values, width, label=reader)
            ax.bar_label(bars, [f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values],
                         fontsize=6, rotation=90, padding=2)
        ax.set_yscale("log")
        low, high = min(v for *_, v in items), max(v for *_, v in items)
        ax.set_ylim(10 ** math.floor(math.log10(low)), 10 ** (math.log10(high) + 0.6))
        ax.set_ylabel(_RATES[key])
        ax.set_xticks(range(len(cases)), cases, fontsize=8, rotation=15 if len(cases) > 4 else 0)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=min(4, len(readers)), loc="upper right")
    axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"chart: {path}")
    return path


def write_json(path: Path, results: list[Result], checks: list[Check], meta: dict) -> None:
    """Every timed run, the medians, the checks and how they were measured."""
    rows = []
    for r in results:
        py, fio = ratios(results, r)
        rows.append({
            "dataset": r.dataset, "cache": r.cache, "reader": r.reader, "note": r.note,
            "seconds": [x.seconds for x in r.runs], "bytes": r.runs[0].nbytes,
            "files": r.runs[0].files, "median_s": r.median_s, "gb_per_s": r.gbps,
            "files_per_s": r.files_per_s, "ratio_python": py, "ratio_fio": fio,
        })
    save_json(path, meta, rows, checks)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; defaults resolve against the repository, not the working dir."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=REPO / "benchmarks" / "data")
    p.add_argument("--quick", action="store_true", help="2,048 + 10,000 files, 2 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; quick 2)")
    p.add_argument("--only", choices=["a", "b"], help="run one dataset only")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    p.add_argument("--json", type=Path, default=REPO / "bench-results" / "bench_io.json")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def cache_states(args: argparse.Namespace) -> list[str]:
    """The cache states to run, printing why cold is skipped when it is."""
    if args.no_cold:
        print("note: --no-cold given, cold-cache runs skipped")
        return ["warm"]
    if not can_drop_caches():
        print(f"note: cold-cache runs skipped (need root to write {DROP_CACHES})")
        return ["warm"]
    return ["warm", "cold"]


def meta_info(args: argparse.Namespace, specs: dict[str, Spec], fio: FioReader | None) -> dict:
    """Where and how the benchmark ran, for the JSON file."""
    return run_meta(args) | {
        "datasets": {k: asdict(s) for k, s in specs.items()},
        "fio": fio.info() if fio else None,
    }


def main(argv: list[str] | None = None) -> None:
    """Prepare the datasets, time every reader, print the table and the checks."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    specs = make_specs(args.quick)
    if args.only:
        specs = {args.only: specs[args.only]}
    states = cache_states(args)
    fio = None
    if shutil.which("fio") is None:
        print("note: fio not found on PATH, the fio ceiling is skipped")
    else:  # job files are kept beside the JSON, so the fio runs can be repeated by hand
        fio = FioReader(args.json.parent / "fio-jobs", jobs=os.cpu_count() or 1)
    readers = make_readers()
    results: list[Result] = []
    try:
        for spec in specs.values():
            print(f"dataset {spec.label()}", flush=True)
            ds = prepare_dataset(spec, args.data_dir)
            for cache in states:
                results += run_cache_state(ds, cache, readers, fio, args.repeats)
    finally:
        for r in readers:
            r.close()
    print()
    print_table(results, specs)
    if fio is not None:
        print("\n" + "\n".join(fio.describe()))
    checks = done_when(results)
    meta = meta_info(args, specs, fio)
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
