"""Read a region of a Zarr array: plan the objects it needs, fetch them in one engine batch,
decode as completions arrive, place each chunk once into the output array.

The plan (:mod:`._plan`) has two executors: the C kernel (:mod:`._kernel`) inside the io_uring
engine's batch, when the codec chain is one it handles, else numcodecs on the decode threads
(:mod:`._decode`). Both report failed reads here, where a missing chunk object becomes
fill_value and anything else an error naming the path.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterator

import numpy as np

from .. import config, metrics
from ..errors import ChunkDecodeError
from ..io import Engine, get_engine
from ..io.pin import PinnedFiles, max_pinned
from . import _decode, _kernel, _plan
from .shard import read_indexes
from .spec import ArraySpec

_POOLED = 1 << 20  # outputs from this size on live in recycled memory


def read_region(spec: ArraySpec, region: tuple[slice, ...], engine: Engine | None = None,
                out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """The values of ``spec``'s array in ``region`` (slices with step 1, within bounds),
    in ``out`` when given (C-contiguous, the region's shape and the array's dtype), decoded
    on ``threads`` threads (default: the engine's ``decode_threads``; a caller that is the
    only reader, not one of several dask tasks, can use every core)."""
    engine = engine or get_engine()
    out = output_for(tuple(s.stop - s.start for s in region), spec.dtype, engine, out)
    with metrics.timed(engine.totals, "lsio-read"):
        return _read(spec, region, engine, out, threads or engine.decode_threads)


def _read(spec: ArraySpec, region: tuple[slice, ...], engine: Engine, out: np.ndarray,
          threads: int) -> np.ndarray:
    if out.size == 0:
        return out
    if spec.shard is None:
        _execute(spec, _plan.chunk_jobs(spec, region), out, engine, threads)
        return out
    # shards held open from their index read to their data read, a bounded number at once
    for piece in _pieces(region, spec.grid, max_pinned()):
        target = out[tuple(slice(p.start - r.start, p.stop - r.start)
                           for p, r in zip(piece, region))]
        if target.flags.c_contiguous:  # pieces split along the first axes: views of out
            _read_shards(spec, piece, engine, target, threads)
        else:
            target[...] = _read_shards(spec, piece, engine, np.empty_like(target), threads)
    return out


def _read_shards(spec: ArraySpec, region: tuple[slice, ...], engine: Engine, out: np.ndarray,
                 threads: int) -> np.ndarray:
    """Read a region of a sharded array: each shard's index, then the inner chunks it
    locates, both through one open descriptor per shard, so both reads see the same version
    of the shard even while a writer renames a new one into place."""
    names = spec.paths(_plan.cell_boxes(region, spec.grid)[0])
    with PinnedFiles(names) as files:
        jobs, (dst, count) = _plan.shard_jobs(
            spec, region, files.read_paths, read_indexes(spec, names, engine, files.read_paths),
            config.get_bytes("coalesce-gap"), config.get_bytes("coalesce-max"), names,
        )
        fill_boxes(spec, out, dst, count)
        if jobs is not None:
            _execute(spec, jobs, out, engine, threads)
    return out


def _pieces(region: tuple[slice, ...], grid: tuple[int, ...],
            limit: int) -> Iterator[tuple[slice, ...]]:
    """``region`` cut on the grid into pieces of at most ``limit`` cells, along the first
    axes first (so that most pieces are contiguous parts of a C-order output)."""
    counts = [(s.stop - 1) // g - s.start // g + 1 for s, g in zip(region, grid)]
    if math.prod(counts) <= limit:
        yield region
        return
    axis = next(a for a, c in enumerate(counts) if c > 1)
    step = max(1, limit // math.prod(counts[axis + 1:])) * grid[axis]
    s = region[axis]
    start = s.start
    while start < s.stop:
        stop = min(s.stop, (start // step + 1) * step)
        yield from _pieces(region[:axis] + (slice(start, stop),) + region[axis + 1:], grid,
                           limit)
        start = stop


def output_for(shape: tuple[int, ...], dtype: np.dtype, engine: Engine,
               out: np.ndarray | None) -> np.ndarray:
    """``out`` checked to be C-contiguous ``dtype`` of ``shape``, or a new recycled array."""
    if out is None:
        return _output(shape, dtype, engine)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {dtype} of shape {shape}; got "
                         f"{out.dtype} {out.shape}")
    return out


def _output(shape: tuple[int, ...], dtype: np.dtype, engine: Engine) -> np.ndarray:
    """An uninitialised array for a block, in memory recycled through the engine's pool.

    A fresh block costs a page fault per page when first written (about a fifth of a warm
    scan's time on our VM, and faults of two threads in one process serialise); a recycled
    one is already mapped. The memory returns to the pool when the array is freed.
    """
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes < _POOLED:
        return np.empty(shape, dtype)
    return engine.pool.slab(nbytes)[:nbytes].view(dtype).reshape(shape)


def _execute(spec: ArraySpec, jobs: _plan.Jobs, out: np.ndarray, engine: Engine,
             threads: int) -> None:
    """Run a plan with the kernel when it applies, else numcodecs; then handle failed reads."""
    code = _kernel.kernel_codec(spec.codec)
    if code is not None and _kernel.engine_runs_hooks(engine):
        batch, failed_reads = _kernel.run(jobs, out, spec.codec, code, engine,
                                          threads)
        failed = [(i, batch.error(i)) for i in failed_reads.tolist()]
    else:
        failed = _decode_numcodecs(spec, jobs, out, engine, threads)
    _settle(spec, jobs, out, failed)


def execute_many(plans: list[tuple[ArraySpec, _plan.Jobs, np.ndarray]], engine: Engine,
                  threads: int) -> None:
    """Run the plans of several arrays: in ONE engine batch when the kernel decodes them
    all, else one after the other."""
    codes = [_kernel.kernel_codec(spec.codec) for spec, _, _ in plans]
    if len(plans) < 2 or None in codes or not _kernel.engine_runs_hooks(engine):
        for spec, jobs, out in plans:
            _execute(spec, jobs, out, engine, threads)
        return
    batch_plans = [(jobs, out, spec.codec, code) for (spec, jobs, out), code in zip(plans, codes)]
    batch, failed_reads = _kernel.run_many(batch_plans, engine, threads)
    first = 0
    for (spec, jobs, out), failed in zip(plans, failed_reads):
        _settle(spec, jobs, out, [(i - first, batch.error(i)) for i in failed.tolist()])
        first += len(jobs.paths)


def _settle(spec: ArraySpec, jobs: _plan.Jobs, out: np.ndarray,
            failed: list[tuple[int, BaseException]]) -> None:
    """Failed reads: a missing chunk object is fill_value (when the plan says so); anything
    else is raised, naming the array."""
    for i, exc in sorted(failed, key=lambda f: f[0]):
        if not (jobs.missing_is_fill and isinstance(exc, FileNotFoundError)):
            if isinstance(exc, OSError):
                exc.filename = jobs.name(i)  # the object, not a descriptor it was read by
            _reraise(spec, exc)
        rows = slice(int(jobs.job_at[i]), int(jobs.job_at[i + 1]))
        fill_boxes(spec, out, jobs.dst[rows], jobs.count[rows])


def _decode_numcodecs(spec: ArraySpec, jobs: _plan.Jobs, out: np.ndarray,
                      engine: Engine, threads: int) -> list[tuple[int, OSError]]:
    """Read the plan's objects; decode each chunk with numcodecs on the decode threads as
    its read completes. Returns the reads that failed, with their errors."""
    codec, failed, busy, chunks = spec.codec, [], [], []
    job_at, src_off, src_len = jobs.job_at.tolist(), jobs.src_off.tolist(), jobs.src_len.tolist()
    start, count, dst = jobs.start.tolist(), jobs.count.tolist(), jobs.dst.tolist()

    def work(i: int, buf: Any) -> None:
        if isinstance(buf, BaseException):
            failed.append((i, buf))  # list.append is atomic: safe from decode threads
            return
        held: tuple[tuple[int, int], np.ndarray] | None = None  # the last chunk decoded whole
        for j in range(job_at[i], job_at[i + 1]):
            at = src_off[j]
            n = len(buf) - at if src_len[j] < 0 else src_len[j]
            key = jobs.job_key(j, i)
            if at + n > len(buf):
                got = max(0, len(buf) - at)
                raise ChunkDecodeError(key, codec.names, f"truncated: {got} of {n} bytes")
            src = tuple(slice(a, a + c) for a, c in zip(start[j], count[j]))
            to = tuple(slice(a, a + c) for a, c in zip(dst[j], count[j]))
            t0 = time.perf_counter()
            if held is not None and held[0] == (at, n):  # jobs of one chunk are adjacent
                out[to + (Ellipsis,)] = held[1][src]
            else:
                decoded = _place(codec, buf[at : at + n], key, out, src, to)
                held = None if decoded is None else ((at, n), decoded)
                chunks.append(1)  # atomic, as above
            busy.append(time.perf_counter() - t0)  # atomic, as above

    stream = engine.read_ranges(jobs.paths, jobs.offsets, jobs.lengths, errors="return",
                                size_hint=jobs.hint or None)
    _decode.run(stream, work, threads)
    # summed here, on the task's thread: decode threads do not see the task's metrics context
    metrics.record(engine.totals, "lsio-decode", sum(busy), "seconds")
    metrics.record(engine.totals, "lsio-decoded", len(chunks) * codec.nbytes, "bytes")
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
