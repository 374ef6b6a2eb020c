"""The decode kernel (``_kernel.c``) from Python: execute a plan (:class:`.plan.Plan`) by
reading, decoding and placing every chunk in C, as the store's read hook.

This is the fast path of :mod:`dask_lsio.zarr.read`, for every store: the io_uring engine
calls the hook in its ring threads, the thread engine and the memory store from their worker
threads, all with the GIL released. Per chunk, Python only formats its key (in the plan);
everything else is a few numpy operations per block and the C hook, consuming each read's
bytes while they are still in the CPU cache. It applies when the kernel was built and the
codec chain is one it decodes (see :func:`kernel_codec`); :mod:`~dask_lsio.zarr.read` uses
numcodecs otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import config, metrics
from ..build import warn_missing
from ..errors import ChunkDecodeError
from ..io import hooks
from ..store import KeysOf, Store
from .plan import Plan, Run
from .codecs import ChunkCodec

try:  # built at install time; absent when the codec libraries' headers were missing
    from ._kernel_ext import ffi, lib
except ImportError:  # pragma: no cover - depends on the build
    ffi = lib = None

MAX_DIM = 16
_CODECS = {"blosc": 1, "zstd": 2, "zlib": 3, "gzip": 4}  # LSIO_CODEC_* of _kernel.h
_JOB_ERRORS = {
    1: "truncated: the chunk's byte range runs past the data read",
    2: "the codec rejected the data (corrupt)",
    3: "the data does not decode to the chunk's size",
    4: "out of memory",
}
# a block is split over threads when each part gets this many reads or decoded bytes
# (few large reads, e.g. whole shards coalesced to 1 MiB ranges, are worth splitting too)
_MIN_PART = 64
_MIN_PART_BYTES = 4 << 20


def kernel_codec(codec: ChunkCodec) -> int | None:
    """The kernel's id for ``codec``'s chain, or None when the kernel cannot decode it:
    at most one of blosc/zstd/gzip/zlib, no filters, transpose or checksum, native byte
    order, at most 16 dimensions."""
    if lib is None:
        warn_missing("kernel")  # once per process: why, and that numcodecs is slower
        return None
    if codec.filters or codec.order is not None or codec.crc32c:
        return None
    if not codec.dtype.isnative or len(codec.shape) > MAX_DIM or len(codec.byte_codecs) > 1:
        return None
    if not codec.byte_codecs:
        return 0
    return _CODECS.get(codec.byte_codecs[0].codec_id)


def run(job: Run, parts: int) -> dict[int, OSError]:
    """Read, decode and place every job of ``job.plan`` into ``job.out`` (the codec chain
    must be one :func:`kernel_codec` accepts).

    Returns the reads that failed (by index), which placed nothing: the caller decides what
    a failure means (a missing chunk object is fill_value).

    Raises
    ------
    ChunkDecodeError
        For the first chunk the kernel could not decode, naming its key and the codecs.
    """
    return run_many([job], parts)[0]


def run_many(jobs: list[Run], parts: int) -> list[dict[int, OSError]]:
    """:func:`run` for several plans (of several arrays, each read from its store; the first
    store :meth:`~dask_lsio.store.Store.joins` the others) in ONE store batch: each plan's
    reads form their own parts, whose hook contexts decode with that plan's codec into its
    output. Returns each plan's failed reads, by index within the plan."""
    base = np.cumsum([0] + [len(j.plan.keys) for j in jobs])
    codes = [kernel_codec(j.spec.codec) for j in jobs]
    keep = [_plan_arrays(j.plan, j.out) for j in jobs]
    stream = [_streamed(j.out) for j in jobs]
    spans = []
    for k, j in enumerate(jobs):
        spans += [(int(base[k] + lo), int(base[k] + hi))
                  for lo, hi in hooks.spans(len(j.plan.keys), _parts(j.plan, j.spec.codec, parts))]
    made: list[Any] = []

    def make_ctx(lo: int) -> int:
        k = int(np.searchsorted(base, lo, side="right") - 1)
        made.append(_plan(keep[k], jobs[k].out, jobs[k].spec.codec, codes[k], lo - int(base[k]),
                          jobs[k].partial, stream[k]))
        return int(ffi.cast("uintptr_t", made[-1][0]))

    hook = hooks.ReadHook(_hook(), make_ctx, _call, max(j.plan.hint for j in jobs) or 1)
    failed = jobs[0].store.get_hooked_from(
        [KeysOf(j.store, j.plan.keys) for j in jobs],
        np.concatenate([j.plan.offsets for j in jobs]),
        np.concatenate([j.plan.lengths for j in jobs]), hook, spans)
    _record_decoded(jobs[0].store, made)
    for j, arrays in zip(jobs, keep):
        _raise_job_error(j.plan, j.spec.codec, arrays["job_err"])
    out: list[dict[int, OSError]] = [{} for _ in jobs]
    for i, exc in failed.items():
        k = int(np.searchsorted(base, i, side="right") - 1)
        out[k][i - int(base[k])] = exc
    return out


