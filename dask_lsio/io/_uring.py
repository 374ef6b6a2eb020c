"""The io_uring engine: batches run in C (``_uring.c``) on one ring per calling thread.

A ring is created with SINGLE_ISSUER|DEFER_TASKRUN where the kernel has them, so it must stay
with the thread that first submits on it: each thread gets its own rings (a second one only
when a thread interleaves two batches, e.g. two ``read_iter`` generators). Waiting happens
inside C with the GIL released (cffi releases it around every call), a tick at a time: a
batch that sees no completion for ``lsio.io-stall-timeout`` is cancelled in C and raises
``TimeoutError``. A ring that C marks broken (a ring or bookkeeping error) is closed and
replaced, never reused.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
from dask.utils import parse_timedelta

from .. import config
from ..errors import EngineUnavailableError
from . import _batch, _cbatch
from .engine import Engine
from . import hooks
from .hooks import ReadHook

try:  # built at install time; absent when liburing's headers were missing
    from ._uring_ext import ffi, lib
except ImportError:  # pragma: no cover - depends on the build
    ffi = lib = None

WANT_SINGLE_ISSUER = 1
_STEP = 4096  # finished indices handed to Python per step
_MIN_PART = 1024  # requests per submitter thread below which a batch is not split
_TICK_MS = 1000  # longest single wait in C: stalls are checked at least this often
# What batches on broken rings left in the kernel's hands (LSIO_INFO_LOST): their buffers may
# still be written into by ops that never came back, so they are never freed.
_LOST: list = []
logger = logging.getLogger("dask_lsio")


def _split(n: int, threads: int) -> list[tuple[int, int]]:
    """Contiguous parts of a batch of ``n`` requests, one per submitter thread."""
    return hooks.spans(n, min(threads, n // _MIN_PART))


class _Ring:
    """One io_uring instance and its fixed-file table, used by one thread at a time."""

    def __init__(self, depth: int, iowq_workers: int, stall_ms: int) -> None:
        err = ffi.new("int *")
        ptr = lib.lsio_ring_open(depth, WANT_SINGLE_ISSUER, iowq_workers, err)
        if ptr == ffi.NULL:
            raise OSError(err[0], f"cannot create an io_uring of depth {depth}")
        self.ptr = ptr
        self.busy = False
        self._ring_close = lib.lsio_ring_close  # still reachable at interpreter shutdown
        lib.lsio_ring_set_timeouts(ptr, stall_ms, _TICK_MS)
        if e := self.info(lib.LSIO_INFO_IOWQ_ERR):  # old kernels: only cold opens are slower
            logger.debug("io_uring: io-wq's worker limit stays the kernel's (%s)", os.strerror(e))

    def info(self, what: int) -> int:
        """One of C's ``LSIO_INFO_*`` figures about this ring."""
        return int(lib.lsio_ring_info(self.ptr, what))

    def close(self) -> None:
        if self.ptr is not None:
            self._ring_close(self.ptr)
            self.ptr = None


class _ThreadRings:
    """The rings of one thread; closed when the thread ends (its thread-local goes away)."""

    def __init__(self) -> None:
        self.rings: list[_Ring] = []

    def close(self) -> None:
        for ring in self.rings:
            if not ring.busy:
                ring.close()
        self.rings = [r for r in self.rings if r.busy]

    def __del__(self) -> None:
        self.close()


