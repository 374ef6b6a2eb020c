"""The IO benchmark's datasets of small files and its readers (``bench_io.py``).

A dataset is laid out like zarr chunk keys (``<data-dir>/<name>-<n>/c/<i>/<j>``, 128 files per
directory, random incompressible bytes). A reader reads every file once; :meth:`Reader.run`
times that and checks the buffers after the clock stopped. The same readers run in this
process or, for ``--baseline``, in a worker importing the other dask_lsio.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.fio import FileSet
from harness.results import Run

KiB = 1024
MANIFEST_VERSION = 1
PER_DIR = 128  # files per directory, as a zarr array with 128 chunks along its last axis
SAMPLE = 32  # buffers per run compared with the files' contents
FILES = {"full": (16_384, 100_000), "quick": (2_048, 10_000), "tiny": (256, 512)}
VERIFIED = f"every buffer's size and {SAMPLE} buffers' bytes against the files"


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
        """The dataset's directory under ``--data-dir``: datasets of each size coexist."""
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


@dataclass(frozen=True, eq=False)
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

    def fileset(self) -> FileSet:
        """Its files, for fio."""
        return FileSet(self.spec.dirname, self.root, self.paths, self.sizes)


def make_specs(size: str) -> dict[str, Spec]:
    """The two datasets of the issue, in the file counts of ``size`` ("full", "quick" ...)."""
    n_a, n_b = FILES[size]
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


def open_dataset(spec: Spec, data_dir: Path) -> Dataset:
    """The dataset of ``spec`` under ``data_dir``, as it is (see :func:`prepare_dataset`)."""
    root = data_dir / spec.dirname
    return Dataset(spec, root, file_paths(spec, root), file_sizes(spec))


def prepare_dataset(spec: Spec, data_dir: Path) -> Dataset:
    """Reuse the dataset under ``data_dir`` if its manifest matches ``spec``, else write it."""
    ds = open_dataset(spec, data_dir)
    if not _manifest_matches(ds):
        t0 = time.perf_counter()
        _generate(ds)
        print(f"  generated {spec.label()} in {ds.root} ({time.perf_counter() - t0:.1f} s)")
    return ds


def _manifest_matches(ds: Dataset) -> bool:
    """Whether ``ds.root`` holds its files: the manifest, plus a spot check of sizes."""
    try:
        manifest = json.loads((ds.root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if manifest != asdict(ds.spec):
        return False
    # Cheap insurance against files removed or rewritten since: stat a sample and the last.
    n = len(ds.paths)
    picks = set(np.random.default_rng().choice(n, min(64, n), replace=False))
    picks.add(n - 1)
    try:
        return all(os.stat(ds.paths[i]).st_size == ds.sizes[i] for i in picks)
    except OSError:
        return False


def _generate(ds: Dataset) -> None:
    """Write the files, then the manifest (last, so an interrupted run regenerates)."""
    spec = ds.spec
    shutil.rmtree(ds.root, ignore_errors=True)
    for d in range((spec.n_files + spec.per_dir - 1) // spec.per_dir):
        (ds.root / "c" / str(d)).mkdir(parents=True)
    rng = np.random.default_rng(spec.seed + 1000)
    for path, size in zip(ds.paths, ds.sizes.tolist()):
        with open(path, "wb") as f:
            f.write(rng.bytes(size))  # random bytes: incompressible, like compressed chunks
    (ds.root / "manifest.json").write_text(json.dumps(asdict(spec), indent=1) + "\n")


# -- readers -----------------------------------------------------------------------------


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
            return Run(seconds, bufs, count=len(ds.paths))
        if verify:
            verify_buffers(self.name, ds, bufs)
        nbytes = sum(len(b) for b in bufs)
        del bufs  # engine buffers go back to the pool before the next run
        return Run(seconds, nbytes, count=len(ds.paths))


def engine_reader(name: str, engine: Any) -> Reader:
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


def make_reader(name: str) -> Reader:
    """The reader called ``name``; an engine is opened once for the whole benchmark."""
    from dask_lsio.io import IoUringEngine, ThreadEngine

    if name == "io_uring":
        return engine_reader(name, IoUringEngine(direct_io=False))
    if name == "io_uring-direct":
        return engine_reader(name, IoUringEngine(direct_io=True))
    if name == "threads":
        return engine_reader(name, ThreadEngine())
    if name == "python":
        return Reader(name, python_read)
    if name == "python-discard":
        return Reader(name, python_discard, delivers=False)
    raise ValueError(f"no reader {name!r}")


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
