"""Read hooks: a C function every completed read is handed to, on the thread that finished it.

The zarr layer's decode kernel is such a function: it decodes a read's chunks into their
places in the output while the bytes are still in the CPU cache, with the GIL released. The
io_uring engine calls it from C in its ring threads; the thread engine and stores that hold
bytes in memory call it through cffi (which releases the GIL) from their worker threads,
with :func:`run_groups`. Either way every read is decoded by the same C code.
"""

from __future__ import annotations

import queue
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable

import numpy as np

_MAX_GROUP = 64  # reads per hand-off to a worker thread


@dataclass(frozen=True)
class ReadHook:
    """What a hooked read batch calls for every read that succeeded.

    Attributes
    ----------
    function : int
        Address of a C ``lsio_hook``: ``int hook(void *ctx, int64_t idx, const char *data,
        int64_t n)``, returning 0 or an error code (the read then fails at stage "decode").
    context : callable
        ``context(lo)``: the hook's context (an address) for a part of the batch starting at
        read ``lo``; the hook then sees read indices relative to ``lo``. A context is used by
        one thread at a time (it may hold scratch memory).
    call : callable
        ``call(ctx, idx, data_address, nbytes)``: the same function called from Python (the
        GIL released while it runs), for engines whose reads complete in Python threads.
    bufsize : int
        Bytes a read is expected to need (reads to EOF of larger objects get more).
    """

    function: int
    context: Callable[[int], int]
    call: Callable[[int, int, int, int], int]
    bufsize: int


def spans(n: int, parts: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds of at most ``parts`` contiguous, non-empty parts of ``n`` reads
    (one part when ``n`` is 0)."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def groups(spans: list[tuple[int, int]], threads: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` groups of reads handed to worker threads: each within one span (a span's
    reads share a hook context's plan), about four per thread, at most ``_MAX_GROUP``."""
    n = max((hi for _, hi in spans), default=0)
    size = max(1, min(_MAX_GROUP, n // (4 * max(threads, 1))))
    return [(a, min(a + size, hi)) for lo, hi in spans for a in range(lo, hi, size)]


def run_groups(executor: Executor, parts: list[tuple[int, int]],
               run_one: Callable[[int, int], None], workers: int | None = None) -> None:
    """Run ``run_one(lo, hi)`` for every group on ``executor``, at most ``workers`` groups at
    once (default: as many as the executor runs); raise the first exception once every
    group finished (no group may outlive the batch's memory)."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for part in parts:
        todo.put(part)
    done: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:  # groups one after the other, until none is left
        error = None
        while error is None:
            try:
                lo, hi = todo.get_nowait()
            except queue.Empty:
                break
            try:
                run_one(lo, hi)
            except BaseException as e:  # a bug, not an IO failure: re-raised by the caller
                error = e
        done.put(error)

    n = len(parts) if workers is None else max(1, min(workers, len(parts)))
    for _ in range(n):
        executor.submit(work)
    errors = [e for e in (done.get() for _ in range(n)) if e is not None]
    if errors:
        raise errors[0]


def address(buffer: object) -> int:
    """The address of a buffer's first byte (it must stay alive while the address is used)."""
    return int(np.frombuffer(buffer, np.uint8).ctypes.data) if len(memoryview(buffer)) else 0
