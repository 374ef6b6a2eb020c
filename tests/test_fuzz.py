"""Fuzz: corrupted Zarr arrays read by our three readers against zarr-python.

Each case (tests/fuzz_cases.py) is a small array written by zarr-python with one chunk or
shard file damaged: bit flips, a zeroed or random range, truncation, extension, or an absurd
shard index entry. zarr-python's default pipeline is the oracle. Per reading, by
``dask_lsio.from_zarr`` (io_uring + C kernel, and the thread engine + numcodecs), the
LSIOCodecPipeline (whole array and a box) and ``read_boxes`` (crops, both engines):

- where zarr-python raises, ours raises, naming the damaged file's key;
- where zarr-python returns values, ours returns the same bytes, or raises naming the key
  (stricter is fine: silently different values are not);
- nothing crashes, no reading takes more than ``READ_SECONDS``, and a group of ``GROUP``
  cases ends within ``GROUP_SECONDS`` (else pytest-timeout dumps every thread's stack and
  ends the run: a hang fails loudly).

``LSIO_FUZZ_N`` sets the number of arrays (default 150; ``LSIO_FUZZ_N=1000`` for a thorough
run), ``LSIO_FUZZ_SEEDS=3,17`` runs those cases only, ``LSIO_FUZZ_REPORT=file.json`` writes
the counts there, ``LSIO_FUZZ_VERBOSE=1`` prints each case before it is read.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
import warnings

import dask
import numpy as np
import pytest
import zarr

import dask_lsio
from dask_lsio.zarr.read import read_boxes
from dask_lsio.zarr.spec import open_array, spec_from_array
from fuzz_cases import corrupt, draw, write

N = int(os.environ.get("LSIO_FUZZ_N", 150))
SEEDS = ([int(s) for s in os.environ["LSIO_FUZZ_SEEDS"].split(",")]
         if os.environ.get("LSIO_FUZZ_SEEDS") else list(range(N)))
GROUP = 25  # cases per test item
GROUP_SECONDS = 600  # a group taking longer hangs
READ_SECONDS = 20  # a reading taking longer counts as slow (a failure)
DEFAULT = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}
LSIO = {"codec_pipeline.path": "dask_lsio.zarr.LSIOCodecPipeline"}
FAILURES = ("mismatch", "silent", "no-key", "slow")
COUNTS: collections.Counter = collections.Counter()


def attempt(fn):
    """``fn()``'s value, or the exception it raised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except Exception as e:  # noqa: BLE001 - every failure is an outcome here
        return e


def text(exc: BaseException) -> str:
    """What an error tells a user: message, notes, filename, and those of grouped errors."""
    parts = [str(exc), *getattr(exc, "__notes__", ()), str(getattr(exc, "filename", "") or "")]
    parts += [text(e) for e in getattr(exc, "exceptions", ())]
    return "\n".join(parts)


def same(a, b) -> bool:
    """Same dtype, shape and bytes (NaN payloads and signed zeros included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def judge(expected, got, key: str, seconds: float) -> tuple[str, str]:
    """The outcome of one reading against the oracle's, and a detail for failures."""
    if seconds > READ_SECONDS:
        return "slow", f"{seconds:.1f} s"
    if isinstance(got, Exception):
        if not key or key not in text(got):
            return "no-key", f"{type(got).__name__}: {text(got)[:300]}"
        return ("both-raise" if isinstance(expected, Exception) else "stricter"), ""
    if isinstance(expected, Exception):
        return "silent", f"zarr-python raised {type(expected).__name__}: {expected!s:.200}"
    if not same(expected, got):
        a, b = np.asarray(expected), np.asarray(got)
        if a.shape != b.shape or a.dtype != b.dtype:
            return "mismatch", f"{b.dtype}{b.shape} != {a.dtype}{a.shape}"
        differ = a.view(np.uint8) != b.view(np.uint8) if a.ndim else a.tobytes() != b.tobytes()
        return "mismatch", f"{int(np.count_nonzero(differ))} bytes differ"
    return "equal", ""