def _streamed(out: np.ndarray) -> bool:
    """Whether to place into ``out`` with non-temporal stores (see _kernel_copy.h): an output
    of ``lsio.nontemporal-bytes`` or more, in memory already mapped (a recycled block, a
    reused ``out=``). Fresh memory is zeroed through the cache by each page's first-touch
    fault, after which ordinary stores find its lines there: a z[:] into a new 1 GiB array
    streamed ran 0.90x, into a reused one 1.11x (bench_read A, array and array-out)."""
    return out.nbytes >= config.get_bytes("nontemporal-bytes") and bool(
        lib.lsio_kernel_mapped(ffi.cast("const char *", out.__array_interface__["data"][0]),
                               out.nbytes))


def _call(ctx: int, idx: int, data: int, n: int) -> int:
    """The hook called from Python threads (cffi releases the GIL while it runs)."""
    return lib.lsio_kernel_hook(ffi.cast("void *", ctx), idx, ffi.cast("const char *", data), n)


def _record_decoded(store: Store, plans: list[tuple[Any, Any, Any]]) -> None:
    """Record the bytes the parts' codecs produced (``lsio-decoded``): whole chunks, or the
    parts of them that crops needed."""
    metrics.record(store.totals, "lsio-decoded", sum(int(d[0]) for _, _, d in plans), "bytes")


def _hook() -> int:
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, "lsio_kernel_hook")))


