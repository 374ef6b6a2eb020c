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
import bisect
import errno
import contextlib
import hashlib
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .. import config, metrics
from ..errors import BatchIOError, io_error
from ..io import hooks
from ..io.hooks import ReadHook
from ..metrics import Totals
from . import object_client
from .base import ABSENT, Errors, Held, Store, StoreDescription
from .object_client import Counts
from .object_options import Target, parse


@dataclass(frozen=True)
class Version:
    """What identifies one version of an object: its ETag, and its size."""

    etag: str | None
    size: int


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

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *,
                 _target: Target | None = None, _versions: _Versions | None = None) -> None:
        self.target = _target if _target is not None else parse(url, storage_options)
        t = self.target
        self.description = StoreDescription(t.backend, f"{t.root}/{t.prefix}",
                                            t.options + t.headers)
        self.url = t.url
        self._head = t.prefix + "/" if t.prefix else ""
        self._versions = _versions  # set for a hold's reader: the versions it saw

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.target,))

    @property
    def _client(self) -> Any:
        return object_client.client(self.target)

    def name(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

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

    # -- reads ---------------------------------------------------------------------------
    def get(self, keys: Sequence[str], offsets: np.ndarray | None = None,
            lengths: np.ndarray | None = None, errors: Errors = "return",
            size_hint: int | None = None) -> Iterator[tuple[int, Any]]:
        arrived: queue.SimpleQueue = queue.SimpleQueue()
        batch, counts = self._start(self._reads([(self, k) for k in keys], offsets, lengths,
                                                lambda i, res: arrived.put((i, res))))
        failed = []
        watch = object_client.Watch(batch, counts, self.url)
        try:
            for _ in range(len(keys)):  # in completion order, while the rest is in flight
                while True:
                    try:
                        i, res = arrived.get(timeout=1.0)
                        break
                    except queue.Empty:
                        if batch.done():
                            batch.result()  # a bug on the loop: raised here
                        watch.check()
                if isinstance(res, OSError) and errors == "raise":
                    failed.append(res)
                else:
                    yield i, res
        finally:  # the whole batch finishes before anything is raised
            self._wait(batch, counts, "lsio-read")
        if failed:
            raise BatchIOError(f"{len(failed)} of {len(keys)} reads failed", failed)

    def get_hooked(self, keys: Sequence[str], offsets: np.ndarray, lengths: np.ndarray,
                   hook: ReadHook,
                   spans: list[tuple[int, int]] | None = None) -> dict[int, OSError]:
        # decoded by the C kernel on decode threads as the responses arrive (the GIL
        # released), while the rest of the batch is still in flight
        return self.get_hooked_from([_Part(self, keys)], offsets, lengths, hook, spans)

    def get_hooked_from(self, parts, offsets, lengths, hook, spans=None) -> dict[int, OSError]:
        owners = [(p.store, k) for p in parts for k in p.keys]
        if any(not isinstance(s, ObjectStore) for s, _ in owners):
            raise ValueError(f"{self!r} cannot read the objects of every store given")
        starts = [lo for lo, _ in (spans or [(0, len(owners))])]
        failed: dict[int, OSError] = {}
        arrived: queue.SimpleQueue = queue.SimpleQueue()

        def decode(i: int, data: Any, ctxs: dict[int, int]) -> None:
            lo = starts[bisect.bisect_right(starts, i) - 1]
            ctx = ctxs.get(lo)
            if ctx is None:  # each thread its own contexts (one user at a time)
                ctx = ctxs[lo] = hook.context(lo)
            n = len(memoryview(data))
            code = hook.call(ctx, i - lo, hooks.address(data) if n else 0, n)
            if code:
                failed[i] = io_error(code, owners[i][0].name(owners[i][1]), "decode")

        def work() -> None:  # a decode thread: large reads as they arrive, until told to stop
            ctxs: dict[int, int] = {}
            while (item := arrived.get()) is not None:
                decode(*item, ctxs)

        on_loop: dict[int, int] = {}  # the event loop thread's contexts

        def on_read(i: int, res: Any) -> None:  # on the event loop: never waits
            if isinstance(res, OSError):
                failed[i] = res
            elif len(memoryview(res)) <= _DECODE_ON_LOOP:
                # a small read costs more to hand to a decode thread (a wake-up, the GIL
                # passed twice) than to decode here, with the GIL released
                decode(i, res, on_loop)
            else:  # large ones are decoded on decode threads, several at once
                arrived.put((i, res))

        decoders = [self.decode_pool.submit(work)
                    for _ in range(max(1, min(self.decode_threads, len(owners))))]
        try:
            self._batch(self._reads(owners, offsets, lengths, on_read))
        finally:  # the decoders finish what arrived, then stop; a bug in one is raised
            for _ in decoders:
                arrived.put(None)
            for d in decoders:
                d.result()
        return failed

    def _reads(self, owners: list[tuple[ObjectStore, str]], offsets: np.ndarray | None,
               lengths: np.ndarray | None, done: Any):
        """A coroutine factory: every read of the batch, each handing ``(i, bytes or
        OSError)`` to ``done`` (called on the event loop: it must not block)."""
        offs = None if offsets is None else np.asarray(offsets).tolist()
        lens = None if lengths is None else np.asarray(lengths).tolist()
        verify = bool(config.get("store.verify"))

        def make(counts: Counts) -> list:
            async def one(i: int) -> None:
                store, key = owners[i]
                off = 0 if offs is None else int(offs[i])
                n = -1 if lens is None else int(lens[i])
                try:
                    res: Any = await store._get_one(key, off, n, counts, verify)
                except OSError as e:
                    res = e
                done(i, res)
            return [one(i) for i in range(len(owners))]
        return make

    async def _get_one(self, key: str, off: int, n: int, counts: Counts, verify: bool) -> Any:
        """One read: the whole object, a range, or a suffix; conditional when held."""
        import obstore

        options: dict[str, Any] = {}
        if off < 0 and n < 0:
            options["range"] = {"suffix": -off}
        elif n >= 0:
            options["range"] = (off, off + n)
        elif off > 0:
            options["range"] = {"offset": off}
        seen = None if self._versions is None else self._versions.get(key)
        if isinstance(seen, Version) and seen.etag:
            options["if_match"] = seen.etag
        store, path, name = self._client, self._head + key, self.name(key)
        what = "GET" + _describe(off, n)
        whole = off == 0 and n < 0
        if self._versions is None and not verify and off >= 0 and not (
                whole and self.target.root in _NO_RANGES):
            try:  # no version to learn or check: the bytes alone, in one hop (below)
                data = await object_client.request(
                    lambda: obstore.get_range_async(store, path, start=off,
                                                    end=off + n if n >= 0 else _TO_THE_END),
                    name, what, counts)
            except OSError as e:
                # an empty object has no byte 0 (416); a plain HTTP server may serve no
                # ranges (EINVAL): whole objects are then read as below
                if not whole or not (getattr(e, "status", None) == 416
                                     or e.errno == errno.EINVAL):
                    raise
                if e.errno == errno.EINVAL:
                    _NO_RANGES.add(self.target.root)
            else:
                counts.nbytes += len(data)
                return data

        async def fetch() -> tuple[Any, dict]:
            result = await obstore.get_async(store, path, options=options)
            return await result.bytes_async(), result.meta

        try:
            data, meta = await object_client.request(fetch, name, what, counts)
        except FileNotFoundError:
            if self._versions is not None:
                self._versions.see(key, ABSENT)
            raise
        if self._versions is not None:
            self._versions.see(key, Version(meta.get("e_tag"), int(meta["size"])))
        if verify and "range" not in options:
            _check_md5(data, meta.get("e_tag"), name)
        counts.nbytes += len(data)
        return data

    def has(self, keys: Sequence[str]) -> list[bool]:
        return [s is not None for s in self.sizes(keys)]

    def sizes(self, keys: Sequence[str]) -> list[int | None]:
        import obstore

        out: list[int | None] = [None] * len(keys)
        known = self._versions
        todo = []
        for i, key in enumerate(keys):
            seen = None if known is None else known.get(key)
            if isinstance(seen, Version):
                out[i] = seen.size
            elif seen != ABSENT:
                todo.append(i)

        def make(counts: Counts) -> list:
            async def one(i: int) -> None:
                path = self._head + keys[i]
                try:
                    meta = await object_client.request(
                        lambda: obstore.head_async(self._client, path), self.name(keys[i]),
                        "HEAD", counts)
                except FileNotFoundError:
                    return
                out[i] = int(meta["size"])
            return [one(i) for i in todo]
        self._batch(make)
        return out

    @contextlib.contextmanager
    def hold(self, keys: Sequence[str]) -> Iterator[Held]:
        versions = self._versions if self._versions is not None else _Versions()
        yield _HeldVersions(self, list(keys), versions)

    # -- writes --------------------------------------------------------------------------
    def put(self, items: Sequence[tuple[str, Any]],
            expect: Mapping[str, Any] | None = None) -> list[int]:
        """Write each ``(key, data)`` as one PUT. ``expect``: key -> the :class:`Version` it
        must still be at (If-Match), or ``ABSENT`` (it must not exist: If-None-Match);
        otherwise a :class:`~dask_lsio.VersionConflictError` for that item."""
        import obstore

        sizes = [len(memoryview(d).cast("B")) for _, d in items]
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
                        lambda: obstore.put_async(self._client, self._head + key, data,
                                                  mode=mode, use_multipart=False),
                        self.name(key), "PUT", counts)
                except OSError as e:
                    failed.append(e)
                else:
                    counts.nbytes += len(memoryview(data).cast("B"))
            return [one(k, d) for k, d in items]
        self._batch(make, "lsio-write")
        if failed:
            raise BatchIOError(f"{len(failed)} of {len(items)} writes failed", failed)
        return sizes

    def delete(self, keys: Sequence[str]) -> None:
        import obstore

        def make(counts: Counts) -> list:
            async def one(key: str) -> None:
                with contextlib.suppress(FileNotFoundError):
                    await object_client.request(
                        lambda: obstore.delete_async(self._client, self._head + key),
                        self.name(key), "DELETE", counts)
            return [one(k) for k in keys]
        self._batch(make, "lsio-delete")

    def list(self, prefix: str = "") -> list[str]:
        import obstore

        async def collect() -> list[str]:
            found = []
            async for batch in obstore.list(self._client, prefix=self._head + prefix or None):
                found += [m["path"] for m in batch]
            return found
        counts = Counts()
        paths = object_client.run(object_client.request(collect, self.name(prefix), "LIST",
                                                        counts))
        cut = len(self._head)
        return sorted(p[cut:] for p in paths if p.startswith(self._head + prefix))

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
    def _batch(self, make: Any, label: str = "lsio-read") -> None:
        """Run the requests ``make(counts)`` returns, all at once; record what they did."""
        self._wait(*self._start(make), label)

    def _start(self, make: Any) -> tuple[Any, Counts]:
        counts = Counts()

        async def gather() -> None:
            await asyncio.gather(*make(counts))
        return object_client.submit(gather()), counts

    def _wait(self, batch: Any, counts: Counts, label: str) -> None:
        """Wait for a batch started by :meth:`_start`, never longer than
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


@dataclass(frozen=True)
class _Part:
    store: ObjectStore
    keys: Sequence[str]


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
        self._versions = versions
        self.reader = _HeldReader(store, versions)

    def identity(self, i: int) -> Any:
        return self._versions.get(self._keys[i])  # None until read

    def present(self, i: int) -> bool | None:
        seen = self._versions.get(self._keys[i])
        return None if seen is None else seen != ABSENT

    def expect(self, i: int, identity: Any) -> None:
        if identity is not None:
            self._versions.see(self._keys[i], identity)


class _HeldReader(ObjectStore):
    versions_fixed = True

    def __init__(self, store: ObjectStore, versions: _Versions) -> None:
        super().__init__("", _target=store.target, _versions=versions)

    __eq__ = object.__eq__  # one hold's reader is not another's
    __hash__ = object.__hash__


# Reads to the end of an object of unknown size are ranged reads to here (servers return
# what there is, RFC 9110): a ranged read is one request and one hop to the event loop,
# where a plain GET is two (the response, then its body): 0.39 s of CPU against 0.63 s for
# the 1,024 objects of the cloud benchmark's dataset A (SeaweedFS, loopback).
_TO_THE_END = 1 << 53
# Reads up to this size are decoded on the event loop's thread as they arrive (the cloud
# benchmark's A, 1,024 chunks of 40 kB at 0 ms: 0.49 s of client CPU against 0.535 s when
# each went to a decode thread); larger ones go to the decode threads, in parallel.
_DECODE_ON_LOOP = 256 << 10
_NO_RANGES: set[str] = set()  # servers that refused a ranged read (plain HTTP ones)


def _rebuild(target: Target) -> ObjectStore:
    return ObjectStore("", _target=target)


def _describe(off: int, n: int) -> str:
    if off < 0 and n < 0:
        return f" last {-off} bytes"
    if n >= 0:
        return f" bytes {off}-{off + n}"
    return f" bytes {off}-" if off else ""


def _check_md5(data: Any, etag: str | None, name: str) -> None:
    """Compare a whole object with its ETag where that is its MD5 (a single-part upload)."""
    tag = (etag or "").strip('"')
    if len(tag) == 32 and all(c in "0123456789abcdef" for c in tag.lower()):
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != tag.lower():
            raise io_error(5, name, "read (bytes differ from the object's MD5 ETag)")
