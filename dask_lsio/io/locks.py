"""Advisory write locks on objects that a writer reads, merges into and writes back.

A write that covers a shard (or chunk) only in part must read it, merge its values in and
write it back whole. Two such writers of one object (independent jobs filling disjoint regions
that share a shard) would each write back what they read plus their own part, and the later
rename would erase the other's part. Holding this lock from the read to the rename makes the
read-merge-write of one object a compare-and-swap: the second writer reads what the first
wrote.

The lock is ``flock`` on a lock file beside the object (``.<name>.lsio-lock``): it excludes
threads of one process (each acquisition opens its own file description) and processes alike,
and the kernel drops it when its holder dies. The holder removes the file before releasing the
lock; a waiter that then gets the lock on the removed file notices (the name no longer leads to
its file) and tries again, so at most one writer ever holds the lock of a name. An object store
has no locks: its backend will do the same with conditional writes (If-Match on the version
read), retried on conflict.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from typing import Iterable, Iterator

from dask.utils import parse_timedelta

from .. import config

SUFFIX = ".lsio-lock"
_FIRST_WAIT = 0.001  # seconds between tries, doubling up to _LAST_WAIT
_LAST_WAIT = 0.05


def lock_path(path: str) -> str:
    """The lock file of the object at ``path``: a hidden name beside it."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{SUFFIX}")


@contextlib.contextmanager
def locked(paths: Iterable[str], timeout: float | None = None) -> Iterator[None]:
    """Hold the write locks of the objects at ``paths`` (which need not exist yet).

    Locks are taken in sorted order, so writers of overlapping sets never deadlock, and
    released in reverse. Waits at most ``timeout`` seconds for each (default
    ``lsio.lock-timeout``), then raises :class:`TimeoutError` naming the object.
    """
    limit = _timeout(timeout)
    with contextlib.ExitStack() as stack:
        for path in sorted(set(os.fspath(p) for p in paths)):
            stack.enter_context(_lock_one(path, limit))
        yield


@contextlib.contextmanager
def _lock_one(path: str, timeout: float) -> Iterator[None]:
    name = lock_path(path)
    fd = _acquire(path, name, time.monotonic() + timeout)
    try:
        yield
    finally:
        # remove the name while still holding the lock: a waiter on this file will see that
        # the name is gone and start over on a new file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        os.close(fd)


def _acquire(path: str, name: str, deadline: float) -> int:
    """Open ``name`` and hold an exclusive flock on it; return the descriptor."""
    wait = _FIRST_WAIT
    while True:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the object's directory does not exist yet
            os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"another writer held the write lock of this object longer than "
                    f"lsio.lock-timeout ({name})", path) from None
            time.sleep(wait)
            wait = min(2 * wait, _LAST_WAIT)
            continue
        except BaseException:
            os.close(fd)
            raise
        if _still_named(fd, name):
            return fd
        os.close(fd)  # the previous holder removed this file: its name is a new lock now


def _still_named(fd: int, name: str) -> bool:
    """Whether ``name`` still leads to the open file ``fd``."""
    try:
        st = os.stat(name)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def remove_stale(name: str) -> bool:
    """Remove the lock file ``name`` if no writer holds it (its holder died before removing
    it); True if removed. Taken and removed as a holder would, so waiters start over."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held: a writer is at work
        os.close(fd)
        return False
    try:
        if not _still_named(fd, name):
            return False
        os.unlink(name)
        return True
    finally:
        os.close(fd)


def _timeout(timeout: float | None) -> float:
    if timeout is not None:
        return float(timeout)
    return float(parse_timedelta(config.get("lock-timeout")))
