"""The write benchmark's writers (``bench_write.py``): each writes an in-memory array into a
new Zarr array of a layout; :func:`one_run` times one write.

They run in the benchmark's process; with ``--baseline`` the dask_lsio writers also run in
a worker process importing the other dask_lsio (:class:`Served`), on the same data
(generated there by the same function).
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.zarr_data import CHUNK, SHARD, make_slab, stored_objects

BLOCK = 64  # axis-0 size of the dask blocks


@dataclass(frozen=True)
class Layout:
    """A Zarr v3 layout: (unsharded) chunks 1x128x128 or shards of them, and a codec."""

    name: str
    shards: tuple[int, ...] | None
    codec: str  # "blosc" or "zstd"

    def zarr_kwargs(self) -> dict:
        """zarr-python's (and dask_lsio's, dask's) options of this layout."""
        from zarr.codecs import BloscCodec, ZstdCodec

        comp = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle") if self.codec == "blosc"
                else ZstdCodec(level=3))
        kwargs = {"chunks": CHUNK, "compressors": comp}
        if self.shards:
            kwargs["shards"] = self.shards
        return kwargs

    def numcodec(self) -> Any:
        """The layout's codec in numcodecs (encode-only)."""
        import numcodecs

        if self.codec == "blosc":
            return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
        return numcodecs.Zstd(level=3)


LAYOUTS = {"A": Layout("A", None, "blosc"), "B": Layout("B", SHARD, "zstd")}


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


def make_data(n0: int) -> np.ndarray:
    """The array the writers write: ``n0`` steps of the read benchmark's field."""
    return np.concatenate([make_slab(t, min(t + BLOCK, n0)) for t in range(0, n0, BLOCK)])


class Served:
    """The worker's side (``--baseline``): one writer; the data and the reference objects
    are made or read once, then every request is one timed write."""

    def __init__(self, writer: str) -> None:
        self.writer = writer
        self.data = np.empty(0)
        self.objects: dict[str, list] = {}

    def handle(self, request: dict) -> dict:
        if self.data.shape[:1] != (request["steps"],):
            self.data = make_data(request["steps"])
        ref = request["reference"]
        if ref and ref not in self.objects:
            self.objects = {ref: stored_objects(Path(ref))}  # one layout's at a time
        seconds = one_run(self.writer, self.data, LAYOUTS[request["layout"]],
                          Path(request["path"]), self.objects.get(ref, []), request["durable"])
        return {"ok": True, "seconds": seconds}


def worker_setup(writer: str) -> tuple[Served, dict]:
    """Serve ``writer`` with whichever dask_lsio this process imports."""
    import dask_lsio

    return Served(writer), {"dask_lsio": dask_lsio.__version__, "file": dask_lsio.__file__}
