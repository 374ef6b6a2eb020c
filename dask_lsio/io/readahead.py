"""Read-ahead hints: files a task reads next, brought into the page cache by a background
thread while the task is still working on the files it read.

A rechunk's tasks alternate, in each thread, between reading a block's source chunks
(disk-bound when the cache is cold) and regrouping and writing them (CPU-bound); without a
hint the disk idles while the CPU works, and the other way round. ``posix_fadvise`` with
``POSIX_FADV_WILLNEED`` starts the kernel's readahead of a file and returns; one daemon
thread per process issues them, in the order asked, so that no task waits for them. A hint
reads nothing into the process's memory: the pages belong to the page cache, which the
kernel reclaims as it needs.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence

_lock = threading.Lock()
_queue: queue.SimpleQueue[list[str]] | None = None


def hint(paths: Sequence[str]) -> bool:
    """Ask the kernel to read the files ``paths`` into the page cache soon, in the
    background. Files that cannot be opened (missing chunks) are skipped; a hint never
    fails. Returns False where the platform has no ``posix_fadvise`` (nothing is done)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    if paths:
        _worker().put(list(paths))
    return True


def _worker() -> queue.SimpleQueue[list[str]]:
    global _queue
    with _lock:
        if _queue is None:
            _queue = queue.SimpleQueue()
            threading.Thread(target=_run, args=(_queue,), name="dask-lsio-readahead",
                             daemon=True).start()
        return _queue


def _run(hints: queue.SimpleQueue[list[str]]) -> None:
    while True:  # an idle daemon thread: it waits for the next hint for the process's life
        for path in hints.get():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:  # a file system without readahead: only a hint lost
                pass
            finally:
                os.close(fd)


def _forget_worker() -> None:
    """A forked child has no worker thread (and its lock may have been held by a thread
    that is not there): the next hint starts one."""
    global _queue, _lock
    _queue, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker)
