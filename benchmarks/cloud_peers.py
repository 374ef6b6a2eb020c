"""The cloud benchmark's readers and writers (``bench_cloud.py``), one run per fresh process.

``bench_cloud.py --worker TASK`` runs one :class:`Task` (a JSON dict: reader, workload, the
server's endpoint, the array's key prefix ...) with :func:`run_task` and prints its result
as JSON: the seconds, what it delivered (a sum, bytes) and how many S3 requests the server
answered meanwhile. Each reader first does something untimed with its own stack (a small
read, or crop batches elsewhere): imports, clients and connections exist before the clock
starts. With ``--baseline`` the same task runs in a process importing the other dask_lsio.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from crops_tasks import BATCH, CROP, SEED
from harness.s3_server import KEY, REGION, SECRET, requests_served, storage_options
from harness.zarr_data import CHUNK, make_slab, object_paths
from read_peers import slab_scan

BLOCK = 64  # axis-0 size of the dask blocks written (as bench_write)


@dataclass(frozen=True)
class Task:
    """One timed run, sent to the worker as JSON.

    ``prefix`` is the source array's key prefix in ``bucket``; ``starts`` (crops) the crops'
    starts per batch, ``warm_starts`` those of the untimed batches; ``out`` (write) the new
    array's prefix and ``local`` the folder holding the objects the write ceiling puts.
    """

    reader: str
    workload: str
    endpoint: str
    bucket: str
    prefix: str
    shape: list[int]
    chunks: list[int]
    shards: list[int] | None
    concurrency: int
    metrics: str = ""
    starts: list | None = None
    warm_starts: list | None = None
    out: str = ""
    local: str = ""

    def url(self, prefix: str | None = None) -> str:
        return f"s3://{self.bucket}/{prefix or self.prefix}"

    def lsio_options(self) -> dict:
        """dask_lsio's storage options (fsspec-style names)."""
        return storage_options(self.endpoint)

    def s3fs_options(self) -> dict:
        """s3fs's: the region goes to botocore's client."""
        return {"key": KEY, "secret": SECRET, "endpoint_url": self.endpoint,
                "client_kwargs": {"region_name": REGION}}

    def obstore(self, prefix: str | None = None) -> Any:
        """An obstore S3Store on ``prefix`` (default: the source array's)."""
        from obstore.store import S3Store

        return S3Store(self.bucket, prefix=prefix or self.prefix, endpoint=self.endpoint,
                       access_key_id=KEY, secret_access_key=SECRET, region=REGION,
                       client_options={"allow_http": True})

    def windows(self, starts: list) -> list[list[tuple[slice, ...]]]:
        return [[tuple(slice(a, a + n) for a, n in zip(s, CROP)) for s in b] for b in starts]


