"""Batches handed to C (the io extension, ``_uring_ext``): a request array filled from a
batch's columns in one call, and the outcome copied back into the batch's columns.

Shared by the io_uring engine and the thread engine's C reads (``_posix.c``). ``lib`` is
None where the extension was not built (the thread engine then reads in Python).
"""

from __future__ import annotations

import numpy as np

from . import _batch

try:  # built at install time; absent when neither liburing nor its bundled copy built
    from ._uring_ext import ffi, lib
except ImportError:  # pragma: no cover - depends on the build
    ffi = lib = None


def fill(reqs, batch: _batch.Batch) -> list:
    """Fill the C request array from the batch's columns; return what must stay alive."""
    n = len(batch)
    path_at = batch.path_at
    c_blob = ffi.from_buffer(batch.blob)
    keep = [c_blob]
    if batch.kind == _batch.READ:
        lib.lsio_fill_reads(
            reqs, n, c_blob, i64(path_at), i64(batch.offsets), i64(batch.lengths),
            ffi.from_buffer("uint64_t[]", batch.addrs), i64(batch.caps), int(batch.grow),
        )
    elif batch.kind == _batch.WRITE:
        tmp_blob, tmp_at = _batch.encode_paths(batch.tmp_paths)
        c_tmp = ffi.from_buffer(tmp_blob)
        keep += [tmp_blob, tmp_at, c_tmp]
        lib.lsio_fill_writes(
            reqs, n, c_blob, i64(path_at), c_tmp, i64(tmp_at),
            ffi.from_buffer("uint64_t[]", batch.addrs), i64(batch.lengths),
        )
    else:
        lib.lsio_fill_deletes(reqs, n, c_blob, i64(path_at))
    return keep


def i64(arr: np.ndarray):
    """An int64 C view of ``arr`` (a contiguous copy where it is not one already)."""
    return ffi.from_buffer("int64_t[]", np.ascontiguousarray(arr, dtype=np.int64))


def collect(reqs, done: np.ndarray, batch: _batch.Batch, grown: np.ndarray) -> None:
    """Copy the outcome of finished requests into the batch; adopt buffers C had to grow."""
    lib.lsio_collect(
        reqs, ffi.from_buffer("int64_t[]", done), len(done),
        ffi.from_buffer("int32_t[]", batch.err), ffi.from_buffer("int32_t[]", batch.stage),
        ffi.from_buffer("int64_t[]", batch.start), ffi.from_buffer("int64_t[]", batch.nbytes),
        ffi.from_buffer("uint64_t[]", grown),
    )
    for i in np.flatnonzero(grown[done]).tolist():
        idx = int(done[i])
        ptr = ffi.gc(ffi.cast("char *", int(grown[idx])), lib.lsio_free)
        batch.own[idx] = ffi.buffer(ptr, int(batch.start[idx] + batch.nbytes[idx]))
