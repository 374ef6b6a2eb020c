"""Decode threads: the thread that drives a store batch hands completed chunks to them
(or, with one decode thread, decodes them itself as they arrive).

numcodecs decoders and numpy copies release the GIL, so a few threads decode in parallel
while the calling thread keeps the IO batch moving. The threads are the store's (its engine's
decode pool); the calling thread decodes too once its IO is done, so a busy pool never
stalls it.
"""

from __future__ import annotations

import queue
from concurrent.futures import Executor
from typing import Any, Callable, Iterable


def run(items: Iterable[tuple[Any, ...]], work: Callable[..., None], threads: int,
        pool: Executor) -> None:
    """Call ``work(*item)`` for every item, on ``threads`` decode threads (the caller's
    included, the others from ``pool``), as items arrive.

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

    futures = [pool.submit(drain) for _ in range(helpers)]
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
