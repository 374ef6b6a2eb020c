"""The object stores' clients: one obstore client per (store, process), one event loop per
process that keeps a whole batch of requests in flight, and the retries of failed requests.

Each request runs on the process's loop, within ``lsio.store.concurrency`` requests at once
(per process, all stores together). A request that fails in a way that may pass (throttling
429/503, other 5xx, a dropped connection, a timeout) is tried again after an exponential
backoff with full jitter, up to ``lsio.store.retries`` retries and ``lsio.store.retry-budget``
seconds; then it raises an ``OSError`` naming the store, the key and the last HTTP status.

Why our retries and not obstore's ``retry_config``: obstore retries inside Rust and reports
neither how often it retried nor the statuses it saw; the metrics must count retries and the
error must name the last status. So obstore is configured with ``max_retries=0`` and its own
timeouts (``client_options``), and this module decides what to try again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Awaitable, Callable

from .. import config
from ..errors import VersionConflictError
from ..metrics import Totals
from .object_options import Target

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_STATUS = re.compile(r"status(?: code)?:? (\d{3})")


@dataclass
class Counts:
    """Requests, retries and failures of one batch (recorded into the metrics at its end):
    ``errors`` are requests that failed for good, other than a missing object (an answer,
    not a failure) and a version conflict (``conflicts``: another writer was first)."""

    requests: int = 0
    finished: int = 0  # requests done, for good or not (progress, for stall detection)
    retries: int = 0
    errors: int = 0
    conflicts: int = 0
    nbytes: int = 0
    policy: RetryPolicy = field(default_factory=lambda: RetryPolicy.from_config())
    # the process's limit of requests in flight (looked up once per batch, not per request)
    limit: asyncio.Semaphore = field(default_factory=lambda: loop().limit)


@dataclass(frozen=True)
class RetryPolicy:
    """``lsio.store`` retry settings, read once per batch (not per request)."""

    retries: int
    budget: float
    backoff: float
    max_backoff: float

    @classmethod
    def from_config(cls) -> RetryPolicy:
        def seconds(key: str) -> float:
            return _duration(config.get(key)).total_seconds()

        return cls(int(config.get("store.retries")), seconds("store.retry-budget"),
                   seconds("store.backoff"), seconds("store.max-backoff"))


class _Loop:
    """The process's event loop thread (made again in a forked child)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.limit = asyncio.Semaphore(max(1, int(config.get("store.concurrency"))))
        self.thread = threading.Thread(target=self.loop.run_forever, name="lsio-store-loop",
                                       daemon=True)
        self.thread.start()


TOTALS = Totals()  # requests made where no engine runs (a client opening metadata)
_loop: _Loop | None = None
_loop_lock = threading.Lock()
_clients: dict[tuple, Any] = {}


def loop() -> _Loop:
    """The process's loop (started on first use)."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.pid != os.getpid():
            _loop = _Loop()
            _clients.clear()  # a forked child's clients hold the parent's connections
        return _loop


def submit(coro: Awaitable[Any]) -> concurrent.futures.Future:
    """Start ``coro`` on the process's loop (from any other thread)."""
    state = loop()
    if threading.current_thread() is state.thread:
        raise RuntimeError("object-store requests cannot wait on their own event loop")
    return asyncio.run_coroutine_threadsafe(coro, state.loop)