def blosc_lz4() -> Any:
    """Layout A's codec, for the writers."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


# -- the readers -------------------------------------------------------------------------


class Peer:
    """A reader and writer. ``setup`` imports and configures it (raising: "not available")
    and returns its versions; ``warm`` runs untimed; ``scan`` returns (sum, bytes);
    ``crops`` yields one array per batch; ``write`` writes ``data`` to ``task.out``."""

    detail = ""

    def __init__(self, task: Task) -> None:
        self.t = task

    def setup(self) -> dict:
        return {}

    def warm(self) -> None:
        self.read_corner()

    def read_corner(self) -> None:
        raise NotImplementedError

    def scan(self) -> tuple[float | None, int]:
        raise NotImplementedError(f"{self.t.reader} has no scan")

    def crops(self, starts: list) -> Iterator[np.ndarray]:
        raise NotImplementedError(f"{self.t.reader} has no crops")

    def write(self, data: np.ndarray) -> None:
        raise NotImplementedError(f"{self.t.reader} has no write")


class Dask(Peer):
    """``dask_lsio`` on ``s3://`` (from_zarr, RandomCrops, to_zarr; strict, its store's
    concurrency set) or dask.array's from_zarr / to_zarr over s3fs (zarr's FsspecStore,
    default chunks); threaded scheduler."""

    def setup(self) -> dict:
        import dask

        dask.config.set({"scheduler": "threads"})
        if self.t.reader == "dask":
            import dask.array as da
            import s3fs

            self.from_zarr, self.to_zarr = da.from_zarr, da.to_zarr
            self.options = self.t.s3fs_options()
            return {"dask": dask.__version__, "s3fs": s3fs.__version__,
                    "workers": os.cpu_count(), "chunks": "default (the zarr chunks)"}
        import dask_lsio

        try:
            from dask_lsio.store import ObjectStore  # noqa: F401
        except ImportError:
            raise RuntimeError("this dask_lsio has no object store (dask_lsio.store."
                               "ObjectStore)") from None
        dask.config.set({"lsio.strict": True, "lsio.store.concurrency": self.t.concurrency})
        self.lsio = dask_lsio
        self.from_zarr, self.to_zarr = dask_lsio.from_zarr, dask_lsio.to_zarr
        self.options = self.t.lsio_options()
        return {"dask_lsio": dask_lsio.__version__, "file": dask_lsio.__file__,
                "lsio.store.concurrency": self.t.concurrency}

    def open(self) -> Any:
        return self.from_zarr(self.t.url(), storage_options=self.options)

    def read_corner(self) -> None:
        self.open()[0, :1, :1].compute()

    def scan(self) -> tuple[float | None, int]:
        a = self.open()
        self.detail = f"blocks {'x'.join(map(str, a.chunksize))}, {a.npartitions:,} tasks"
        return float(a.sum().compute()), a.nbytes

    def crops(self, starts: list) -> Iterator[np.ndarray]:
        if self.t.reader == "dask":
            raise NotImplementedError("dask has no crops here (a batch is ~20 s of graph)")
        crops = self.lsio.RandomCrops(self.t.url(), CROP, BATCH, seed=SEED, length=len(starts),
                                      storage_options=self.options)
        name = crops.sources[0].name
        given = [np.asarray(b) for b in starts]
        crops.locations = lambda e, b: {name: given[b]}  # the same crops as the others'
        return (b[name] for b in crops.iter_epoch(0))

    def write(self, data: np.ndarray) -> None:
        import dask.array as da

        x = da.from_array(data, chunks=(BLOCK, *data.shape[1:]), name=False)
        self.to_zarr(x, self.t.url(self.t.out), storage_options=self.options, chunks=CHUNK,
                     compressors=blosc_lz4())


class Zarr(Peer):
    """zarr-python, default settings, on ``zarr.storage.ObjectStore`` (obstore) or
    ``FsspecStore`` (s3fs); scans in slabs with the next one's read in flight."""

    def __init__(self, task: Task, kind: str) -> None:
        super().__init__(task)
        self.kind = kind
        self.pool = ThreadPoolExecutor(1)

    def setup(self) -> dict:
        import zarr

        info = {"zarr": zarr.__version__, "async.concurrency": zarr.config.get("async.concurrency")}
        if self.kind == "obstore":
            return info | {"obstore": importlib.metadata.version("obstore")}
        import s3fs

        return info | {"s3fs": s3fs.__version__}

    def store(self, prefix: str | None = None, read_only: bool = True) -> Any:
        from zarr.storage import FsspecStore, ObjectStore

        if self.kind == "obstore":
            return ObjectStore(self.t.obstore(prefix), read_only=read_only)
        return FsspecStore.from_url(self.t.url(prefix), storage_options=self.t.s3fs_options(),
                                    read_only=read_only)

    def open(self) -> Any:
        import zarr

        return zarr.open_array(self.store(), mode="r")

    def read_corner(self) -> None:
        self.open()[0, :1, :1]

    def scan(self) -> tuple[float | None, int]:
        z = self.open()
        total = slab_scan(lambda a, b: self.pool.submit(z.__getitem__, slice(a, b)), z.shape[0])
        return total, z.nbytes

    def crops(self, starts: list) -> Iterator[np.ndarray]:
        z = self.open()  # one crop after the other, as a user's loop
        return (np.stack([z[w] for w in batch]) for batch in self.t.windows(starts))

    def write(self, data: np.ndarray) -> None:
        import zarr

        z = zarr.create_array(self.store(self.t.out, read_only=False), shape=data.shape,
                              dtype=data.dtype, chunks=CHUNK, compressors=blosc_lz4())
        z[:] = data


class Tensorstore(Peer):
    """tensorstore's zarr3 driver on its s3 kvstore, default context; a batch's crops all
    issued at once."""

    def setup(self) -> dict:
        import tensorstore as ts

        self.ts = ts
        return {"tensorstore": importlib.metadata.version("tensorstore"),
                "context": "default"}

    def kvstore(self, prefix: str) -> dict:
        return {"driver": "s3", "bucket": self.t.bucket, "path": prefix.rstrip("/") + "/",
                "endpoint": self.t.endpoint, "aws_region": REGION,
                "aws_credentials": {"type": "environment"}}

    def open(self) -> Any:
        spec = {"driver": "zarr3", "kvstore": self.kvstore(self.t.prefix)}
        return self.ts.open(spec, read=True).result()

    def read_corner(self) -> None:
        self.open()[0, :1, :1].read().result()

    def scan(self) -> tuple[float | None, int]:
        s = self.open()
        total = slab_scan(lambda a, b: s[a:b].read(), s.shape[0])
        return total, int(np.prod(s.shape)) * s.dtype.numpy_dtype.itemsize

    def crops(self, starts: list) -> Iterator[np.ndarray]:
        s = self.open()
        return (np.stack([f.result() for f in [s[w].read() for w in batch]])
                for batch in self.t.windows(starts))

    def write(self, data: np.ndarray) -> None:
        from write_writers import LAYOUTS, tensorstore_spec

        spec = tensorstore_spec(data, LAYOUTS["A"], Path("."))
        spec["kvstore"] = self.kvstore(self.t.out)
        self.ts.open(spec).result().write(data).result()


