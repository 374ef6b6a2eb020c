"""A batch of requests as flat numpy columns, and its outcome.

Both engines consume the same :class:`Batch`: the io_uring engine hands the columns to C in
one call, the thread engine walks them. Outcomes come back in flat arrays too, so building a
batch and reading its results costs a few vectorised numpy operations, not Python objects per
request (except the result buffers themselves).
"""

from __future__ import annotations

import errno
import os
import secrets
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import io_error
from ._buffers import ALIGN, BufferPool
from .requests import TEMP_SUFFIX, ReadRequest

READ, WRITE, DELETE = 0, 1, 2
HOOK_STAGE = 10  # a read its hook rejected (LSIO_ST_HOOK of _uring.h)
# Stages, numbered as in _uring.h; a failure reports the stage it happened in.
STAGES = {
    1: "open", 2: "stat", 3: "{io}", 4: "fsync", 5: "rename", 6: "unlink", 7: "unlink",
    10: "decode",
}
_FS_ENCODING = sys.getfilesystemencoding()


def encode_paths(paths: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """All paths in one NUL-separated blob, and where each starts in it."""
    if not paths:
        return b"", np.zeros(0, dtype=np.int64)
    blob = "\0".join(paths).encode(_FS_ENCODING, "surrogateescape") + b"\0"
    ends = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 0)
    if len(ends) != len(paths):
        raise ValueError("paths must not contain NUL characters")
    starts = np.empty(len(paths), dtype=np.int64)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    return blob, starts


def round_up(x: np.ndarray | int, a: int) -> Any:
    return (x + a - 1) // a * a