def run(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` on the process's loop and wait for its result."""
    batch = submit(coro)
    wait(batch, None, "an object store")
    return batch.result()


class Watch:
    """Progress of a batch: :meth:`check` cancels it and raises TimeoutError once no request
    of it finished for ``lsio.io-stall-timeout`` (a request's own limits make this a last
    resort: no wait of ours is unbounded)."""

    def __init__(self, batch: concurrent.futures.Future, counts: Counts | None,
                 where: str) -> None:
        self.batch, self.counts, self.where = batch, counts, where
        self.stall = _duration(config.get("io-stall-timeout")).total_seconds()
        self.seen, self.since = -1, time.monotonic()

    def check(self) -> None:
        done = -1 if self.counts is None else self.counts.finished
        now = time.monotonic()
        if done != self.seen:
            self.seen, self.since = done, now
        elif now - self.since > self.stall:
            self.batch.cancel()
            raise TimeoutError(errno.ETIMEDOUT, f"no request to {self.where} finished in "
                               f"{self.stall:.0f} s (lsio.io-stall-timeout)")


def wait(batch: concurrent.futures.Future, counts: Counts | None, where: str) -> None:
    """Wait for ``batch`` (see :class:`Watch`); raise what it raised. A batch cancelled for
    a stall has already raised TimeoutError: nothing to wait for."""
    watch = Watch(batch, counts, where)
    while not batch.cancelled():
        try:
            return batch.result(timeout=1.0)
        except concurrent.futures.TimeoutError:
            watch.check()


def client(target: Target, at_prefix: bool = False) -> Any:
    """The obstore store at the root of ``target``'s bucket (one per process), or at its
    prefix (``at_prefix``: for zarr-python and xarray, which open the root of the store
    they are given; obstore retries their requests itself, with ``lsio.store``'s
    settings, since they do not go through :func:`request`)."""
    prefix = target.prefix if at_prefix else None
    key = (target.backend, target.root, prefix, target.options, target.headers)
    loop()  # a forked child starts afresh
    with _loop_lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = _make(target, prefix)
        return found


def _make(target: Target, prefix: str | None = None) -> Any:
    from obstore.store import AzureStore, GCSStore, HTTPStore, S3Store

    opts = target.config()
    client_options: dict[str, Any] = {
        "timeout": _duration(config.get("store.timeout")),
        "connect_timeout": _duration(config.get("store.connect-timeout")),
        "pool_max_idle_per_host": str(max(1, int(config.get("store.concurrency")))),
    }
    if opts.pop("_allow_http", False) or target.root.startswith("http://"):
        client_options["allow_http"] = True
    if target.headers:
        client_options["default_headers"] = {k: v.value for k, v in target.headers}
    if prefix is None:  # ours: we retry (see the module's docstring)
        retry: dict[str, Any] = {"max_retries": 0, "retry_timeout": timedelta(seconds=1)}
    else:  # zarr-python's and xarray's (metadata): obstore retries, with our settings
        policy = RetryPolicy.from_config()
        retry = {"max_retries": policy.retries, "retry_timeout": timedelta(seconds=policy.budget),
                 "backoff": {"init_backoff": timedelta(seconds=policy.backoff),
                             "max_backoff": timedelta(seconds=policy.max_backoff), "base": 2}}
    common: dict[str, Any] = {"client_options": client_options, "retry_config": retry}
    if target.backend == "http":
        url = target.root + ("/" + prefix if prefix else "")
        return HTTPStore.from_url(url, **common)
    common["prefix"] = prefix or None
    if target.backend == "s3":
        return S3Store(target.root, config=opts, **common)
    if target.backend == "gcs":
        return GCSStore(target.root, config=opts, **common)
    return AzureStore(target.root, config=opts, **common)


def _duration(value: Any) -> timedelta:
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    from dask.utils import parse_timedelta

    return timedelta(seconds=parse_timedelta(value))


async def request(fn: Callable[[], Awaitable[Any]], name: str, what: str,
                  counts: Counts) -> Any:
    """``await fn()`` within the process's concurrency limit, retried as the module says.

    Parameters
    ----------
    fn : callable
        Makes the request (called again for each try).
    name : str
        The object, for errors (its URL).
    what : str
        The request, for errors (``"GET bytes 0-99"``).
    counts : Counts
        Where the request, its retries and its failure are counted.

    Raises
    ------
    FileNotFoundError
        No such object (never retried: a missing chunk is fill_value).
    PermissionError
        401/403 (never retried, never read as fill).
    VersionConflictError
        A conditional request found another version (412, or the object already exists).
    OSError
        Anything else, once retries are exhausted: errno ETIMEDOUT/ECONNRESET/EIO, the
        message naming the store, the key, the last HTTP status and the tries.
    """
    import obstore.exceptions as oe

    policy = counts.policy
    t0 = time.monotonic()
    tries = 0
    while True:
        tries += 1
        async with counts.limit:
            counts.requests += 1
            try:
                result = await fn()
            except (oe.BaseError, OSError) as e:  # obstore's own types; mapped below
                failure = _classify(e, name, what)
            else:
                counts.finished += 1
                return result
        elapsed = time.monotonic() - t0
        if not getattr(failure, "transient", False) or tries > policy.retries \
                or elapsed >= policy.budget:
            counts.finished += 1
            if isinstance(failure, VersionConflictError):
                counts.conflicts += 1
            elif not isinstance(failure, FileNotFoundError):
                counts.errors += 1
            if getattr(failure, "transient", False):
                failure.strerror = f"{failure.strerror}; gave up after {tries} tries in " \
                                   f"{elapsed:.1f} s"
            raise failure
        counts.retries += 1
        # full jitter: writers throttled together do not come back together
        await asyncio.sleep(random.uniform(0, min(policy.max_backoff,
                                                  policy.backoff * 2 ** (tries - 1))))


def _classify(exc: Exception, name: str, what: str) -> OSError:
    """The OSError that ``exc`` (an obstore error) means; ``.transient`` if worth retrying."""
    import obstore.exceptions as oe

    text = str(exc)
    found = _STATUS.search(text)
    status = int(found.group(1)) if found else None
    label = f"{what}: HTTP {status}" if status else what
    if isinstance(exc, oe.NotFoundError) or status == 404:
        out: OSError = FileNotFoundError(errno.ENOENT, f"no such object ({label})", name)
    elif isinstance(exc, (oe.PermissionDeniedError, oe.UnauthenticatedError)) \
            or status in (401, 403):
        out = PermissionError(errno.EACCES, f"access denied ({label})", name)
    elif isinstance(exc, (oe.PreconditionError, oe.AlreadyExistsError)) or status == 412:
        out = VersionConflictError(errno.EAGAIN, f"the object changed ({label})", name)
    elif isinstance(exc, (oe.NotSupportedError, oe.InvalidPathError,
                          oe.UnknownConfigurationKeyError)):
        out = OSError(errno.EINVAL, f"{what}: {_first_line(text)}", name)
    else:
        transient = status is None or status in _RETRY_STATUS
        code = errno.ETIMEDOUT if "timed out" in text.lower() or status == 408 else (
            errno.ECONNRESET if status is None else errno.EIO)
        out = OSError(code, f"{label} ({_first_line(text)})", name)
        out.transient = transient
    out.status = status
    return out


def _first_line(text: str) -> str:
    """The gist of obstore's message (its full text repeats the response body)."""
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line if len(line) <= 240 else line[:237] + "..."