class Ceiling(Peer):
    """No decode, no Zarr: obstore gets (puts) of the same objects, ``concurrency`` requests
    in flight, as dask_lsio's store allows itself."""

    moved = 0  # stored bytes the last run moved

    def setup(self) -> dict:
        import obstore

        self.obs = obstore
        self.src = self.t.obstore()
        self.dst = self.t.obstore(self.t.out) if self.t.out else None
        return {"obstore": importlib.metadata.version("obstore"),
                "concurrency": self.t.concurrency}

    def keys(self) -> list[str]:
        """The array's objects: "c/0/0/0" ... (chunks, or shards)."""
        return [p[1:] for p in object_paths("", self.t.shape, self.t.shards or self.t.chunks)]

    def run(self, op: Any, store: Any, items: Iterable) -> int:
        """``await op(store, item)`` for every item, ``concurrency`` at once; their sum."""
        todo = iter(items)

        async def worker() -> int:
            n = 0
            for item in todo:  # one shared iterator: each item is taken once
                n += await op(store, item)
            return n

        async def main() -> int:
            return sum(await asyncio.gather(*(worker() for _ in range(self.t.concurrency))))

        return asyncio.run(main())

    async def get(self, store: Any, key: str) -> int:
        r = await self.obs.get_async(store, key)
        return len(await r.bytes_async())

    async def put(self, store: Any, item: tuple[str, bytes]) -> int:
        await self.obs.put_async(store, item[0], item[1])
        return len(item[1])

    def warm(self) -> None:
        self.run(self.get, self.src, self.keys()[:1])
        if self.t.workload == "write":  # the objects to put: the local copy of the source's
            root = Path(self.t.local)
            self.objects = [(k, (root / k).read_bytes()) for k in ["zarr.json"] + self.keys()]

    def scan(self) -> tuple[float | None, int]:
        self.moved = self.run(self.get, self.src, self.keys())
        return None, int(np.prod(self.t.shape)) * 4  # the decoded bytes they hold

    def crops(self, starts: list) -> Iterator[np.ndarray]:
        """Per batch, every chunk its crops touch, once."""
        self.moved = 0
        for batch in starts:
            keys = set().union(*(chunk_keys(s, self.t.chunks) for s in batch))
            self.moved += self.run(self.get, self.src, sorted(keys))
            yield np.zeros(0, np.float32)  # nothing decoded

    def write(self, data: np.ndarray) -> None:
        self.moved = self.run(self.put, self.dst, self.objects)


def chunk_keys(start: list[int], chunks: list[int]) -> set[str]:
    """The keys of the chunks a crop starting at ``start`` touches."""
    ranges = [range(a // c, (a + n - 1) // c + 1) for a, n, c in zip(start, CROP, chunks)]
    return {"c/" + "/".join(map(str, idx)) for idx in itertools.product(*ranges)}


def make_peer(task: Task) -> Peer:
    """The reader (writer) ``task.reader``."""
    if task.reader.startswith("zarr-"):
        return Zarr(task, task.reader.split("-", 1)[1])
    classes = {"dask_lsio": Dask, "dask": Dask, "tensorstore": Tensorstore, "ceiling": Ceiling}
    return classes[task.reader](task)


# -- one run -------------------------------------------------------------------------------


def run_task(task_dict: dict) -> dict:
    """Run one task in this fresh process: set up, warm up, then the timed part."""
    task = Task(**task_dict)
    # tensorstore's "environment" credentials; harmless for the others
    os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION=REGION)
    peer = make_peer(task)
    info = peer.setup()
    data = make_slab(0, task.shape[0]) if task.workload == "write" else None
    peer.warm()
    if task.workload == "crops" and task.warm_starts:
        for _ in peer.crops(task.warm_starts):
            pass
    gc.collect()
    before = requests_served(task.metrics) if task.metrics else -1
    t0 = time.perf_counter()
    if task.workload == "scan":
        value, nbytes = peer.scan()
        seconds = time.perf_counter() - t0
    elif task.workload == "crops":
        value = 0.0
        for b in peer.crops(task.starts):
            value += float(b.sum(dtype=np.float64))
        seconds = time.perf_counter() - t0
        nbytes = len(task.starts) * BATCH * int(np.prod(CROP)) * 4
    else:
        peer.write(data)
        seconds = time.perf_counter() - t0
        value, nbytes = None, data.nbytes
    after = requests_served(task.metrics) if task.metrics else -1
    out = {"seconds": seconds, "nbytes": nbytes, "sum": value, "info": info,
           "detail": peer.detail, "requests": after - before if min(before, after) >= 0 else -1}
    if isinstance(peer, Ceiling):
        out |= {"sum": None, "moved": peer.moved}
    return out
