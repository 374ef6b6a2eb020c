"""The executor: run a plan (:class:`.plan.Plan`) on a store, decoding every chunk as its
read completes and placing it once into the output.

One executor for every caller (regions, crops, the codec pipeline's reads, the merges of
partial writes) and every store: the C kernel (:mod:`._kernel`) as the store's read hook
when the codec chain is one it handles, else numcodecs on the store's decode threads
(:mod:`._decode`). Both report failed reads here, where a missing chunk object becomes
fill_value and anything else an error naming the object.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import metrics
from ..errors import ChunkDecodeError
from ..io import Engine
from ..store import LocalStore, Store
from . import _decode, _kernel
from .plan import Plan, Run
from .spec import ArraySpec

_POOLED = 1 << 20  # outputs from this size on live in recycled memory


def store_of(spec: ArraySpec, engine: Engine | None) -> Store:
    """The spec's store, on ``engine`` when one is given (local stores)."""
    if engine is not None and isinstance(spec.store, LocalStore):
        return spec.store.with_engine(engine)
    return spec.store


def output_for(shape: tuple[int, ...], dtype: np.dtype, store: Store,
               out: np.ndarray | None) -> np.ndarray:
    """``out`` checked to be C-contiguous ``dtype`` of ``shape``, or a new recycled array."""
    if out is None:
        return _output(shape, dtype, store)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {dtype} of shape {shape}; got "
                         f"{out.dtype} {out.shape}")
    return out


def _output(shape: tuple[int, ...], dtype: np.dtype, store: Store) -> np.ndarray:
    """An uninitialised array for a block, in memory recycled through the store's pool.

    A fresh block costs a page fault per page when first written (about a fifth of a warm
    scan's time on our VM, and faults of two threads in one process serialise); a recycled
    one is already mapped. The memory returns to the pool when the array is freed.
    """
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes < _POOLED:
        return np.empty(shape, dtype)
    return store.pool.slab(nbytes)[:nbytes].view(dtype).reshape(shape)


def execute(job: Run, threads: int) -> None:
    """Run a plan with the kernel when it applies, else numcodecs; then handle failed reads."""
    if _kernel.kernel_codec(job.spec.codec) is not None:
        failed = list(_kernel.run(job, threads).items())
    else:
        failed = _decode_numcodecs(job.spec, job.plan, job.out, job.store, threads)
    _settle(job.spec, job.plan, job.out, failed)


def execute_many(jobs: list[Run], threads: int) -> None:
    """Run the plans of several arrays, each read from its store: those the kernel decodes
    in ONE batch per group of stores that join (local stores on one engine), the others one
    after the other."""
    groups: list[list[Run]] = []
    for job in jobs:
        if _kernel.kernel_codec(job.spec.codec) is None:
            execute(job, threads)
            continue
        group = next((g for g in groups if g[0].store.joins(job.store)), None)
        if group is None:
            groups.append([job])
        else:
            group.append(job)
    for group in groups:
        for job, failed in zip(group, _kernel.run_many(group, threads)):
            _settle(job.spec, job.plan, job.out, list(failed.items()))


def _settle(spec: ArraySpec, plan: Plan, out: np.ndarray,
            failed: list[tuple[int, BaseException]]) -> None:
    """Failed reads: a missing chunk object is fill_value (when the plan says so); anything
    else is raised, naming the array."""
    for i, exc in sorted(failed, key=lambda f: f[0]):
        if not (plan.missing_is_fill and isinstance(exc, FileNotFoundError)):
            if isinstance(exc, OSError):
                exc.filename = plan.name(i)  # the object, not a descriptor it was read by
            _reraise(spec, exc)
        rows = slice(int(plan.job_at[i]), int(plan.job_at[i + 1]))
        fill_boxes(spec, out, plan.dst[rows], plan.count[rows])


def _decode_numcodecs(spec: ArraySpec, plan: Plan, out: np.ndarray,
                      store: Store, threads: int) -> list[tuple[int, OSError]]:
    """Read the plan's objects; decode each chunk with numcodecs on the decode threads as
    its read completes. Returns the reads that failed, with their errors."""
    codec, failed, busy, chunks = spec.codec, [], [], []
    job_at, src_off, src_len = plan.job_at.tolist(), plan.src_off.tolist(), plan.src_len.tolist()
    start, count, dst = plan.start.tolist(), plan.count.tolist(), plan.dst.tolist()

    def work(i: int, buf: Any) -> None:
        if isinstance(buf, BaseException):
            failed.append((i, buf))  # list.append is atomic: safe from decode threads
            return
        held: tuple[tuple[int, int], np.ndarray] | None = None  # the last chunk decoded whole
        for j in range(job_at[i], job_at[i + 1]):
            at = src_off[j]
            n = len(buf) - at if src_len[j] < 0 else src_len[j]
            key = plan.job_key(j, i)
            if at + n > len(buf):
                got = max(0, len(buf) - at)
                raise ChunkDecodeError(key, codec.names, f"truncated: {got} of {n} bytes")
            src = tuple(slice(a, a + c) for a, c in zip(start[j], count[j]))
            to = tuple(slice(a, a + c) for a, c in zip(dst[j], count[j]))
            t0 = time.perf_counter()
            if held is not None and held[0] == (at, n):  # plan of one chunk are adjacent
                out[to + (Ellipsis,)] = held[1][src]
            else:
                decoded = _place(codec, buf[at : at + n], key, out, src, to)
                held = None if decoded is None else ((at, n), decoded)
                chunks.append(1)  # atomic, as above
            busy.append(time.perf_counter() - t0)  # atomic, as above

    stream = store.get(plan.keys, plan.offsets, plan.lengths, errors="return",
                       size_hint=plan.hint or None)
    _decode.run(stream, work, threads, store.decode_pool)
    # summed here, on the task's thread: decode threads do not see the task's metrics context
    metrics.record(store.totals, "lsio-decode", sum(busy), "seconds")
    metrics.record(store.totals, "lsio-decoded", len(chunks) * codec.nbytes, "bytes")
    return failed


def _place(codec, buf: Any, key: str, out: np.ndarray, src, dst) -> np.ndarray | None:
    """Decode a chunk into its place in ``out``: straight into it when the whole chunk lands
    in a contiguous piece of ``out``, else through a scratch buffer and one copy. Returns
    the decoded chunk in the second case (valid until this thread decodes again)."""
    target = out[dst + (Ellipsis,)]  # a view, also for 0-d arrays
    if target.size == codec.size and codec.decode_into(buf, key, target):
        return None
    decoded = codec.decode(buf, key)
    target[...] = decoded[src]
    return decoded


def fill_boxes(spec: ArraySpec, out: np.ndarray, dst: np.ndarray, count: np.ndarray) -> None:
    """Set the boxes ``dst`` + ``count`` of ``out`` (rows of (n, ndim) arrays) to fill_value."""
    for d, c in zip(dst.tolist(), count.tolist()):
        out[tuple(slice(a, a + k) for a, k in zip(d, c))] = spec.fill_value


def _reraise(spec: ArraySpec, exc: BaseException) -> None:
    """Raise the engine's error (an OSError naming the path and byte range) as it is, with a
    note naming the array, so callers can still catch PermissionError and friends."""
    exc.add_note(f"while reading the Zarr array at {spec.root!r}")
    raise exc
