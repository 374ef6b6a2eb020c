"""The engine interface: read, write and delete many files and byte ranges per call.

:class:`Engine` implements the public methods once; an engine supplies ``_run``, which runs
one :class:`~dask_lsio.io._batch.Batch` and yields the indices of requests as they finish.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from .. import config, metrics
from ..errors import BatchIOError
from . import _batch
from ._buffers import BufferPool
from .hooks import ReadHook
from .requests import ReadRequest

Errors = Literal["raise", "return"]


class Engine(ABC):
    """An IO engine; get one with :func:`dask_lsio.get_engine`.

    Every method takes a whole batch and is safe to call from many threads at once.
    ``stats`` counts the batches, requests and bytes this engine ran; ``totals``
    sums the figures of :mod:`dask_lsio.metrics` (bytes and objects per kind, seconds).
    Read results are memoryviews over recycled buffers: keep them as long as needed, the
    memory is reused only after the last view into it is gone.

    Parameters
    ----------
    direct_io : bool, optional
        Read with O_DIRECT (default: ``lsio.direct-io``).
    decode_threads : int, optional
        Threads that decode one task's chunks (default: ``lsio.decode-threads``).
    """

    kind: str = ""

    def __init__(self, direct_io: bool | None = None, decode_threads: int | None = None) -> None:
        self.direct_io = bool(config.get("direct-io", direct_io))
        self.decode_threads = config.decode_threads(decode_threads)
        self.size_hint = config.get_bytes("read-size-hint")
        self.batch_bytes = config.get_bytes("batch-bytes")
        self.fsync = bool(config.get("fsync"))
        self.pool = BufferPool(config.get_bytes("buffer-pool-bytes"))
        self.closed = False
        self._decode_pool: ThreadPoolExecutor | None = None
        self._stats_lock = threading.Lock()
        self.stats = {"batches": 0, "requests": 0, "bytes": 0}
        self.totals = metrics.Totals()

    def _count(self, batch: _batch.Batch) -> None:
        """Add a finished batch to :attr:`stats` (requests run and bytes moved) and to the
        running task's metrics (this runs on the thread that asked for the batch)."""
        nbytes = int(batch.nbytes.sum())
        with self._stats_lock:
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["bytes"] += nbytes
        label = ("lsio-read", "lsio-write", "lsio-delete")[batch.kind]
        metrics.record(self.totals, label, len(batch), "objects")
        if batch.kind != _batch.DELETE:
            metrics.record(self.totals, label, nbytes, "bytes")

    @property
    def decode_pool(self) -> ThreadPoolExecutor:
        """Threads that decode and encode chunks of the tasks using this engine (numcodecs
        and numpy release the GIL): room for the decoders of a few tasks at once."""
        with self._stats_lock:
            if self._decode_pool is None:
                self._decode_pool = ThreadPoolExecutor(4 * self.decode_threads,
                                                       thread_name_prefix="lsio-decode")
            return self._decode_pool

    # -- what an engine implements -------------------------------------------------------
    @abstractmethod
    def _run(self, batch: _batch.Batch) -> Iterator[np.ndarray]:
        """Run ``batch``, filling its outcome arrays; yield indices of finished requests."""

    def _close(self) -> None:
        """Release the engine's own resources (rings, threads)."""

    # -- reads ---------------------------------------------------------------------------
    def read(
        self,
        requests: Sequence[ReadRequest],
        errors: Errors = "raise",
        size_hint: int | None = None,
    ) -> list[Any]:
        """Read every request; return the buffers in request order.

        Parameters
        ----------
        requests : sequence of ReadRequest
        errors : {"raise", "return"}
            "raise": after all requests finished, raise a :class:`~dask_lsio.BatchIOError`
            holding one ``OSError`` per failed request. "return": a failed request's slot
            holds its exception.
        size_hint : int, optional
            Expected size of reads to EOF (default ``lsio.read-size-hint``); larger files are
            read in full all the same.

        Returns
        -------
        list of memoryview (or OSError with errors="return")
        """
        out: list[Any] = [None] * len(requests)
        for i, buf in self.read_iter(requests, errors="return", size_hint=size_hint):
            out[i] = buf
        return _check(out, errors, "reads")

    def read_iter(
        self,
        requests: Sequence[ReadRequest],
        errors: Errors = "raise",
        size_hint: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, buffer)`` in completion order while the batch is in flight.

        With errors="raise" the failures are raised together once every request finished;
        with errors="return" they are yielded as ``(index, exception)``. Closing the
        generator early waits for the requests in flight and starts no more.
        """
        _check_errors_arg(errors)
        paths, offsets, lengths = _batch.request_columns(requests)
        yield from self._read_columns(paths, offsets, lengths, errors, size_hint)

    def read_ranges(
        self,
        paths: Sequence[str],
        offsets: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
        errors: Errors = "raise",
        size_hint: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """:meth:`read_iter` over columns: ``lengths`` of -1 read to EOF (the fast path for
        callers that already hold arrays, such as the zarr layer)."""
        _check_errors_arg(errors)
        n = len(paths)
        offsets = np.zeros(n, np.int64) if offsets is None else np.asarray(offsets, np.int64)
        lengths = np.full(n, -1, np.int64) if lengths is None else np.asarray(lengths, np.int64)
        if np.any((lengths >= 0) & (offsets < 0)) or np.any(lengths < -1):
            raise ValueError("a negative offset needs length -1 (a suffix); lengths are >= -1")
        yield from self._read_columns(list(paths), offsets, lengths, errors, size_hint)

    @abstractmethod
    def read_hooked(
        self,
        paths: list[str],
        offsets: np.ndarray,
        lengths: np.ndarray,
        hook: ReadHook,
        spans: list[tuple[int, int]] | None = None,
    ) -> dict[int, OSError]:
        """Read ranges and hand each one's bytes to ``hook`` on the thread that read them.

        The buffers are the engine's and reused once the hook returned: a hook consumes the
        bytes (e.g. decodes them) and keeps nothing.

        Parameters
        ----------
        paths, offsets, lengths
            The reads, as for :meth:`read_ranges` (lengths of -1 read to EOF).
        hook : ReadHook
        spans : list of (int, int), optional
            Contiguous ``[lo, hi)`` parts covering the batch, each with its own hook context
            (``hook.context(lo)``), run at once on several threads; default one part.

        Returns
        -------
        dict of int to OSError
            The reads that failed, by index: IO errors, and reads the hook rejected
            (operation "decode"). Every other read was handed to the hook.
        """

    def _read_columns(self, paths, offsets, lengths, errors, size_hint):
        """Run reads given as columns batch by batch, yielding ``(index, result)``."""
        self._check_open()
        hint = max(int(size_hint or self.size_hint), 1)
        failed: list[OSError] = []
        for batch in _batch.plan_reads(
            paths, offsets, lengths, self.pool, hint, self.direct_io, self.batch_bytes
        ):
            for done in self._run(batch):
                for i, res in zip(done.tolist(), _batch.slab_results(batch, done)):
                    if isinstance(res, OSError) and errors == "raise":
                        failed.append(res)
                    else:
                        yield batch.first + i, res
            self._count(batch)
        if failed:
            raise BatchIOError(f"{len(failed)} of {len(paths)} reads failed", failed)

    def read_into(
        self,
        requests: Sequence[ReadRequest],
        buffers: Sequence[Any],
        errors: Errors = "raise",
    ) -> list[Any]:
        """Read each request into the caller's writable buffer of the same index.

        A read stops at the end of its range, the end of the file or the end of its buffer,
        whichever comes first. Returns the bytes read per request (or exceptions, with
        errors="return").
        """
        _check_errors_arg(errors)
        self._check_open()
        batch = _batch.plan_into(requests, buffers)
        return _check(self._run_all(batch, nbytes=True), errors, "reads")

    # -- writes --------------------------------------------------------------------------
    def write(self, items: Iterable[tuple[Any, Any]], errors: Errors = "raise") -> list[Any]:
        """Write objects atomically: each ``(path, data)`` goes to a temporary name in the same
        directory and is renamed into place, so a reader sees the old object or the new one,
        never a torn one. Parent directories are created. Returns bytes written per item."""
        _check_errors_arg(errors)
        self._check_open()
        items = list(items)
        batch, failed = _batch.plan_writes(items)  # failed: items whose parent dir failed
        out = [failed.get(j) for j in range(len(items))]
        for j, res in zip(batch.where, self._run_all(batch, nbytes=True)):
            out[j] = res
        return _check(out, errors, "writes")

    def delete(self, paths: Iterable[Any], errors: Errors = "raise") -> list[Any]:
        """Remove objects; a missing object is not an error."""
        _check_errors_arg(errors)
        self._check_open()
        batch = _batch.Batch(_batch.DELETE, [os.fspath(p) for p in paths])
        return _check(self._run_all(batch, nbytes=False), errors, "deletes")

    def _run_all(self, batch: _batch.Batch, nbytes: bool) -> list[Any]:
        """Run a whole batch; per request its exception, or its byte count (or None)."""
        for _ in self._run(batch):
            pass
        self._count(batch)
        return [
            batch.error(i) if batch.err[i] else (int(batch.nbytes[i]) if nbytes else None)
            for i in range(len(batch))
        ]

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Release rings, threads and idle buffers. Buffers already returned stay valid."""
        if not self.closed:
            self.closed = True
            self._close()
            if self._decode_pool is not None:
                self._decode_pool.shutdown(wait=True)
            self.pool.close()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"this {self.kind} engine is closed")

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} kind={self.kind!r} direct_io={self.direct_io} {state}>"


def _check_errors_arg(errors: str) -> None:
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")


def _check(out: list[Any], errors: str, what: str) -> list[Any]:
    _check_errors_arg(errors)
    if errors == "raise":
        failed = [r for r in out if isinstance(r, OSError)]
        if failed:
            raise BatchIOError(f"{len(failed)} of {len(out)} {what} failed", failed)
    return out
