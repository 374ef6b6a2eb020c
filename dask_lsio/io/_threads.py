"""The thread engine: the same batches and results as io_uring, over os.pread-style calls.

Used where io_uring cannot run. Requests are handed to the engine's own thread pool in groups
(one hand-off per group, not per request); the GIL is released inside each syscall.
"""

from __future__ import annotations

import mmap
import os
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from .. import config
from . import _batch
from ._buffers import ALIGN
from . import _cbatch, hooks
from .engine import Engine
from .hooks import ReadHook

ST_OPEN, ST_STAT, ST_IO, ST_FSYNC, ST_RENAME, ST_UNLINK = 1, 2, 3, 4, 5, 7
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class ThreadEngine(Engine):
    """Reads and writes with a pool of threads; the fallback where io_uring is unavailable.

    Parameters
    ----------
    threads : int, optional
        Worker threads (default ``lsio.threads``).
    direct_io : bool, optional
        Read with O_DIRECT (default ``lsio.direct-io``).
    decode_threads : int, optional
        Threads that decode one task's chunks (default ``lsio.decode-threads``).
    """

    kind = "threads"

    def __init__(self, threads: int | None = None, direct_io: bool | None = None,
                 decode_threads: int | None = None) -> None:
        super().__init__(direct_io=direct_io, decode_threads=decode_threads)
        self.threads = int(config.get("threads", threads))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="lsio-io")

    def _run(self, batch: _batch.Batch) -> Iterator[np.ndarray]:
        n = len(batch)
        if n == 0:
            return
        work = {_batch.READ: _read_one, _batch.WRITE: _write_one, _batch.DELETE: _delete_one}
        do = work[batch.kind]
        fsync = self.fsync
        slab_read = batch.kind == _batch.READ and batch.views is None
        whole = memoryview(batch.keep[0]) if slab_read else None
        group = max(1, min(64, n // (4 * self.threads)))
        done: queue.SimpleQueue = queue.SimpleQueue()
        cancelled = False

        def run_group(lo: int, hi: int) -> None:
            end, exc = lo, None
            try:
                while end < hi and not cancelled:
                    do(batch, end, _view(batch, end, whole), fsync)
                    end += 1
            except BaseException as e:  # not an IO failure: a bug, re-raised by the caller
                exc = e
            done.put((lo, end, exc))

        futures = [self._pool.submit(run_group, lo, min(lo + group, n)) for lo in range(0, n, group)]
        try:
            for _ in futures:
                lo, hi, exc = done.get()
                if exc is not None:
                    raise exc
                if hi > lo:
                    yield np.arange(lo, hi, dtype=np.int64)
        finally:
            cancelled = True
            for f in futures:
                f.cancel()
            for f in futures:  # groups still running write into our buffers: wait for them
                if not f.cancelled():
                    f.exception()

    def read_hooked(
        self,
        paths: list[str],
        offsets: np.ndarray,
        lengths: np.ndarray,
        hook: ReadHook,
        spans: list[tuple[int, int]] | None = None,
    ) -> dict[int, OSError]:
        """:meth:`Engine.read_hooked` on the engine's threads: each group of reads gets one
        buffer and one hook context, reads into the buffer and calls the hook before the next
        read reuses it; in C with the GIL released (``_posix.c``), or in Python where the C
        extension is not built."""
        self._check_open()
        n = len(paths)
        caps = _batch.read_capacities(offsets, lengths, hook.bufsize, self.direct_io)
        batch = _batch.Batch(
            _batch.READ, paths, offsets=offsets, lengths=lengths, caps=caps,
            addrs=np.zeros(n, np.uint64), direct=self.direct_io, grow=True,
        )
        if n == 0:
            return {}
        size = int(_batch.round_up(max(int(caps.max()), 1), ALIGN))
        # reads that are decoded as they arrive keep the cores busy with few threads: more
        # only compete for the caches (warm scans of small chunks: 2 threads 2.05 GB/s, 16
        # threads 1.84, on our 2 cores), while a few reads in flight each still hide latency
        workers = min(self.threads, 2 * (os.cpu_count() or 1))
        parts = hooks.groups(spans or [(0, n)], workers)
        if _cbatch.lib is not None:
            self._read_hooked_in_c(batch, hook, size, parts, workers)
        else:
            self._read_hooked_in_python(batch, hook, size, parts, workers)
        self._count(batch)
        return {i: batch.error(i) for i in np.flatnonzero(batch.err).tolist()}

    def _read_hooked_in_c(self, batch: _batch.Batch, hook: ReadHook, size: int,
                          parts: list[tuple[int, int]], workers: int) -> None:
        """Each group read and handed to the hook by one C call (GIL released): a small
        chunk costs more in Python bytecode and GIL hand-offs than in reading it."""
        ffi, lib = _cbatch.ffi, _cbatch.lib
        n = len(batch)
        reqs = ffi.new("lsio_req[]", n)
        keep = _cbatch.fill(reqs, batch)
        c_hook = ffi.cast("lsio_hook", hook.function)

        def run_group(lo: int, hi: int) -> None:
            ctx = ffi.cast("void *", hook.context(lo))
            # (an unavailable buffer fails the group's requests with ENOMEM, reported below)
            lib.lsio_posix_read_hooked(reqs + lo, hi - lo, int(batch.direct), size, c_hook, ctx)

        hooks.run_groups(self._pool, parts, run_group, workers)
        _cbatch.collect(reqs, np.arange(n, dtype=np.int64), batch, np.zeros(n, np.uint64))
        del keep

    def _read_hooked_in_python(self, batch: _batch.Batch, hook: ReadHook, size: int,
                               parts: list[tuple[int, int]], workers: int) -> None:
        """Each group read request by request here, the hook called through cffi."""

        def run_group(lo: int, hi: int) -> None:
            slab = self.pool.slab(size)
            view = memoryview(slab)
            base = hooks.address(slab)
            ctx = hook.context(lo)
            for i in range(lo, hi):
                _read_one(batch, i, view, self.fsync)
                if batch.err[i]:
                    continue
                start, nbytes = int(batch.start[i]), int(batch.nbytes[i])
                grown = batch.own.pop(i, None)  # a read to EOF larger than the buffer
                at = base if grown is None else hooks.address(grown)
                code = hook.call(ctx, i - lo, at + start, nbytes)
                if code:
                    batch.err[i] = code
                    batch.stage[i] = _batch.HOOK_STAGE

        hooks.run_groups(self._pool, parts, run_group, workers)

    def _close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _view(batch: _batch.Batch, i: int, whole: memoryview | None) -> memoryview | None:
    """The buffer request ``i`` reads into: the caller's, or its part of the batch's slab."""
    if batch.kind != _batch.READ:
        return None
    if batch.views is not None:
        return batch.views[i]
    at = int(batch.keep[1][i])
    return whole[at : at + int(batch.caps[i])]


def _read_one(batch: _batch.Batch, i: int, view: memoryview, fsync: bool) -> None:
    """Read request ``i`` into ``view``, as _uring_ops.c's state machine does."""
    stage = ST_OPEN
    try:
        direct = batch.direct
        fd = _open_read(batch.paths[i], direct)
        if fd < 0:
            direct, fd = False, -fd - 1
        try:
            stage = ST_STAT
            offset, length = int(batch.offsets[i]), int(batch.lengths[i])
            if length < 0 and offset < 0:
                size = os.fstat(fd).st_size
                offset = max(0, size + offset)
                length = size - offset
            stage = ST_IO
            _read_range(batch, i, fd, view, offset, length, direct)
        finally:
            os.close(fd)
    except OSError as e:
        batch.err[i] = e.errno or 5
        batch.stage[i] = stage
        batch.nbytes[i] = 0
        batch.own.pop(i, None)


def _open_read(path: str, direct: bool) -> int:
    """A descriptor for reading; ``-fd - 1`` when O_DIRECT was refused and dropped."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    if not direct:
        return os.open(path, flags)
    try:
        return os.open(path, flags | _O_DIRECT)
    except OSError as e:
        if e.errno != 22:  # EINVAL: the file system refuses O_DIRECT (tmpfs)
            raise
    return -os.open(path, flags) - 1


def _read_range(batch, i, fd, view, offset, length, direct) -> None:
    base = offset & ~(ALIGN - 1) if direct else offset
    cap = len(view)
    if length >= 0:
        end = offset + length
        want = min(((end + ALIGN - 1) // ALIGN * ALIGN if direct else end) - base, cap)
    else:
        want = cap & ~(ALIGN - 1) if direct else cap
    done = _pread_full(fd, view[:want], base, direct)
    if length < 0 and done == want and batch.grow:
        # to EOF and the buffer is full: the file is larger than the hint
        rest = os.fstat(fd).st_size - base
        if rest > done:
            big = mmap.mmap(-1, (rest + ALIGN - 1) // ALIGN * ALIGN)
            big[:done] = view[:done]
            done += _pread_full(fd, memoryview(big)[done:], base + done, direct)
            batch.own[i] = big
    start = offset - base
    got = max(0, done - start)
    batch.start[i] = start
    batch.nbytes[i] = got if length < 0 else min(got, length)


def _pread_full(fd: int, view: memoryview, offset: int, direct: bool) -> int:
    """Fill ``view`` from ``offset`` unless EOF comes first (short reads are resumed)."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
        if direct and done < len(view):
            break  # O_DIRECT comes back short only at EOF
    return done


def _write_one(batch: _batch.Batch, i: int, whole: object, fsync: bool) -> None:
    """Write object ``i`` to its temporary name, then rename it into place."""
    tmp = batch.tmp_paths[i]
    stage = ST_OPEN
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            stage = ST_IO
            view, done = batch.views[i], 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], done)
            if fsync:
                stage = ST_FSYNC
                os.fsync(fd)
        finally:
            os.close(fd)
        stage = ST_RENAME
        os.rename(tmp, batch.paths[i])
        batch.nbytes[i] = done
    except OSError as e:
        batch.err[i] = e.errno or 5
        batch.stage[i] = stage
        if stage > ST_OPEN:  # no partial object may remain
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _delete_one(batch: _batch.Batch, i: int, whole: object, fsync: bool) -> None:
    try:
        os.unlink(batch.paths[i])
    except FileNotFoundError:
        pass
    except OSError as e:
        batch.err[i] = e.errno or 5
        batch.stage[i] = ST_UNLINK
