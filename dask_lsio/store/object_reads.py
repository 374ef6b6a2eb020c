"""Reads of an object store's batch: all in flight at once on the process's event loop,
each completion handed on as it arrives (to the caller in completion order, or to the
decode kernel).

A read is one request: a ranged GET (also for a whole object: a range to its end), which
obstore answers in one hop to the event loop, or, where the object's version must be
learnt or checked (a :meth:`~dask_lsio.store.ObjectStore.hold`'s reads, ``lsio.store.verify``)
or for a suffix, a GET whose response carries the object's ETag and size.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import queue
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .. import config
from ..errors import BatchIOError, io_error
from ..io import hooks
from ..io.hooks import ReadHook
from . import object_client
from .base import ABSENT, Errors
from .object_client import Counts

if TYPE_CHECKING:
    from .object_store import ObjectStore

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

Owners = list  # of (ObjectStore, key): the objects of a batch, over one or several stores


@dataclass(frozen=True)
class Version:
    """What identifies one version of an object: its ETag, and its size."""

    etag: str | None
    size: int


def get(store: ObjectStore, keys: Sequence[str], offsets: np.ndarray | None,
        lengths: np.ndarray | None, errors: Errors) -> Iterator[tuple[int, Any]]:
    """:meth:`Store.get <dask_lsio.store.Store.get>`: ``(index, bytes or OSError)`` in
    completion order, while the rest of the batch is in flight."""
    arrived: queue.SimpleQueue = queue.SimpleQueue()
    batch, counts = store.start_batch(reads([(store, k) for k in keys], offsets, lengths,
                                            lambda i, res: arrived.put((i, res))))
    failed = []
    watch = object_client.Watch(batch, counts, store.url)
    try:
        for _ in range(len(keys)):
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
        store.finish_batch(batch, counts, "lsio-read")
    if failed:
        raise BatchIOError(f"{len(failed)} of {len(keys)} reads failed", failed)


def get_hooked(store: ObjectStore, owners: Owners, offsets: np.ndarray, lengths: np.ndarray,
               hook: ReadHook, spans: list[tuple[int, int]] | None) -> dict[int, OSError]:
    """:meth:`Store.get_hooked <dask_lsio.store.Store.get_hooked>` of ``owners``' objects:
    each read decoded by ``hook`` as it arrives (small ones on the event loop's thread,
    large ones on decode threads); returns the failed reads by index."""
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
            if len(decoders) < most:  # started with the first ones: a batch of small
                decoders.append(store.decode_pool.submit(work))  # reads holds no thread

    decoders: list = []  # (appended on the event loop; read here once the batch is over)
    most = max(1, min(store.decode_threads, len(owners)))
    try:
        store.run_batch(reads(owners, offsets, lengths, on_read))
    finally:  # the decoders finish what arrived, then stop; a bug in one is raised
        for _ in decoders:
            arrived.put(None)
        for d in decoders:
            d.result()
    return failed


def reads(owners: Owners, offsets: np.ndarray | None, lengths: np.ndarray | None,
          done: Callable[[int, Any], None]) -> Callable[[Counts], list]:
    """A coroutine factory: every read of the batch, each handing ``(i, bytes or
    OSError)`` to ``done`` (called on the event loop: it must not block)."""
    offs = None if offsets is None else np.asarray(offsets).tolist()
    lens = None if lengths is None else np.asarray(lengths).tolist()
    verify = bool(config.get("store.verify"))
    clients: dict[int, Any] = {}  # each store's client, looked up once per batch
    for store, _ in owners:
        if id(store) not in clients:
            clients[id(store)] = store.client

    def make(counts: Counts) -> list:
        async def one(i: int) -> None:
            store, key = owners[i]
            off = 0 if offs is None else int(offs[i])
            n = -1 if lens is None else int(lens[i])
            try:
                res: Any = await get_one(store, clients[id(store)], key, off, n, counts,
                                         verify)
            except OSError as e:
                res = e
            done(i, res)
        return [one(i) for i in range(len(owners))]
    return make


async def get_one(store: ObjectStore, client: Any, key: str, off: int, n: int,
                  counts: Counts, verify: bool) -> Any:
    """One read: the whole object, a range, or a suffix (``off`` < 0 and ``n`` < 0);
    conditional on the version held, where the store is a hold's reader."""
    import obstore

    versions = store.versions
    path, name = store.path(key), store.name(key)
    what = "GET" + _describe(off, n)
    whole = off == 0 and n < 0
    if versions is None and not verify and off >= 0 and not (
            whole and store.target.root in _NO_RANGES):
        try:  # no version to learn or check: the bytes alone, in one hop
            data = await object_client.request(
                lambda: obstore.get_range_async(client, path, start=off,
                                                end=off + n if n >= 0 else _TO_THE_END),
                name, what, counts)
        except OSError as e:
            # an empty object has no byte 0 (416); a plain HTTP server may serve no ranges
            # (EINVAL): whole objects are then read as below
            if not whole or not (getattr(e, "status", None) == 416 or e.errno == errno.EINVAL):
                raise
            if e.errno == errno.EINVAL:
                _NO_RANGES.add(store.target.root)
        else:
            counts.nbytes += len(data)
            return data
    options: dict[str, Any] = {}
    if off < 0 and n < 0:
        options["range"] = {"suffix": -off}
    elif n >= 0:
        options["range"] = (off, off + n)
    elif off > 0:
        options["range"] = {"offset": off}
    seen = None if versions is None else versions.get(key)
    if isinstance(seen, Version) and seen.etag:
        options["if_match"] = seen.etag

    async def fetch() -> tuple[Any, dict]:
        result = await obstore.get_async(client, path, options=options)
        return await result.bytes_async(), result.meta

    try:
        data, meta = await object_client.request(fetch, name, what, counts)
    except FileNotFoundError:
        if versions is not None:
            versions.see(key, ABSENT)
        raise
    if versions is not None:
        versions.see(key, Version(meta.get("e_tag"), int(meta["size"])))
    if verify and "range" not in options:
        _check_md5(data, meta.get("e_tag"), name)
    counts.nbytes += len(data)
    return data


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
            raise io_error(errno.EIO, name, "read (bytes differ from the object's MD5 ETag)")
