"""The Zarr datasets of the read benchmark, which the crops, cluster and write benchmarks
share: arrays A, B and C of the same float32 field, ``STEPS[size]`` x 512 x 512.

(A) chunks 1x128x128, blosc-lz4 (``BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")``);
(B) the same inner chunks zstd (``ZstdCodec(level=3)``) in shards of 16x512x512;
(C) chunks 1x128x128, uncompressed.

The field is a smooth travelling pattern around 285 plus Gaussian noise (sigma 0.25), rounded
to 0.01 like a quantised sensor (:func:`make_slice`). The datasets are generated once under
the data folder, with zarr-python, and reused while their manifest matches.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cache import preread_trees
from .fio import FileSet

MANIFEST_VERSION = 1
NY = NX = 512
CHUNK = (1, 128, 128)
SHARD = (16, 512, 512)
TINY_CHUNK = (1, 16, 16)  # D: 1 KiB inner chunks, 16,384 per shard (2^20 in the full array)
SMALL_CHUNK = (2, 96, 128)  # E: issue 19's cold small files (edge chunks of 32 rows along y)
SLAB = 64  # time steps generated (and written) at a time
DATA_SEED = 7
STEPS = {"full": 1024, "quick": 128, "tiny": 16}  # axis 0 of the arrays, per size
XR_VAR = "v"  # the data variable of the xarray views
XR_DIMS = ["time", "y", "x"]


@dataclass(frozen=True)
class Spec:
    """What a dataset holds; its manifest stores exactly these fields.

    Parameters
    ----------
    name : str
        "A", "B", "C", "D" or "E".
    codec : str
        "blosc-lz4", "zstd" (in shards) or "none".
    shape : tuple of int
    shards : tuple of int, optional
        Shard shape (B, D).
    chunks : tuple of int
        Chunk shape: ``CHUNK``, D's ``TINY_CHUNK``, E's ``SMALL_CHUNK``.
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
        """The dataset's directory under ``--data-dir``: datasets of each size coexist."""
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


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset on disk: its objects (chunk or shard files) and the checks' reference."""

    spec: Spec
    root: Path
    paths: list[str]
    sizes: np.ndarray
    total_sum: float  # float64 sum of the whole array, computed when it was generated
    xr_root: Path | None = None  # the xarray view of the array (see ``xarray_view``)

    @property
    def stored_bytes(self) -> int:
        return int(self.sizes.sum())

    def fileset(self) -> FileSet:
        """Its objects, for fio."""
        return FileSet(self.spec.dirname, self.root, self.paths, self.sizes)

    def preread(self) -> None:
        """Bring every file of the dataset (metadata too, and its xarray view's) into the
        page cache."""
        preread_trees([self.root] + ([self.xr_root] if self.xr_root else []))


def make_specs(steps: int) -> dict[str, Spec]:
    """The datasets, ``steps`` along axis 0 (D: the same shards as B, of tiny chunks; E:
    chunks of another shape, not dividing the array)."""
    shape = (steps, NY, NX)
    return {
        "A": Spec("A", "blosc-lz4", shape),
        "B": Spec("B", "zstd", shape, shards=SHARD),
        "C": Spec("C", "none", shape),
        "D": Spec("D", "blosc-lz4", shape, shards=SHARD, chunks=TINY_CHUNK),
        "E": Spec("E", "blosc-lz4", shape, chunks=SMALL_CHUNK),
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


def stored_objects(root: Path) -> list[tuple[str, bytes]]:
    """Every object under an array directory, as (relative path, bytes)."""
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            full = os.path.join(d, f)
            out.append((os.path.relpath(full, root), Path(full).read_bytes()))
    return out
