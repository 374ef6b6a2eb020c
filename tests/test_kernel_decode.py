"""The C kernel's decoders against numcodecs' on damaged chunks, called directly (no IO).

numcodecs is what zarr-python decodes with, so for the same bytes the kernel must give the
same values, or fail where numcodecs fails (a size other than the chunk's included). On
bytes whose damage a codec's checks do not catch, the output is whatever that version of
the library makes of them: these tests fail for a kernel linked against other versions of
zstd or c-blosc than numcodecs' (the system's zstd 1.5.4 and c-blosc 1.21.3 did).
Also the hardening: zlib fed in 32-bit steps, per-thread zstd contexts freed, chunks past
c-blosc's 2 GiB refused.
"""

from __future__ import annotations

import gzip
import os
import threading
import time
import zlib

import numcodecs
import numpy as np
import pytest

from dask_lsio.zarr import _kernel
from dask_lsio.zarr.plan import Plan as Jobs
from dask_lsio.zarr.codecs import ChunkCodec

pytestmark = pytest.mark.skipif(_kernel.lib is None, reason="built without the decode kernel")
SIZE = 3  # LSIO_KERR_SIZE


GUARD = 64  # bytes around the output that no decoder may touch


# how a chunk is placed: decoded straight into a contiguous output; element by element into
# every other element of one (through scratch; blosc-LZ4 of 1, 2 or 4-byte items read by
# _kernel_lz4.c); contiguous, with non-temporal stores (plan.stream: also through scratch)
PLACEMENTS = ("whole", "pieces", "streamed")


def kernel_decode(name: str, data: bytes, shape: tuple[int, ...], dtype="uint8", fill=None,
                  placement="whole"):
    """The kernel's decoding of one whole chunk: its values, or its LSIO_KERR_* code.

    With ``fill``, the output lies inside a buffer of ``fill`` bytes (its previous contents)
    whose bytes around it (and, placed in pieces, between its elements) must stay untouched.
    """
    codec = ChunkCodec(shape, np.dtype(dtype))
    nbytes = codec.nbytes
    step = 2 if placement == "pieces" else 1
    whole = np.full(step * nbytes + 2 * GUARD, 0 if fill is None else fill, np.uint8)
    flat = whole[GUARD:GUARD + step * nbytes].view(dtype)
    out = flat[::step].reshape(shape)
    zeros = np.zeros((1, len(shape)), np.int64)
    jobs = Jobs(["-"], np.zeros(1, np.int64), np.full(1, -1, np.int64),
                np.array([0, 1], np.int64), np.zeros(1, np.int64), np.full(1, -1, np.int64),
                zeros, np.array([shape], np.int64), zeros)
    arrays = _kernel._plan_arrays(jobs, out)
    plan, _scratch, _decoded = _kernel._plan(arrays, out, codec, _kernel._CODECS.get(name, 0), 0,
                                             stream=placement == "streamed")
    src = _kernel.ffi.from_buffer(data)
    _kernel.lib.lsio_kernel_hook(plan, 0, src, len(data))
    if fill is not None:
        assert (whole[:GUARD] == fill).all() and (whole[-GUARD:] == fill).all()
        if step > 1:
            assert (flat[1::step].copy().view(np.uint8) == fill).all()
    err = int(arrays["job_err"][0])
    return err if err else out


def reference(codec, data: bytes, nbytes: int):
    """numcodecs' decoding as zarr-python calls it (no ``out``): bytes, or None (failed, or
    not the chunk's size)."""
    try:
        got = bytes(memoryview(codec.decode(data)).cast("B"))
    except Exception:  # noqa: BLE001 - any failure
        return None
    return got if len(got) == nbytes else None


