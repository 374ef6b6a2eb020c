"""Read a region of a Zarr array: plan the objects it needs, fetch them in one engine batch,
decode as completions arrive, place each chunk once into the output array.

The plan (:mod:`._plan`) has two executors: the C kernel (:mod:`._kernel`) inside the io_uring
engine's batch, when the codec chain is one it handles, else numcodecs on the decode threads
(:mod:`._decode`). Both report failed reads here, where a missing chunk object becomes
fill_value and anything else an error naming the path.
"""

from __future__ import annotations

import time
from typing import Any

import crc32c
import numpy as np

from .. import config, metrics
from ..errors import ChunkDecodeError
from ..io import Engine, get_engine
from . import _decode, _kernel, _plan
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
        jobs = _plan.chunk_jobs(spec, region)
    else:
        shards = _plan.cell_boxes(region, spec.grid)[0]
        paths = spec.paths(shards)
        jobs, (dst, count) = _plan.shard_jobs(
            spec, region, paths, _read_indexes(spec, paths, engine),
            config.get_bytes("coalesce-gap"), config.get_bytes("coalesce-max"),
        )
        _fill_boxes(spec, out, dst, count)
    if jobs is not None:
        _execute(spec, jobs, out, engine, threads)
    return out


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


def _execute_many(plans: list[tuple[ArraySpec, _plan.Jobs, np.ndarray]], engine: Engine,
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
            _reraise(spec, exc)
        rows = slice(int(jobs.job_at[i]), int(jobs.job_at[i + 1]))
        _fill_boxes(spec, out, jobs.dst[rows], jobs.count[rows])


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


def _fill_boxes(spec: ArraySpec, out: np.ndarray, dst: np.ndarray, count: np.ndarray) -> None:
    """Set the boxes ``dst`` + ``count`` of ``out`` (rows of (n, ndim) arrays) to fill_value."""
    for d, c in zip(dst.tolist(), count.tolist()):
        out[tuple(slice(a, a + k) for a, k in zip(d, c))] = spec.fill_value


def _reraise(spec: ArraySpec, exc: BaseException) -> None:
    """Raise the engine's error (an OSError naming the path and byte range) as it is, with a
    note naming the array, so callers can still catch PermissionError and friends."""
    exc.add_note(f"while reading the Zarr array at {spec.root!r}")
    raise exc


def _read_indexes(spec: ArraySpec, paths: list[str], engine: Engine) -> list[np.ndarray | None]:
    """Each shard's index as an array of (offset, nbytes) pairs; None for a missing shard."""
    layout = spec.shard
    per_shard = layout.per_shard(spec.grid)
    n = layout.index_nbytes(spec.grid)
    offsets = np.full(len(paths), -n if layout.index_at_end else 0, dtype=np.int64)
    lengths = np.full(len(paths), -1 if layout.index_at_end else n, dtype=np.int64)
    out: list[np.ndarray | None] = [None] * len(paths)
    for i, buf in engine.read_ranges(paths, offsets, lengths, errors="return"):
        if isinstance(buf, FileNotFoundError):
            continue
        if isinstance(buf, BaseException):
            _reraise(spec, buf)
        out[i] = _parse_index(buf, n, layout.index_crc32c, per_shard, paths[i])
    return out


def _parse_index(buf: Any, n: int, crc: bool, per_shard, path: str) -> np.ndarray:
    data = memoryview(buf).cast("B")
    what = "sharding_indexed index"
    if len(data) != n:
        raise ChunkDecodeError(path, what, f"index of {len(data)} bytes, expected {n}")
    if crc:
        want = int.from_bytes(data[-4:], "little")
        if crc32c.crc32c(data[:-4]) != want:
            raise ChunkDecodeError(path, what, "index crc32c mismatch")
        data = data[:-4]
    return np.frombuffer(data, dtype="<u8").reshape(per_shard + (2,)).copy()

