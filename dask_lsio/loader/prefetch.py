"""Run work ahead of its consumer on background threads, with a bounded number in flight."""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def prefetched(thunks: Iterable[Callable[[], T]], depth: int, workers: int = 1,
               ordered: bool = True) -> Iterator[T]:
    """The results of ``thunks``, computed up to ``depth`` ahead on ``workers`` threads.

    At most ``depth`` results are in flight while the consumer holds the last one yielded,
    so memory stays at about ``depth + 1`` results however slow the consumer. With
    ``ordered`` the results come in the order of ``thunks``; otherwise as they complete.
    ``depth`` 0 computes each result when it is asked for. Closing the iterator early
    cancels what has not started and waits for what has.
    """
    if depth <= 0:
        for thunk in thunks:
            yield thunk()
        return
    todo = iter(thunks)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lsio-prefetch")
    pending: deque[Future] = deque()
    try:
        for thunk in todo:
            pending.append(pool.submit(thunk))
            if len(pending) == depth:
                break
        while pending:
            future = pending.popleft() if ordered else _first_done(pending)
            result = future.result()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.submit(following))
            del future
            yield result
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)


def _first_done(pending: deque[Future]) -> Future:
    """Remove and return a completed future (waiting for one)."""
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    first = next(f for f in pending if f in done)  # the oldest of those done
    pending.remove(first)
    return first