def damaged(raw: bytes, rng) -> bytes:
    """``raw`` with a few bits flipped, a range zeroed or randomised, cut or extended."""
    b = bytearray(raw)
    kind = int(rng.integers(0, 5))
    if kind == 0:
        for bit in rng.integers(0, 8 * len(b), int(rng.integers(1, 5))).tolist():
            b[bit // 8] ^= 1 << (bit % 8)
    elif kind in (1, 2):
        a, n = int(rng.integers(0, len(b))), int(rng.integers(1, 48))
        b[a:a + n] = bytes(len(b[a:a + n])) if kind == 1 else rng.bytes(len(b[a:a + n]))
    elif kind == 3:
        del b[int(rng.integers(0, len(b))):]
    else:
        b += bytes(int(rng.integers(1, 9))) if rng.random() < 0.5 else rng.bytes(5)
    return bytes(b)


def chunk_values(rng, n: int, dtype: str) -> np.ndarray:
    """Compressible values with repeats (so that codecs emit back-references)."""
    v = np.resize(rng.integers(0, 60, int(rng.integers(1, 40))), n)
    noise = rng.random(n) < 0.1
    v[noise] = rng.integers(0, 1000, int(noise.sum()))
    return v.astype(dtype)


CODECS = {
    "zstd": [numcodecs.Zstd(level=1), numcodecs.Zstd(level=5, checksum=True)],
    "blosc": [numcodecs.Blosc(cname=c, clevel=5, shuffle=s, blocksize=b)
              for c in ("zstd", "lz4", "blosclz", "zlib") for s in (0, 1, 2) for b in (0, 256)],
    "gzip": [numcodecs.GZip(level=5)],
    "zlib": [numcodecs.Zlib(level=5)],
}


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("name", list(CODECS))
def test_damaged_chunks_decode_as_numcodecs_decodes_them(name, placement):
    """Same values or both fail, for hundreds of damaged chunks of every configuration,
    however the chunk is placed (the same error too: c-blosc's, also where the kernel reads
    blosc-LZ4 itself); nothing outside the chunk's place is written and nothing that was
    there before shows through."""
    rng = np.random.default_rng(list(map(ord, name)))
    trials = 600 if name in ("zstd", "blosc") else 300
    differ = []
    for t in range(trials):
        codec = CODECS[name][t % len(CODECS[name])]
        dtype = str(rng.choice(["uint8", "<i2", "<f4", "<f8"]))
        values = chunk_values(rng, int(rng.integers(20, 1500)), dtype)
        data = damaged(codec.encode(values), rng) if t % 10 else codec.encode(values)
        want = reference(codec, data, values.nbytes)
        got = kernel_decode(name, data, values.shape, dtype, fill=0, placement=placement)
        ours = None if isinstance(got, int) else got.tobytes()
        again = kernel_decode(name, data, values.shape, dtype, fill=255, placement=placement)
        # whatever the output held before does not show through (no codec reads it)
        assert (None if isinstance(again, int) else again.tobytes()) == ours, t
        if placement != "whole":  # the error code too: the kernel's whole decode's
            direct = kernel_decode(name, data, values.shape, dtype)
            assert (got if isinstance(got, int) else -1) == \
                (direct if isinstance(direct, int) else -1), (t, codec, dtype)
        if ours is None and name == "blosc" and _frame_length(data) != len(data):
            continue  # numcodecs reads a truncated frame past its end, or ignores the rest
        if ours != want:
            what = "fails" if ours is None else ("accepts" if want is None else "differs")
            differ.append(f"#{t} {codec!r} {dtype}: the kernel {what} (error {got!r:.20})")
    assert not differ, f"{len(differ)} of {trials}:\n" + "\n".join(differ[:20])


def _frame_length(data: bytes) -> int:
    """The length a blosc frame's header states (refused by the kernel when it is not the
    data's: numcodecs trusts it)."""
    return int.from_bytes(data[12:16], "little") if len(data) >= 16 else -1


def gz(payload: bytes, **kw) -> bytes:
    return gzip.compress(payload, mtime=0, **kw)


@pytest.mark.parametrize("name,data", [
    ("gzip", gz(b"abcd" * 50) + b"\0" * 7),                   # NUL padding: ignored
    ("gzip", gz(b"abcd" * 20) + gz(b"abcd" * 30)),            # two members: concatenated
    ("gzip", gz(b"abcd" * 50) + gz(b"")),                     # an empty member after it
    ("gzip", gz(b"abcd" * 50) + b"\0\0x"),                    # not another member
    ("gzip", gz(b"abcd" * 50) + b"\x1f"),                     # a member's first byte only
    ("gzip", gz(b"abcd" * 50) + gz(b"abcd")),                 # a member too many
    ("gzip", zlib.compress(b"abcd" * 50)),                    # a zlib stream
    ("zlib", gz(b"abcd" * 50)),                               # a gzip stream
    ("zlib", zlib.compress(b"abcd" * 50) + b"trailing"),      # ignored by zlib.decompress
    ("zlib", zlib.compress(b"abcd" * 50)[:-2]),               # no adler32
])
def test_gzip_and_zlib_streams_as_python_reads_them(name, data):
    want = reference(CODECS[name][0], data, 200)
    got = kernel_decode(name, data, (200,))
    assert (None if isinstance(got, int) else got.tobytes()) == want


def test_zlib_is_fed_in_steps():
    """zlib's byte counts are 32-bit: chunks are fed in steps (1 GiB; 7 bytes here), which
    must decode exactly as one call does, gzip members across steps included."""
    rng = np.random.default_rng(3)
    values = chunk_values(rng, 5000, "<f4")
    raw = values.tobytes()
    cases = [("zlib", zlib.compress(raw)), ("gzip", gz(raw)),
             ("gzip", gz(raw[:7001]) + b"\0" * 3 + gz(raw[7001:]))]
    _kernel.lib.lsio_kernel_set_zlib_step(7)
    try:
        for name, data in cases:
            got = kernel_decode(name, data, values.shape, "<f4")
            assert not isinstance(got, int), (name, got)
            np.testing.assert_array_equal(got, values)
        assert kernel_decode("gzip", gz(raw)[:-3], values.shape, "<f4") == 2  # corrupt
    finally:
        _kernel.lib.lsio_kernel_set_zlib_step(0)  # back to the default


def test_zstd_contexts_are_freed_when_their_thread_exits():
    data = numcodecs.Zstd().encode(np.arange(1000, dtype="<i4"))
    before = _kernel.lib.lsio_kernel_zstd_contexts()
    got = []
    threads = [threading.Thread(target=lambda: got.append(kernel_decode("zstd", data, (1000,),
                                                                         "<i4")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(g, np.arange(1000)) for g in got) and len(got) == 4
    # (join returns once the thread's Python state is gone; its C exit, which runs the
    # destructors, follows a moment later)
    deadline = time.monotonic() + 5
    while _kernel.lib.lsio_kernel_zstd_contexts() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _kernel.lib.lsio_kernel_zstd_contexts() == before


def _with(frame: bytes, at: int, value: bytes) -> bytes:
    return frame[:at] + value + frame[at + len(value):]


def _blosc_lz4_variants() -> dict[str, tuple[bytes, str]]:
    """8 KiB blosc-LZ4 frames, and their header fields set to what c-blosc 1.21 refuses (or,
    for the last ones, what it accepts): 2 shuffled blocks of 1,024 float32 (4 streams
    each), or one block of bytes (one stream)."""
    rng = np.random.default_rng(5)
    frame = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=1, blocksize=4096).encode(
        chunk_values(rng, 2048, "<f4"))
    one = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=0, blocksize=8192).encode(
        chunk_values(rng, 8192, "uint8"))
    le = lambda n: int(n).to_bytes(4, "little", signed=True)  # noqa: E731
    f4 = {
        "as written": frame,
        "lz4 format version 2": _with(frame, 1, b"\x02"),
        "a future flag (0x08)": _with(frame, 2, bytes([frame[2] | 0x08])),
        "blocks larger than the chunk": _with(frame, 8, le(8192 + 4)),
        "blocks of 0 bytes": _with(frame, 8, le(0)),
        "a negative block start": _with(frame, 16, le(-4)),
        "a block start past the end": _with(frame, 20, le(len(frame))),
        "a stream size past the end": _with(frame, int.from_bytes(frame[16:20], "little"),
                                            le(len(frame))),
        "one block of the whole chunk": _with(frame, 8, le(8192)),  # streams mis-split
        "blocks of 2 KiB": _with(frame, 8, le(2048)),
    }
    u1 = {
        "one stream as written": one,
        "one stream, its block larger than the chunk": _with(one, 8, le(8192 + 1)),
        "one stream, its block past c-blosc's limit": _with(one, 8, le(2**31 - 1)),
    }
    return {**{k: (v, "<f4") for k, v in f4.items()}, **{k: (v, "uint8") for k, v in u1.items()}}


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("variant", list(_blosc_lz4_variants()))
def test_blosc_lz4_headers_are_refused_as_c_blosc_refuses_them(variant, placement):
    """Where the kernel reads blosc-LZ4 itself (placed in pieces, or streamed), a header
    c-blosc refuses is refused with c-blosc's error, and one it accepts decodes to its
    values: as numcodecs decodes it, and as the kernel's c-blosc does (placed whole)."""
    data, dtype = _blosc_lz4_variants()[variant]
    codec = numcodecs.Blosc(cname="lz4")
    want = reference(codec, data, 8192)
    shape = (8192 // np.dtype(dtype).itemsize,)
    got = kernel_decode("blosc", data, shape, dtype, fill=7, placement=placement)
    direct = kernel_decode("blosc", data, shape, dtype)
    if want is None:
        assert isinstance(got, int) and got == direct, (got, direct)
    else:
        assert not isinstance(got, int) and got.tobytes() == want
    if "as written" in variant:
        assert want is not None

def test_blosc_chunk_past_2_gib_is_refused():
    """c-blosc 1.x sizes are 32-bit: a chunk of 3 GiB cannot be a blosc frame (nothing is
    written: the output stays untouched, as the scratch never is)."""
    data = numcodecs.Blosc().encode(np.zeros(1000, np.uint8))
    assert kernel_decode("blosc", data, (3 << 30,)) == SIZE


@pytest.mark.skipif(not os.environ.get("LSIO_BIG_TESTS"), reason="LSIO_BIG_TESTS=1: 5 GB, 1 min")
@pytest.mark.parametrize("name", ["zlib", "gzip"])
def test_zlib_chunk_past_4_gib(name):
    """A chunk past 4 GiB, more than one uInt of zlib: decoded whole, in steps."""
    n = (4 << 30) + 4099
    comp = zlib.compressobj(1, zlib.DEFLATED, 31 if name == "gzip" else 15)
    block = np.arange(1 << 24, dtype=np.uint8).tobytes()
    parts = [comp.compress(block) for _ in range(n >> 24)]
    parts += [comp.compress(block[: n % (1 << 24)]), comp.flush()]
    got = kernel_decode(name, b"".join(parts), (n,))
    assert not isinstance(got, int), got
    assert got[-1] == (n - 1) % 256 and got[(4 << 30) + 5] == 5 and got[12345] == 12345 % 256


def frames_without_content_size(values: np.ndarray) -> bytes:
    """A zstd frame that does not state its content size (numcodecs always writes it; other
    writers need not), made with the system's libzstd."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("zstd")
    if name is None:
        pytest.skip("no libzstd to write a frame without its content size")
    lib = ctypes.CDLL(name)
    lib.ZSTD_createCCtx.restype = ctypes.c_void_p
    lib.ZSTD_compress2.restype = ctypes.c_size_t
    lib.ZSTD_compress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                   ctypes.c_char_p, ctypes.c_size_t]
    lib.ZSTD_CCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.ZSTD_freeCCtx.argtypes = [ctypes.c_void_p]
    cctx = lib.ZSTD_createCCtx()
    lib.ZSTD_CCtx_setParameter(cctx, 200, 0)  # ZSTD_c_contentSizeFlag: off
    raw = values.tobytes()
    dest = ctypes.create_string_buffer(len(raw) + 1024)
    n = lib.ZSTD_compress2(cctx, dest, len(dest), raw, len(raw))
    lib.ZSTD_freeCCtx(cctx)
    return dest.raw[:n]


def test_zstd_frames_without_content_size_decode_as_a_stream():
    """numcodecs decodes a frame that states no content size as a stream (a streaming
    context: its window limit, every following frame); so does the kernel, damaged frames
    included."""
    rng = np.random.default_rng(11)
    values = chunk_values(rng, 3000, "<i4")
    frame = frames_without_content_size(values)
    assert frame[4] & 0xC0 == 0 and not frame[4] & 0x20  # no content size field
    variants = [frame, frame + frame, frame[:-5], frame + b"\0", frame + frame[:9]]
    variants += [damaged(frame, rng) for _ in range(200)]
    for i, data in enumerate(variants):
        want = reference(numcodecs.Zstd(), data, values.nbytes)
        got = kernel_decode("zstd", data, values.shape, "<i4")
        assert (None if isinstance(got, int) else got.tobytes()) == want, i