@dataclass
class Batch:
    """One engine batch: the request columns and, once run, their outcome."""

    kind: int
    paths: list[str]
    offsets: np.ndarray | None = None  # reads
    lengths: np.ndarray | None = None  # reads: -1 = to EOF; writes: bytes
    caps: np.ndarray | None = None  # reads: buffer capacity
    addrs: np.ndarray | None = None  # buffer addresses (uint64)
    views: list[memoryview] | None = None  # the same buffers, for the thread engine
    tmp_paths: list[str] | None = None  # writes
    grow: bool = False
    direct: bool = False
    first: int = 0  # index of the first request in the caller's list
    where: list[int] | None = None  # writes: item index of each request
    keep: list[Any] = field(default_factory=list)  # objects the buffers live in
    err: np.ndarray = field(init=False)
    stage: np.ndarray = field(init=False)
    start: np.ndarray = field(init=False)
    nbytes: np.ndarray = field(init=False)
    own: dict[int, Any] = field(default_factory=dict)  # buffers an engine allocated itself
    blob: bytes = field(init=False)  # the paths, NUL-separated, for C
    path_at: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.paths)
        self.blob, self.path_at = encode_paths(self.paths)  # also rejects NUL in paths
        self.err = np.zeros(n, dtype=np.int32)
        self.stage = np.zeros(n, dtype=np.int32)
        self.start = np.zeros(n, dtype=np.int64)
        self.nbytes = np.zeros(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def error(self, i: int) -> OSError:
        """The exception of failed request ``i``."""
        op = STAGES.get(int(self.stage[i]), "io")
        op = op.format(io=("read", "write", "unlink")[self.kind])
        offset = length = None
        if self.kind == READ:
            offset = int(self.offsets[i])
            length = None if self.lengths[i] < 0 else int(self.lengths[i])
        return io_error(int(self.err[i]), self.paths[i], op, offset, length)


def request_columns(requests: Sequence[ReadRequest]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Paths, offsets and lengths (-1 for None) of read requests."""
    paths = [os.fspath(r.path) for r in requests]
    offsets = np.fromiter((r.offset for r in requests), dtype=np.int64, count=len(requests))
    lengths = np.fromiter(
        (-1 if r.length is None else r.length for r in requests),
        dtype=np.int64,
        count=len(requests),
    )
    return paths, offsets, lengths


def read_capacities(
    offsets: np.ndarray, lengths: np.ndarray, size_hint: int, direct: bool
) -> np.ndarray:
    """Buffer bytes each read needs: its length, its suffix, or the hint when reading to EOF.

    A read to EOF gets one byte more than the hint, so that a file of exactly the hinted size
    ends in a short read instead of a full buffer that must grow. O_DIRECT reads start at the
    aligned offset below and end on an aligned boundary; a suffix's alignment is unknown until
    the file size is, so it gets a page more.
    """
    suffix = (lengths < 0) & (offsets < 0)
    need = np.where(lengths >= 0, lengths, np.where(suffix, -offsets, size_hint + 1))
    if not direct:
        return need
    lead = np.where(suffix, ALIGN, offsets % ALIGN)
    return round_up(lead + need, ALIGN)


def plan_reads(
    paths: list[str],
    offsets: np.ndarray,
    lengths: np.ndarray,
    pool: BufferPool,
    size_hint: int,
    direct: bool,
    batch_bytes: int,
) -> Iterator[Batch]:
    """Split reads into batches of at most ``batch_bytes`` of buffers, each with a slab.

    Lazy: a batch's slab is taken from the pool only when the batch is about to run, so a
    consumer that drops buffers as it goes keeps about one batch of memory in use.
    """
    caps = read_capacities(offsets, lengths, size_hint, direct)
    padded = round_up(caps, ALIGN if direct else 64)
    ends = np.cumsum(padded)
    lo = 0
    while lo < len(paths):
        base = ends[lo] - padded[lo]
        hi = max(lo + 1, int(np.searchsorted(ends, base + batch_bytes, side="right")))
        slab = pool.slab(int(ends[hi - 1] - base))
        at = ends[lo:hi] - padded[lo:hi] - base
        addrs = np.uint64(slab.__array_interface__["data"][0]) + at.astype(np.uint64)
        batch = Batch(
            READ, paths[lo:hi], offsets=offsets[lo:hi], lengths=lengths[lo:hi],
            caps=caps[lo:hi], addrs=addrs, direct=direct, grow=True, first=lo, keep=[slab, at],
        )
        yield batch
        lo = hi


def slab_results(batch: Batch, indices: np.ndarray) -> list[Any]:
    """Result buffers (or exceptions) of the finished requests ``indices`` of a slab batch."""
    slab, at = batch.keep[0], batch.keep[1]
    whole = memoryview(slab)
    starts = batch.start[indices]
    lo = (at[indices] + starts).tolist()
    hi = (at[indices] + starts + batch.nbytes[indices]).tolist()
    if not batch.own and not batch.err[indices].any():  # the common case, vectorised
        return [whole[a:b] for a, b in zip(lo, hi)]
    out = []
    for j, i in enumerate(indices.tolist()):
        if batch.err[i]:
            out.append(batch.error(i))
        elif i in batch.own:  # an engine had to grow this buffer beyond the slab
            start = int(batch.start[i])
            out.append(memoryview(batch.own[i])[start : start + int(batch.nbytes[i])])
        else:
            out.append(whole[lo[j] : hi[j]])
    return out


def plan_writes(items: Sequence[tuple[Any, Any]]) -> tuple[Batch, dict[int, OSError]]:
    """A write batch: each object goes to a unique temporary name beside it, then renamed.

    Parent directories are created first; items whose parent cannot be created are left
    out of the batch and returned as ``{item index: error}``. ``batch.where`` maps the
    batch's requests back to item indices.
    """
    paths = [os.fspath(p) for p, _ in items]
    failed = _make_parents(paths)
    where = [i for i in range(len(items)) if i not in failed]
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp_paths = [
        os.path.join(d, f".{b}.{token}-{i}{TEMP_SUFFIX}")
        for i, (d, b) in enumerate(os.path.split(paths[j]) for j in where)
    ]
    views = [memoryview(items[j][1]).cast("B") for j in where]
    arrays = [np.frombuffer(v, dtype=np.uint8) for v in views]
    addrs = np.fromiter(
        (a.__array_interface__["data"][0] for a in arrays), dtype=np.uint64, count=len(where)
    )
    lengths = np.fromiter((len(v) for v in views), dtype=np.int64, count=len(where))
    batch = Batch(
        WRITE, [paths[j] for j in where], lengths=lengths, addrs=addrs, views=views,
        tmp_paths=tmp_paths, keep=arrays, where=where,
    )
    return batch, failed


def _make_parents(paths: list[str]) -> dict[int, OSError]:
    """Create the parent directories of ``paths``; the errors of those that failed."""
    errors: dict[str, int] = {}
    for d in {os.path.dirname(p) for p in paths}:
        try:
            if d:
                os.makedirs(d, exist_ok=True)
        except FileExistsError:  # a file stands where the directory should be
            errors[d] = errno.ENOTDIR
        except OSError as e:
            errors[d] = e.errno or errno.EIO
    if not errors:
        return {}
    return {
        i: io_error(errors[d], p, "mkdir " + d)
        for i, p in enumerate(paths)
        if (d := os.path.dirname(p)) in errors
    }


def plan_into(requests: Sequence[ReadRequest], buffers: Sequence[Any]) -> Batch:
    """A read batch whose destinations are the caller's writable buffers."""
    if len(buffers) != len(requests):
        raise ValueError(f"{len(requests)} requests but {len(buffers)} buffers")
    paths, offsets, lengths = request_columns(requests)
    views = [memoryview(b).cast("B") for b in buffers]
    if any(v.readonly for v in views):
        raise TypeError("read_into needs writable buffers")
    arrays = [np.frombuffer(v, dtype=np.uint8) for v in views]
    addrs = np.fromiter(
        (a.__array_interface__["data"][0] for a in arrays), dtype=np.uint64, count=len(views)
    )
    caps = np.fromiter((len(v) for v in views), dtype=np.int64, count=len(views))
    # O_DIRECT needs aligned memory and ranges; caller buffers rarely are, so read buffered.
    return Batch(
        READ, paths, offsets=offsets, lengths=lengths, caps=caps, addrs=addrs, views=views,
        keep=arrays, direct=False,
    )