def boxes(case, rng) -> tuple[np.ndarray, tuple[int, ...]]:
    """Crop starts (one over the damaged file's cell, the others anywhere, some reaching
    outside the array) and the crop shape."""
    shape = np.array(case.shape)
    crop = np.array([int(rng.integers(1, n + 1)) for n in shape])
    starts = [rng.integers(-crop // 2, shape - crop // 2 + 1) for _ in range(3)]
    cell = cell_of(case)
    if cell is not None:
        lo = np.array(cell) * np.array(case.chunks)
        starts.append(np.minimum(lo, np.maximum(shape - crop, 0)))
    return np.array(starts, np.int64), tuple(int(c) for c in crop)


def cell_of(case) -> tuple[int, ...] | None:
    """The grid position of the damaged file, from its key."""
    if not case.key:
        return None
    key = case.key.replace(os.sep, "/")
    key = key[2:] if key.startswith("c/") else key
    return tuple(int(k) for k in key.replace(".", "/").split("/"))


def expected_boxes(z, starts, crop, fill):
    """zarr-python's values of the crops (outside the array: fill_value), or its error."""
    out = np.full((len(starts),) + crop, fill, dtype=z.dtype)
    for b, s in enumerate(starts.tolist()):
        lo = [max(0, a) for a in s]
        hi = [min(n, a + c) for a, c, n in zip(s, crop, z.shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        got = attempt(lambda: z[tuple(slice(l, h) for l, h in zip(lo, hi))])
        if isinstance(got, Exception):
            return got
        out[(b,) + tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, s))] = got
    return out


def run_case(seed: int, root: str) -> list[tuple[str, str, str]]:
    """Write, damage and read case ``seed``: (reader, outcome, detail) per reading."""
    case = draw(seed)
    path = os.path.join(root, f"a{seed}")
    write(path, case)
    corrupt(path, case)
    if os.environ.get("LSIO_FUZZ_VERBOSE"):
        print(case, file=sys.stderr, flush=True)
    rng = np.random.default_rng([seed, 4])
    with zarr.config.set(DEFAULT):
        plain = zarr.open_array(path, mode="r")
        whole = attempt(lambda: plain[...])
        box = tuple(slice(int(a), int(a) + 1 + int(rng.integers(0, n - a)))
                    for a, n in ((int(rng.integers(0, n)), n) for n in case.shape))
        part = attempt(lambda: plain[box])
        starts, crop = boxes(case, rng)
        crops = expected_boxes(plain, starts, crop, plain.fill_value)
    spec = spec_from_array(*open_array(path))

    def pipeline(sel):
        with zarr.config.set(LSIO):
            return zarr.open_array(path, mode="r")[sel]

    def crops_read(partial: bool):
        with dask.config.set({"lsio.partial-decode": partial}):
            return read_boxes(spec, starts, crop)

    readers = [
        ("from_zarr", whole, lambda: dask_lsio.from_zarr(path).compute(scheduler="sync")),
        ("pipeline", whole, lambda: pipeline(Ellipsis)),
        ("pipeline-box", part, lambda: pipeline(box)),
        ("crops", crops, lambda: crops_read(False)),
        # the default: a crop's blosc chunks decoded only as far as it needs; damage in the
        # rest of a chunk goes unseen (values where zarr-python raises: counted, allowed),
        # but what it returns must equal zarr-python's where zarr-python returns values
        ("crops-partial", crops, lambda: crops_read(True)),
    ]
    threads = [("from_zarr-threads", readers[0][1], readers[0][2]),
               ("crops-threads", readers[3][1], readers[3][2])]
    out = []
    for engine, group in (("auto", readers), ("threads", threads)):
        with dask.config.set({"lsio.engine": engine}):
            for name, expected, read in group:
                t0 = time.perf_counter()
                got = attempt(read)
                outcome, detail = judge(expected, got, case.key, time.perf_counter() - t0)
                if outcome == "silent" and name == "crops-partial":
                    outcome = "partial-unseen"
                out.append((name, outcome, f"{case} | {name}: {detail}"))
    return out


@pytest.fixture(scope="module", autouse=True)
def report():
    """Print (and with LSIO_FUZZ_REPORT, write) the counts once every group ran."""
    yield
    print(f"\nfuzz: {dict(sorted(COUNTS.items()))}", file=sys.stderr)
    if os.environ.get("LSIO_FUZZ_REPORT"):
        with open(os.environ["LSIO_FUZZ_REPORT"], "w") as f:
            json.dump(dict(COUNTS), f, indent=1, sort_keys=True)


@pytest.mark.timeout(GROUP_SECONDS, method="thread")  # a hang: stacks dumped, run ended
@pytest.mark.parametrize("group", range(-(-len(SEEDS) // GROUP)))
def test_corrupt_arrays_read_as_zarr_python_does(tmp_path, group):
    if os.environ.get("LSIO_REQUIRE_URING") == "1":  # the C kernel's readings run here
        assert dask_lsio.get_engine().kind == "io_uring"
    failures = []
    for seed in SEEDS[group * GROUP:(group + 1) * GROUP]:
        results = run_case(seed, str(tmp_path))
        COUNTS["arrays"] += 1
        for _, outcome, detail in results:
            COUNTS["readings"] += 1
            COUNTS[outcome] += 1
            if outcome in FAILURES:
                failures.append(f"{outcome}: {detail}")
    assert not failures, f"{len(failures)} bad readings:\n" + "\n".join(failures)


# ---- what the fuzz found, one test each ----------------------------------------------------

EMPTY = 2**64 - 1
BAD_ENTRIES = {  # entry 0 of a shard whose index has no crc32c: (offset, nbytes)
    "offset >= 2^63": lambda size, n: (2**63 + 5, 10),
    "nbytes >= 2^63": lambda size, n: (0, 2**63 + 5),
    "offset + nbytes overflows": lambda size, n: (2**64 - 8, 16),
    "past the end": lambda size, n: (size + 10, 10),
    "1 TiB": lambda size, n: (0, 2**40),
    "offset absent only": lambda size, n: (EMPTY, 10),
    "nbytes absent only": lambda size, n: (0, EMPTY),
    "0 bytes": lambda size, n: (0, 0),
    "into the index": lambda size, n: (size - n, 16),
}


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("bad", list(BAD_ENTRIES))
def test_bad_index_entry_is_a_decode_error_naming_the_shard(tmp_path, location, bad):
    """Entries are checked against the shard's size when the index is read: a bad one is a
    ChunkDecodeError naming the shard, before any read of it (no allocation of its size, no
    ValueError past 2^63), through every reader and engine. (zarr-python raises for some of
    these and reads others as absent chunks, fill_value: raising is the stricter answer.)"""
    from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

    from dask_lsio.errors import ChunkDecodeError

    path = str(tmp_path / "a")
    z = zarr.create_array(path, shape=(8, 8), chunks=(8, 8), dtype="int32", compressors=None,
                          serializer=ShardingCodec(chunk_shape=(4, 8), index_location=location,
                                                   codecs=[BytesCodec(), ZstdCodec()],
                                                   index_codecs=[BytesCodec()]))
    z[...] = np.arange(64).reshape(8, 8)
    shard = tmp_path / "a" / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    at = 0 if location == "start" else len(raw) - 32
    offset, nbytes = BAD_ENTRIES[bad](len(raw), 32)
    if location == "start" and bad == "into the index":
        offset = 0
    elif location == "start" and offset == 0:
        offset = 32  # the first chunk's place
    raw[at:at + 16] = offset.to_bytes(8, "little") + nbytes.to_bytes(8, "little")
    shard.write_bytes(bytes(raw))
    spec = spec_from_array(*open_array(path))
    for engine in ("io_uring", "threads"):
        with dask.config.set({"lsio.engine": engine}):
            for read in (lambda: dask_lsio.from_zarr(path).compute(scheduler="sync"),
                         lambda: read_boxes(spec, [[0, 0], [4, 4]], (2, 2))):
                with pytest.raises(ChunkDecodeError, match=r"c/0/0'.*sharding_indexed index"):
                    read()
    with zarr.config.set(LSIO), pytest.raises(ChunkDecodeError, match=r"c/0/0'"):
        zarr.open_array(path, mode="r")[...]


def test_a_read_whose_buffer_cannot_be_had_fails_and_does_not_hang(tmp_path):
    """A hooked read batch whose every read failed to get a buffer (nothing in flight) used
    to wait forever for a completion."""
    import errno

    from conftest import make_engine
    from dask_lsio.io.hooks import ReadHook
    from dask_lsio.zarr import _kernel

    (tmp_path / "f").write_bytes(b"x" * 100)
    engine = make_engine("io_uring")
    try:
        hook = ReadHook(_kernel._hook(), lambda lo: 0, lambda *args: 0, 2**50)
        failed = engine.read_hooked([str(tmp_path / "f")] * 3, np.zeros(3, np.int64),
                                    np.full(3, 2**50, np.int64), hook)
    finally:
        engine.close()
    assert [failed[i].errno for i in range(3)] == [errno.ENOMEM] * 3


@pytest.mark.parametrize("codec", ["zstd", "gzip", "blosc"])
@pytest.mark.parametrize("engine", ["io_uring", "threads"])
def test_a_chunk_of_another_size_is_an_error_on_both_paths(tmp_path, codec, engine):
    """A valid frame of a smaller chunk: numcodecs, given an output buffer, decodes zstd and
    gzip into its start (blosc: the header's size of it) and leaves the rest as it was;
    zarr-python, giving none, raises on the size. Both our paths raise, naming the chunk."""
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    from dask_lsio.errors import ChunkDecodeError

    comp = {"zstd": ZstdCodec(), "gzip": GzipCodec(), "blosc": BloscCodec()}[codec]
    for name, rows in (("a", 40), ("b", 5)):
        z = zarr.create_array(str(tmp_path / name), shape=(rows, 100), chunks=(min(rows, 10), 100),
                              dtype="float64", compressors=comp)
        z[...] = np.arange(rows * 100).reshape(rows, 100)
    (tmp_path / "a" / "c" / "1" / "0").write_bytes((tmp_path / "b" / "c" / "0" / "0").read_bytes())
    with pytest.raises(Exception):
        zarr.open_array(str(tmp_path / "a"), mode="r")[...]
    with dask.config.set({"lsio.engine": engine}), \
            pytest.raises(ChunkDecodeError, match=r"c/1/0"):
        dask_lsio.from_zarr(str(tmp_path / "a")).compute(scheduler="sync")