class IoUringEngine(Engine):
    """Reads and writes through io_uring (liburing), many files and ranges per syscall.

    Parameters
    ----------
    queue_depth : int, optional
        Ring entries, and files in flight per batch (default ``lsio.queue-depth``).
    iowq_max_workers : int, optional
        io-wq's bounded worker limit per thread (default ``lsio.iowq-max-workers``).
    submit_threads : int, optional
        Large batches are split over this many threads, each with its own ring, so that the
        kernel work of submitting and completing uses every core (default
        ``lsio.submit-threads``, or the number of CPUs up to 4).
    direct_io : bool, optional
        Read with O_DIRECT (default ``lsio.direct-io``).
    decode_threads : int, optional
        Threads that decode one task's chunks (default ``lsio.decode-threads``).
    io_stall_timeout : float or str, optional
        Seconds (or a string such as ``"10 minutes"``) a batch may go without a completion
        before it is cancelled with ``TimeoutError`` (default ``lsio.io-stall-timeout``).
    """

    kind = "io_uring"

    def __init__(
        self,
        queue_depth: int | None = None,
        iowq_max_workers: int | None = None,
        submit_threads: int | None = None,
        direct_io: bool | None = None,
        decode_threads: int | None = None,
        io_stall_timeout: float | str | None = None,
    ) -> None:
        if lib is None:
            raise EngineUnavailableError(
                "dask-lsio was built without liburing: install liburing-dev and reinstall"
            )
        super().__init__(direct_io=direct_io, decode_threads=decode_threads)
        self.queue_depth = int(config.get("queue-depth", queue_depth))
        self.iowq_max_workers = int(config.get("iowq-max-workers", iowq_max_workers))
        threads = config.get("submit-threads", submit_threads)
        self.submit_threads = max(1, int(threads or min(os.cpu_count() or 1, 4)))
        stall = parse_timedelta(config.get("io-stall-timeout", io_stall_timeout), "s")
        self.io_stall_timeout = float(stall)
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._all: weakref.WeakSet[_ThreadRings] = weakref.WeakSet()
        self._lock = threading.Lock()
        # Fail now, not in the first task, when rings cannot be created here.
        self._release(self._acquire())

    def _acquire(self) -> _Ring:
        rings = getattr(self._local, "rings", None)
        if rings is None:
            rings = self._local.rings = _ThreadRings()
            with self._lock:
                self._all.add(rings)
        for ring in rings.rings:
            if not ring.busy:
                break
        else:
            stall_ms = max(1, round(self.io_stall_timeout * 1000))
            ring = _Ring(self.queue_depth, self.iowq_max_workers, stall_ms)
            rings.rings.append(ring)
        ring.busy = True
        return ring

    def _release(self, ring: _Ring, batch_objects: object = None) -> None:
        """Give back a ring taken by :meth:`_acquire` in this thread. A broken ring is closed
        and forgotten; ``batch_objects`` (the batch's requests and buffers) are then kept
        forever if the kernel may still write into them."""
        ring.busy = False
        if ring.ptr is not None and ring.info(lib.LSIO_INFO_BROKEN):
            if ring.info(lib.LSIO_INFO_LOST):
                _LOST.append(batch_objects)
            self._local.rings.rings.remove(ring)
            ring.close()
        elif self.closed:
            ring.close()

    @property
    def ring_flags(self) -> int:
        """The io_uring setup flags the kernel granted (SINGLE_ISSUER is 1 << 12)."""
        ring = self._acquire()
        try:
            return int(lib.lsio_ring_flags(ring.ptr))
        finally:
            self._release(ring)

    def _run(self, batch: _batch.Batch) -> Iterator[np.ndarray]:
        n = len(batch)
        if n == 0:
            return
        reqs = ffi.new("lsio_req[]", n)
        keep = _cbatch.fill(reqs, batch)
        grown = np.zeros(n, dtype=np.uint64)
        parts = _split(n, self.submit_threads)
        if len(parts) == 1:  # small batches stay on the calling thread: no hand-off
            yield from self._run_part(reqs, batch, grown, 0, n)
        else:
            yield from self._run_parallel(reqs, batch, grown, parts)
        del keep

    def _run_part(self, reqs, batch, grown, lo, hi, stop=None) -> Iterator[np.ndarray]:
        """Run requests ``[lo, hi)`` on this thread's ring; yield finished indices."""
        ring = self._acquire()
        err = lib.lsio_batch_start(ring.ptr, reqs + lo, hi - lo, int(batch.direct),
                                   int(self.fsync))
        if err:
            self._release(ring)
            raise _start_error(err)
        finished = False
        try:
            out = np.empty(min(hi - lo, _STEP), dtype=np.int64)
            out_ptr = ffi.from_buffer("int64_t[]", out)
            while stop is None or not stop.is_set():
                k = lib.lsio_batch_step(ring.ptr, out_ptr, len(out))
                if k <= 0:  # over; or ended by an error, C having reaped what was in flight
                    finished, err = True, -k
                    break
                done = out[:k] + lo
                _cbatch.collect(reqs, done, batch, grown)
                yield done
        finally:
            if not finished:  # the kernel may still write into our buffers: cancel, drain
                err = -lib.lsio_batch_cancel(ring.ptr)
            if err or not finished:
                _cbatch.collect(reqs, np.arange(lo, hi, dtype=np.int64), batch, grown)  # frees grown
            error = self._batch_error(err, ring, batch, lo, hi) if err else None
            self._release(ring, (reqs, batch))  # (closes a broken ring: info read above)
            if error is not None:
                raise error

    def _run_parallel(self, reqs, batch, grown, parts) -> Iterator[np.ndarray]:
        """Run the parts on the submitter threads, each on its own ring and core; the
        calling thread only hands out what they finish."""
        finished: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()

        def submitter(lo: int, hi: int) -> None:
            try:
                for done in self._run_part(reqs, batch, grown, lo, hi, stop):
                    finished.put(done)
            except BaseException as e:  # re-raised in the calling thread
                finished.put(e)
            else:
                finished.put(None)

        futures = [self._submitters().submit(submitter, lo, hi) for lo, hi in parts]
        try:
            running = len(futures)
            while running:
                item = finished.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            for f in futures:  # no part may outlive the batch's buffers
                f.result()

    def read_hooked(
        self,
        paths: list[str],
        offsets: np.ndarray,
        lengths: np.ndarray,
        hook: ReadHook,
        spans: list[tuple[int, int]] | None = None,
    ) -> dict[int, OSError]:
        """:meth:`Engine.read_hooked`, run in C: the ring lends every read a buffer of
        ``hook.bufsize`` bytes (more when a read to EOF finds a larger file) and takes it back
        once the hook returned, so the bytes are consumed while still in the CPU cache and
        memory stays at queue-depth buffers whatever the batch's size. Each span runs on a
        submitter thread with its own ring (and core)."""
        self._check_open()
        n = len(paths)
        batch = _batch.Batch(
            _batch.READ, paths, offsets=offsets, lengths=lengths, caps=np.zeros(n, np.int64),
            addrs=np.zeros(n, np.uint64), direct=self.direct_io, grow=True,
        )
        if n == 0:
            return {}
        reqs = ffi.new("lsio_req[]", n)
        keep = _cbatch.fill(reqs, batch)
        c_hook = ffi.cast("lsio_hook", hook.function)
        spans = spans or [(0, n)]
        # what the largest read needs (O_DIRECT capacities include the aligned start and end)
        bufsize = int(_batch.read_capacities(offsets, lengths, hook.bufsize, batch.direct).max())

        def run(lo: int, hi: int) -> None:
            ring = self._acquire()
            try:
                ctx = ffi.cast("void *", hook.context(lo))
                e = lib.lsio_batch_start_hooked(
                    ring.ptr, reqs + lo, hi - lo, int(batch.direct), bufsize, c_hook, ctx
                )
                if e:
                    raise _start_error(e)
                k = lib.lsio_batch_run(ring.ptr)
                if k < 0:  # C cancelled what was in flight and ended the batch
                    part = np.arange(lo, hi, dtype=np.int64)
                    _cbatch.collect(reqs, part, batch, np.zeros(n, dtype=np.uint64))
                    raise self._batch_error(-k, ring, batch, lo, hi)
            finally:
                self._release(ring, (reqs, batch))

        futures = [self._submitters().submit(run, lo, hi) for lo, hi in spans[1:]]
        try:
            run(*spans[0])
        finally:
            for f in futures:  # no part may outlive the batch's requests
                f.result()
        _cbatch.collect(reqs, np.arange(n, dtype=np.int64), batch, np.zeros(n, dtype=np.uint64))
        del keep
        self._count(batch)
        return {i: batch.error(i) for i in np.flatnonzero(batch.err).tolist()}

    def _batch_error(self, err: int, ring: _Ring, batch, lo: int, hi: int) -> OSError:
        """The exception of part ``[lo, hi)`` of ``batch`` (outcome collected) that C ended
        early with errno ``err``."""
        if err == errno.ETIMEDOUT:
            stuck = lo + np.flatnonzero(batch.err[lo:hi] == errno.ETIMEDOUT)
            names = ", ".join(repr(batch.paths[i]) for i in stuck[:3].tolist())
            more = ", ..." if len(stuck) > 3 else ""
            return TimeoutError(
                errno.ETIMEDOUT,
                f"io_uring: no IO completed for {self.io_stall_timeout:g} s "
                f"(lsio.io-stall-timeout): the batch was cancelled with "
                f"{ring.info(lib.LSIO_INFO_OUTSTANDING)} request(s) outstanding: {names}{more}",
            )
        what = ("the engine's bookkeeping went wrong (a bug)" if err == errno.ENOTRECOVERABLE
                else "io_uring_enter failed")
        return OSError(err, f"{os.strerror(err)}: {what}; the batch was cancelled")

    def _submitters(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.submit_threads, "lsio-uring")
            return self._pool

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        with self._lock:
            for rings in list(self._all):
                rings.close()


def _start_error(err: int) -> OSError:
    return OSError(err, f"cannot start an io_uring batch: {os.strerror(err)}")
