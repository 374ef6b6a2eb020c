"""Decode threads: the thread that drives an engine batch hands completed chunks to them
(or, with one decode thread, decodes them itself as they arrive).

numcodecs decoders and numpy copies release the GIL, so a few threads decode in parallel
while the calling thread keeps the IO batch moving. One pool per process, created on first
use; the calling thread decodes too once its IO is done, so a busy pool never stalls it.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from .. import config

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            # room for the decoders of a few tasks running at once (dask worker threads)
            _pool = ThreadPoolExecutor(4 * config.decode_threads(), thread_name_prefix="lsio-decode")
        return _pool


def run(items: Iterable[tuple[Any, ...]], work: Callable[..., None], threads: int) -> None:
    """Call ``work(*item)`` for every item, on ``threads`` decode threads (the caller's
    included), as items arrive.

    The first exception raised by ``work`` (or by ``items``) is raised here, after every
    item already handed out was processed (buffers must not be freed under a decoder).
    """
    helpers = threads - 1
    if helpers == 0:  # decode inline as completions arrive: no hand-off at all
        try:
            for item in items:
                work(*item)
        finally:  # an engine stream left suspended would keep its reads in flight
            close = getattr(items, "close", None)
            if close is not None:
                close()
        return
    todo: queue.SimpleQueue = queue.SimpleQueue()
    errors: list[BaseException] = []

    def drain() -> None:
        while (item := todo.get()) is not None:
            if errors:
                continue  # something failed: skip the rest quickly
            try:
                work(*item)
            except BaseException as e:
                errors.append(e)

    futures = [_get_pool().submit(drain) for _ in range(helpers)]
    try:
        for item in items:
            todo.put(item)
    finally:
        for _ in range(helpers + 1):
            todo.put(None)
        drain()  # this thread decodes too
        for f in futures:
            f.result()
    if errors:
        raise errors[0]


def _forget_after_fork() -> None:
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_after_fork)