def _parts(jobs: Plan, codec: ChunkCodec, parts: int) -> int:
    """Parts (threads) a plan is worth splitting into: each gets ``_MIN_PART`` reads or
    ``_MIN_PART_BYTES`` of decoding."""
    n = len(jobs.keys)
    decoded = len(jobs.src_off) * codec.nbytes  # at most: chunks cut by the region count whole
    return max(1, min(parts, n, max(n // _MIN_PART, decoded // _MIN_PART_BYTES)))


def _raise_job_error(jobs: Plan, codec: ChunkCodec, job_err: np.ndarray) -> None:
    """The first chunk the kernel could not decode, as a ChunkDecodeError naming it."""
    failed = np.flatnonzero(job_err)
    if len(failed):
        j = int(failed[0])
        read = int(np.searchsorted(jobs.job_at, j, side="right") - 1)
        reason = _JOB_ERRORS.get(int(job_err[j]), "failed")
        raise ChunkDecodeError(jobs.job_key(j, read), codec.names, reason)


def _plan_arrays(jobs: Plan, out: np.ndarray) -> dict[str, np.ndarray]:
    """The C-contiguous int64 columns the C plan points into (kept alive by the caller)."""
    # (a matrix product: 0.45 ms for 131,072 jobs against 4.4 for a product and a row sum)
    dst_off = jobs.dst.astype(np.int64, copy=False) @ np.asarray(out.strides, np.int64)
    sel = np.ascontiguousarray(np.concatenate([jobs.start, jobs.count], axis=1), np.int64)
    return {
        "job_at": np.ascontiguousarray(jobs.job_at, np.int64),
        "src_off": np.ascontiguousarray(jobs.src_off, np.int64),
        "src_len": np.ascontiguousarray(jobs.src_len, np.int64),
        "dst_off": np.ascontiguousarray(dst_off, np.int64),
        "sel": sel,
        "job_err": np.zeros(len(dst_off), np.int32),
    }


def _plan(arrays: dict[str, np.ndarray], out: np.ndarray, codec: ChunkCodec, code: int,
          lo: int, partial: bool = False, stream: bool = False) -> tuple[Any, Any]:
    """A C plan for the part of the batch starting at read ``lo`` (own scratch buffer);
    ``partial``: blosc chunks a job needs a part of are decoded in part; ``stream``: values
    are placed with non-temporal stores."""
    p = ffi.new("lsio_kplan *")
    p.codec = code
    p.partial = partial
    p.stream = stream
    p.ndim = len(codec.shape)
    p.itemsize = codec.dtype.itemsize
    for d, (c, s) in enumerate(zip(codec.shape, out.strides)):
        p.chunk_shape[d] = c
        p.dest_strides[d] = s
    p.dest = ffi.cast("char *", out.__array_interface__["data"][0])
    p.job_at = ffi.from_buffer("int64_t[]", arrays["job_at"]) + lo
    for name in ("src_off", "src_len", "dst_off", "sel"):
        setattr(p, name, ffi.from_buffer("int64_t[]", arrays[name]))
    p.job_err = ffi.from_buffer("int32_t[]", arrays["job_err"])
    scratch = np.empty(max(codec.nbytes, 1), dtype=np.uint8)
    p.scratch = ffi.from_buffer("char[]", scratch)
    decoded = ffi.new("int64_t *")
    p.decoded = decoded
    return p, scratch, decoded


def gather(src: np.ndarray, out: np.ndarray) -> bool:
    """Copy ``src`` (any strides) into ``out`` (C-contiguous, same shape and dtype) in C
    with the GIL released: ~3x numpy's rate for narrow rows (a (1024, 16, 16) float32
    chunk of a (1024, 128, 128) block, 64-byte rows: 3.0-3.3 GiB/s, numpy 1.1). False when
    the kernel is not built or the arrays do not suit it (the caller copies with numpy)."""
    if lib is None or src.ndim > MAX_DIM or src.shape != out.shape or src.dtype != out.dtype \
            or not out.flags.c_contiguous or src.dtype.hasobject:
        return False
    if src.size == 0:
        return True
    shape = np.array(src.shape, np.int64)
    strides = np.array(src.strides, np.int64)
    err = lib.lsio_kernel_gather(ffi.cast("const char *", src.__array_interface__["data"][0]),
                                 src.ndim, ffi.from_buffer("int64_t[]", shape),
                                 ffi.from_buffer("int64_t[]", strides), src.dtype.itemsize,
                                 ffi.from_buffer("char[]", out))
    return err == 0


def coalesce_sorted(shards: np.ndarray, offsets: np.ndarray, ends: np.ndarray, gap: int,
                    limit: int) -> np.ndarray | None:
    """Where each merged read starts among byte ranges sorted by shard, then offset (see
    :func:`dask_lsio.zarr.shard.coalesce`), in C: a loop over every inner chunk planned,
    131,072 per task of a scan of 1 KiB chunks. None when the kernel is not built."""
    if lib is None:
        return None
    cols = [np.ascontiguousarray(a, dtype=np.int64) for a in (shards, offsets, ends)]
    firsts = np.empty(len(cols[0]), np.int64)
    m = lib.lsio_kernel_coalesce(len(firsts), *(ffi.from_buffer("int64_t[]", a) for a in cols),
                                 int(gap), int(limit), ffi.from_buffer("int64_t[]", firsts))
    return firsts[:m]


def encode_blosc(arr: np.ndarray, codec: Any, out: np.ndarray | None = None
                 ) -> memoryview | None:
    """numcodecs ``Blosc`` ``codec``'s encoding of the C-contiguous ``arr`` (its item size
    the typesize, as numcodecs takes it) by the kernel's c-blosc, with the GIL released,
    into ``out`` (uint8, C-contiguous, at least ``arr.nbytes + 16`` bytes) or a new buffer:
    a view of the bytes written. (numcodecs returns a copy cut to the compressed size, made
    per chunk.) None when the kernel cannot (not built, a setting c-blosc refuses, ``out``
    too small): the caller encodes with numcodecs, which says what is wrong."""
    if lib is None or not arr.flags.c_contiguous or arr.dtype.hasobject:
        return None
    shuffle = _shuffle(codec, arr.dtype.itemsize)
    n = arr.nbytes
    if out is None:
        out = np.empty(n + 16, np.uint8)  # BLOSC_MAX_OVERHEAD: room for any input
    elif out.dtype != np.uint8 or not out.flags.c_contiguous or out.size < n + 16:
        return None
    got = lib.lsio_kernel_encode_blosc(
        ffi.from_buffer("char[]", arr.reshape(-1).view(np.uint8)), n,
        ffi.from_buffer("char[]", out), out.size, int(codec.clevel), int(shuffle),
        arr.dtype.itemsize, str(codec.cname).encode(), int(codec.blocksize))
    return None if got < 0 else memoryview(out)[:got]


def encode_blosc_units(block: np.ndarray, starts: np.ndarray, unit: tuple[int, ...],
                       codec: Any, fill: np.ndarray | None, arena: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """numcodecs ``Blosc`` ``codec``'s encoding of many write units of ``block`` in one
    kernel call, with the GIL released once (a Python loop over units pays the interpreter
    and a GIL hand-off per unit, which two writing threads contend for).

    Unit ``i`` is ``block[starts[i, 0]:starts[i, 0] + unit[0], ...]``; each must lie inside
    ``block``. A unit whose items all equal ``fill`` (a 0-d array of ``block``'s dtype;
    compared bit for bit) is not encoded: its size is 0. Returns ``(arena, sizes)``: the
    encoded units one after the other in ``arena`` (``arena`` reused when large enough),
    ``sizes[i]`` bytes each. None when the kernel cannot (not built, a dtype or a setting
    it does not take): the caller encodes unit by unit, which says what is wrong.
    """
    if lib is None or block.dtype.hasobject or block.ndim != len(unit) or block.ndim == 0 \
            or block.ndim > MAX_DIM or any(s < 0 for s in block.strides):
        return None  # (a 0-d array's one chunk: encoded on its own)
    starts = np.ascontiguousarray(starts, dtype=np.int64).reshape(-1, block.ndim)
    if ((starts < 0) | (starts + np.array(unit, np.int64) > np.array(block.shape))).any():
        raise ValueError(f"units of {unit} at {starts.tolist()[:4]}... reach outside the "
                         f"block of {block.shape}")
    shuffle = _shuffle(codec, block.dtype.itemsize)
    nbytes = int(np.prod(unit)) * block.dtype.itemsize
    need = len(starts) * (nbytes + 16)  # BLOSC_MAX_OVERHEAD per unit: room for any input
    if arena is None or arena.dtype != np.uint8 or arena.size < need \
            or not arena.flags.c_contiguous:
        arena = np.empty(need, np.uint8)
    sizes = np.zeros(len(starts), np.int64)
    if not len(starts):
        return arena, sizes
    origins = np.ascontiguousarray(starts @ np.array(block.strides, np.int64))
    scratch = np.empty(nbytes, np.uint8)
    fill_bytes = ffi.NULL if fill is None else ffi.from_buffer(
        "char[]", np.ascontiguousarray(fill, dtype=block.dtype).reshape(1).view(np.uint8))
    got = lib.lsio_kernel_encode_blosc_units(
        ffi.cast("const char *", block.__array_interface__["data"][0]), block.ndim,
        ffi.from_buffer("int64_t[]", np.array(unit, np.int64)),
        ffi.from_buffer("int64_t[]", np.array(block.strides, np.int64)),
        block.dtype.itemsize, len(starts), ffi.from_buffer("int64_t[]", origins), fill_bytes,
        ffi.from_buffer("char[]", scratch), scratch.size, ffi.from_buffer("char[]", arena),
        arena.size, ffi.from_buffer("int64_t[]", sizes), int(codec.clevel), int(shuffle),
        str(codec.cname).encode(), int(codec.blocksize))
    return None if got < 0 else (arena, sizes)


def _shuffle(codec: Any, itemsize: int) -> int:
    """The c-blosc shuffle of numcodecs ``Blosc`` ``codec`` for items of ``itemsize`` bytes
    (numcodecs' AUTOSHUFFLE, -1, resolved as numcodecs resolves it)."""
    return (2 if itemsize == 1 else 1) if codec.shuffle == -1 else int(codec.shuffle)
