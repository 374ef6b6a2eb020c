"""ObjectStore: objects in S3, GCS, Azure Blob or behind HTTP, through obstore.

A batch is all in flight at once (within ``lsio.store.concurrency`` requests per process);
each read's bytes are handed, as they arrive, to the decode threads, where the C kernel
decodes them with the GIL released (hooked reads), or to the caller in completion order.
Each written object is one PUT, atomic on every object store: no temporary names.

Versions: an object's identity is its ETag (and size). Holding objects (:meth:`hold`) costs
no request: the first read of a held object records the version it saw, and later reads of
it are conditional (If-Match), so a shard rewritten between its index read and its data read
fails with :class:`~dask_lsio.errors.VersionConflictError` (the reader then starts over)
instead of mixing two versions. Read-modify-writes put with If-Match on the ETag they read
(If-None-Match for a new object) and are retried on conflict: independent writers in other
processes or on other machines never erase each other's values.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .. import config, metrics
from ..errors import BatchIOError
from ..io.hooks import ReadHook
from ..metrics import Totals
from . import object_client, object_reads
from .base import ABSENT, Errors, Held, KeysOf, PutStarted, Store, StoreDescription
from .object_client import Counts
from .object_options import Target, parse
from .object_reads import Version


_LOCKS: dict[tuple, threading.RLock] = {}
_LOCKS_LOCK = threading.Lock()


class ObjectStore(Store):
    """Objects under a prefix of a bucket (container, base URL).

    Parameters
    ----------
    url : str
        ``s3://bucket/prefix``, ``gs://...``, ``az://container/...`` (``abfs://``),
        ``http(s)://host/path``.
    storage_options : mapping, optional
        fsspec-style options (``key``, ``secret``, ``token``, ``anon``, ``endpoint_url``,
        ``region``, ``client_kwargs``) or obstore's configuration keys; unknown ones raise
        TypeError.
    """

    # A task's batch ends with a tail of fewer requests in flight than allowed, about a round
    # trip long; every wave of tasks pays one. One block per core halves the waves of small
    # arrays (64 MiB in 1,024 objects at 20 ms, 2 cores: 4 blocks 0.94 s, 1 block 0.785 s).
    blocks_per_core = 1

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *,
                 _target: Target | None = None, _versions: _Versions | None = None) -> None:
        self.target = _target if _target is not None else parse(url, storage_options)
        t = self.target
        self.description = StoreDescription(t.backend, f"{t.root}/{t.prefix}",
                                            t.options + t.headers)
        self.url = t.url
        self._head = t.prefix + "/" if t.prefix else ""
        self.versions = _versions  # a hold's reader: the versions it saw

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.target,))

    @property
    def client(self) -> Any:
        """This process's obstore client of the store's bucket."""
        return object_client.client(self.target)

    def name(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    def path(self, key: str) -> str:
        """Where the object ``key`` is in the bucket (its path for obstore)."""
        return self._head + key

    def child(self, prefix: str) -> ObjectStore:
        return ObjectStore("", _target=self.target.child(prefix))

    def joins(self, other: Store) -> bool:
        # one batch may hold requests to any object store this process reaches
        return isinstance(other, ObjectStore)

    @property
    def zarr_target(self) -> Any:
        """zarr-python's ``ObjectStore`` on a client of ours rooted at this prefix (so that
        xarray, which opens the root of the store it is given, finds the group here)."""
        import zarr

        return zarr.storage.StorePath(
            zarr.storage.ObjectStore(object_client.client(self.target, at_prefix=True)), "")

    # -- reads (object_reads.py) --------------------------------------------------------
    def get(self, keys: Sequence[str], offsets: np.ndarray | None = None,
            lengths: np.ndarray | None = None, errors: Errors = "return",
            size_hint: int | None = None) -> Iterator[tuple[int, Any]]:
        return object_reads.get(self, keys, offsets, lengths, errors)

    def get_hooked(self, keys: Sequence[str], offsets: np.ndarray, lengths: np.ndarray,
                   hook: ReadHook,
                   spans: list[tuple[int, int]] | None = None) -> dict[int, OSError]:
        # decoded by the C kernel as the responses arrive (the GIL released), while the
        # rest of the batch is still in flight
        return object_reads.get_hooked(self, [(self, k) for k in keys], offsets, lengths,
                                       hook, spans)

    def get_hooked_from(self, parts: Sequence[KeysOf], offsets: np.ndarray,
                        lengths: np.ndarray, hook: ReadHook,
                        spans: list[tuple[int, int]] | None = None) -> dict[int, OSError]:
        owners = [(p.store, k) for p in parts for k in p.keys]
        if any(not isinstance(s, ObjectStore) for s, _ in owners):
            raise ValueError(f"{self!r} cannot read the objects of every store given")
        return object_reads.get_hooked(self, owners, offsets, lengths, hook, spans)

    def has(self, keys: Sequence[str]) -> list[bool]:
        return [s is not None for s in self.sizes(keys)]

    def sizes(self, keys: Sequence[str]) -> list[int | None]:
        import obstore

        client = self.client
        out: list[int | None] = [None] * len(keys)
        known = self.versions
        todo = []
        for i, key in enumerate(keys):
            seen = None if known is None else known.get(key)
            if isinstance(seen, Version):
                out[i] = seen.size
            elif seen != ABSENT:
                todo.append(i)

        def make(counts: Counts) -> list:
            async def one(i: int) -> None:
                path = self.path(keys[i])
                try:
                    meta = await object_client.request(
                        lambda: obstore.head_async(client, path), self.name(keys[i]),
                        "HEAD", counts)
                except FileNotFoundError:
                    return
                out[i] = int(meta["size"])
            return [one(i) for i in todo]
        self.run_batch(make)
        return out

    @contextlib.contextmanager
    def hold(self, keys: Sequence[str]) -> Iterator[Held]:
        versions = self.versions if self.versions is not None else _Versions()
        yield _HeldVersions(self, list(keys), versions)

    # -- writes --------------------------------------------------------------------------
    # encode-then-put in groups: a group's PUTs are in flight while the next is encoded
    write_group = 64

    def put(self, items: Sequence[tuple[str, Any]],
            expect: Mapping[str, Any] | None = None) -> list[int]:
        """Write each ``(key, data)`` as one PUT. ``expect``: key -> the :class:`Version` it
        must still be at (If-Match), or ``ABSENT`` (it must not exist: If-None-Match);
        otherwise a :class:`~dask_lsio.VersionConflictError` for that item."""
        return self.start_put(items, expect).result()

    def start_put(self, items: Sequence[tuple[str, Any]],
                  expect: Mapping[str, Any] | None = None) -> PutStarted:
        import obstore

        sizes = [len(memoryview(d).cast("B")) for _, d in items]
        client = self.client
        failed: list[OSError] = []

        def make(counts: Counts) -> list:
            async def one(key: str, data: Any) -> None:
                want = (expect or {}).get(key)
                mode: Any = "overwrite"
                if want == ABSENT:
                    mode = "create"
                elif isinstance(want, Version) and want.etag:
                    mode = {"e_tag": want.etag}
                try:
                    await object_client.request(
                        lambda: obstore.put_async(client, self.path(key), data,
                                                  mode=mode, use_multipart=False),
                        self.name(key), "PUT", counts)
                except OSError as e:
                    failed.append(e)
                else:
                    counts.nbytes += len(memoryview(data).cast("B"))
            return [one(k, d) for k, d in items]
        batch, counts = self.start_batch(make)

        def wait() -> list[int]:
            self.finish_batch(batch, counts, "lsio-write")
            if failed:
                raise BatchIOError(f"{len(failed)} of {len(items)} writes failed", failed)
            return sizes
        return PutStarted(wait)

    def delete(self, keys: Sequence[str]) -> None:
        import obstore

        client = self.client
        def make(counts: Counts) -> list:
            async def one(key: str) -> None:
                with contextlib.suppress(FileNotFoundError):
                    await object_client.request(
                        lambda: obstore.delete_async(client, self.path(key)),
                        self.name(key), "DELETE", counts)
            return [one(k) for k in keys]
        self.run_batch(make, "lsio-delete")

    def list(self, prefix: str = "") -> list[str]:
        import obstore

        async def collect() -> list[str]:
            found = []
            async for batch in obstore.list(self.client, prefix=self.path(prefix) or None):
                found += [m["path"] for m in batch]
            return found
        counts = Counts()
        paths = object_client.run(object_client.request(collect, self.name(prefix), "LIST",
                                                        counts))
        cut = len(self._head)
        return sorted(p[cut:] for p in paths if p.startswith(self.path(prefix)))

    def lock(self, keys: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        """Writers in this process take turns on a bucket; writers elsewhere are kept apart
        by conditional PUTs (see :mod:`dask_lsio.zarr.write`)."""
        with _LOCKS_LOCK:
            return _LOCKS.setdefault((self.target.backend, self.target.root), threading.RLock())

    def coalescing(self) -> tuple[int, int]:
        # a request costs a round trip, in which megabytes could have arrived
        return (config.get_bytes("store.coalesce-gap"), config.get_bytes("store.coalesce-max"))

    @property
    def conditional(self) -> bool:
        """Whether :meth:`put` can write conditionally (every backend but plain HTTP).
        (Local and memory stores have no such attribute: their locks keep writers apart.)"""
        return self.target.backend != "http"

    # -- the batch -----------------------------------------------------------------------
    def run_batch(self, make: Any, label: str = "lsio-read") -> None:
        """Run the requests ``make(counts)`` returns, all at once; record what they did."""
        self.finish_batch(*self.start_batch(make), label)

    def start_batch(self, make: Any) -> tuple[Any, Counts]:
        counts = Counts()

        async def gather() -> None:
            await asyncio.gather(*make(counts))
        return object_client.submit(gather()), counts

    def finish_batch(self, batch: Any, counts: Counts, label: str) -> None:
        """Wait for a batch started by :meth:`start_batch`, never longer than
        ``lsio.io-stall-timeout`` without a request finishing (then TimeoutError)."""
        try:
            object_client.wait(batch, counts, self.url)
        finally:
            totals = self.totals
            metrics.record(totals, label, counts.nbytes, "bytes")
            metrics.record(totals, "lsio-store-requests", counts.requests, "objects")
            for name in ("retries", "errors", "conflicts"):
                if getattr(counts, name):
                    metrics.record(totals, f"lsio-store-{name}", getattr(counts, name),
                                   "objects")

    # -- accounting ----------------------------------------------------------------------
    @property
    def totals(self) -> Totals:
        from ..io import engine_in_use

        # the engine's (the worker's, with the plugin): beside its other figures; a client
        # that only opened metadata counts here without starting an engine for it
        engine = engine_in_use()
        return object_client.TOTALS if engine is None else engine.totals

    @property
    def pool(self) -> Any:
        from ..io import get_engine

        return get_engine().pool

    @property
    def decode_threads(self) -> int:
        return config.decode_threads()

    @property
    def decode_pool(self) -> Any:
        from ..io import get_engine

        return get_engine().decode_pool


class _Versions:
    """The versions a hold has seen, by key (shared by the hold's reader and nested holds)."""

    def __init__(self) -> None:
        self._seen: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        return self._seen.get(key)

    def see(self, key: str, version: Any) -> None:
        with self._lock:
            self._seen.setdefault(key, version)  # the first version read is the one held


class _HeldVersions(Held):
    """Objects held lazily: each at the version its first read sees (or one assumed)."""

    def __init__(self, store: ObjectStore, keys: list[str], versions: _Versions) -> None:
        self._keys = keys
        self.versions = versions
        self.reader = _HeldReader(store, versions)

    def identity(self, i: int) -> Any:
        return self.versions.get(self._keys[i])  # None until read

    def present(self, i: int) -> bool | None:
        seen = self.versions.get(self._keys[i])
        return None if seen is None else seen != ABSENT

    def expect(self, i: int, identity: Any) -> None:
        if identity is not None:
            self.versions.see(self._keys[i], identity)


class _HeldReader(ObjectStore):
    versions_fixed = True

    def __init__(self, store: ObjectStore, versions: _Versions) -> None:
        super().__init__("", _target=store.target, _versions=versions)

    __eq__ = object.__eq__  # one hold's reader is not another's
    __hash__ = object.__hash__


def _rebuild(target: Target) -> ObjectStore:
    return ObjectStore("", _target=target)
