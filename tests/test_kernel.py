"""The decode kernel (C, inside io_uring batches) against zarr-python and against the numcodecs
path: same values for every chain it takes, the same errors for bad chunks."""

from __future__ import annotations

import os

import dask
import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

from conftest import make_engine
from dask_lsio.errors import ChunkDecodeError
from dask_lsio.io import IoUringEngine
from dask_lsio.zarr import _kernel
from dask_lsio.zarr.read import read_region
from dask_lsio.zarr.spec import open_array, spec_from_array

pytestmark = pytest.mark.skipif(_kernel.lib is None, reason="built without the decode kernel")

V3_CODECS = {
    "none": None,
    "blosc": BloscCodec(cname="lz4", shuffle="shuffle"),
    "zstd": ZstdCodec(level=3),
    "gzip": GzipCodec(),
}


def make(path, data, chunks, codec="blosc", shards=None, index_location="end", fmt=3,
         holes=0.0, seed=0):
    """An array written by zarr-python, some chunks left unwritten; returns zarr's values."""
    kwargs = dict(shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=fmt,
                  fill_value=7)
    if fmt == 2:
        kwargs["compressors"] = {"none": None, "blosc": numcodecs.Blosc(),
                                 "zstd": numcodecs.Zstd(), "zlib": numcodecs.Zlib()}[codec]
    else:
        kwargs["compressors"] = V3_CODECS[codec]
        if shards:
            kwargs["shards"] = {"shape": shards, "index_location": index_location}
    z = zarr.create_array(str(path), **kwargs)
    keep = np.random.default_rng(seed).random(data.shape) >= holes
    z[...] = np.where(keep, data, z[...])
    return z[...]


def spec_of(path):
    return spec_from_array(*open_array(str(path)))


def test_chains_the_kernel_takes(tmp_path):
    data = np.arange(24, dtype="<f4").reshape(4, 6)
    for codec in ["none", "blosc", "zstd", "gzip"]:
        make(tmp_path / codec, data, (2, 3), codec)
        assert _kernel.kernel_codec(spec_of(tmp_path / codec).codec) is not None, codec
    zarr.create_array(str(tmp_path / "crc"), shape=(4,), chunks=(2,), dtype="i4",
                      compressors=Crc32cCodec())
    zarr.create_array(str(tmp_path / "big"), shape=(4,), chunks=(2,), dtype=">i4",
                      zarr_format=2)
    for name in ["crc", "big"]:  # these go through numcodecs
        assert _kernel.kernel_codec(spec_of(tmp_path / name).codec) is None


@pytest.mark.parametrize("codec", ["none", "blosc", "zstd", "gzip"])
@pytest.mark.parametrize("layout", ["chunks", "shards-end", "shards-start", "v2"])
def test_regions_equal_zarr(tmp_path, codec, layout):
    data = np.random.default_rng(1).normal(size=(9, 20, 13)).astype("float32")
    chunks, shards = (2, 5, 4), None
    if layout.startswith("shards"):
        shards = (4, 10, 8)
    fmt = 2 if layout == "v2" else 3
    codec = "zlib" if fmt == 2 and codec == "gzip" else codec
    expected = make(tmp_path / "a", data, chunks, codec, shards, layout.split("-")[-1], fmt,
                    holes=0.3)
    spec = spec_of(tmp_path / "a")
    engine = make_engine("io_uring")
    try:
        for region in [(slice(0, 9), slice(0, 20), slice(0, 13)),
                       (slice(1, 8), slice(3, 17), slice(2, 11)),
                       (slice(4, 5), slice(5, 10), slice(12, 13))]:
            got = read_region(spec, region, engine)
            np.testing.assert_array_equal(got, expected[region], err_msg=str(region))
        assert engine.stats["requests"] > 0
    finally:
        engine.close()


@settings(max_examples=int(os.environ.get("LSIO_HYPOTHESIS_EXAMPLES", 60)) // 2,
          deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    data=st.data(),
    dtype=st.sampled_from(["bool", "uint8", "int16", "float32", "float64", "complex64"]),
    codec=st.sampled_from(["none", "blosc", "zstd", "gzip"]),
    sharded=st.booleans(),
    order=st.sampled_from(["C", "F"]),
)
def test_kernel_equals_numcodecs_path(tmp_path_factory, shape, data, dtype, codec, sharded,
                                      order):
    """Random arrays and regions: the kernel (io_uring) and numcodecs (threads) agree with
    zarr-python, whatever the region's shape (out strides, partial chunks)."""
    chunks = tuple(data.draw(st.integers(1, n)) for n in shape)
    shards = tuple(c * data.draw(st.integers(1, 3)) for c in chunks) if sharded else None
    values = (np.random.default_rng(0).random(shape) * 50).astype(dtype)
    path = tmp_path_factory.mktemp("k") / "a"
    expected = make(path, values, chunks, codec, shards, holes=data.draw(st.floats(0, 1)))
    region = []
    for n in shape:
        a = data.draw(st.integers(0, n - 1))
        region.append(slice(a, data.draw(st.integers(a + 1, n))))
    region = tuple(region)
    spec = spec_of(path)
    for kind in ["io_uring", "threads"]:
        engine = make_engine(kind, queue_depth=4) if kind == "io_uring" else make_engine(kind)
        try:
            got = read_region(spec, region, engine)
        finally:
            engine.close()
        np.testing.assert_array_equal(got, expected[region], err_msg=kind)


@pytest.mark.parametrize("options", [
    {"queue_depth": 2},           # many reads wait for a slot and a lent buffer
    {"direct_io": True},          # O_DIRECT reads, whole objects and ranges
    {"submit_threads": 2},        # with decode-threads 2: the block splits over two rings
])
def test_engine_settings(tmp_path, options):
    data = np.random.default_rng(2).normal(size=(64, 40, 40)).astype("float32")
    expected = make(tmp_path / "a", data, (1, 20, 20), "blosc", holes=0.1)
    sharded = make(tmp_path / "s", data, (1, 20, 20), "zstd", shards=(8, 40, 40), holes=0.1)
    engine = IoUringEngine(**options)
    try:
        with dask.config.set({"lsio.decode-threads": 2}):
            got = read_region(spec_of(tmp_path / "a"), (slice(0, 64), slice(0, 40), slice(0, 40)),
                              engine)
            got_s = read_region(spec_of(tmp_path / "s"),
                                (slice(3, 60), slice(0, 40), slice(5, 40)), engine)
    finally:
        engine.close()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got_s, sharded[3:60, :, 5:40])


def test_outputs_do_not_share_memory(tmp_path):
    """Blocks come from recycled memory: a block still alive is never handed out again."""
    data = np.random.default_rng(4).normal(size=(8, 256, 256)).astype("float32")
    make(tmp_path / "a", data, (1, 128, 128))
    spec = spec_of(tmp_path / "a")
    engine = make_engine("io_uring")
    try:
        first = read_region(spec, (slice(0, 4), slice(0, 256), slice(0, 256)), engine)
        for _ in range(3):
            later = read_region(spec, (slice(4, 8), slice(0, 256), slice(0, 256)), engine)
            assert not np.shares_memory(first, later)
            np.testing.assert_array_equal(later, data[4:])
            del later  # its memory goes back to the pool for the next read
        np.testing.assert_array_equal(first, data[:4])
    finally:
        engine.close()


def overwrite(path, raw):
    with open(path, "wb") as f:
        f.write(raw)


@pytest.mark.parametrize("codec", ["none", "blosc", "zstd", "gzip"])
@pytest.mark.parametrize("how", ["truncate", "garbage", "empty", "longer", "other-size"])
def test_bad_chunks_raise_naming_key_and_codec(tmp_path, codec, how):
    data = np.arange(4000, dtype="float64").reshape(40, 100)
    make(tmp_path / "a", data, (10, 100), codec)
    make(tmp_path / "b", data[:5], (5, 100), codec)  # a valid chunk of another size
    chunk = tmp_path / "a" / "c" / "2" / "0"
    raw = chunk.read_bytes()
    overwrite(chunk, {
        "truncate": raw[: len(raw) // 2],
        "garbage": b"\x07" * len(raw),
        "empty": b"",
        "longer": raw + b"\x00" * 100_000,  # larger than the read buffer: it grows
        "other-size": (tmp_path / "b" / "c" / "0" / "0").read_bytes(),
    }[how])
    spec = spec_of(tmp_path / "a")
    engine = make_engine("io_uring")
    try:
        if how == "garbage" and codec == "none":  # raw values of the right size: just data
            got = read_region(spec, (slice(0, 40), slice(0, 100)), engine)
            np.testing.assert_array_equal(got, zarr.open_array(str(tmp_path / "a"))[...])
            return
        if how == "longer" and codec in ("blosc", "zstd", "gzip"):
            # trailing bytes after a complete frame: the codecs' own rules decide; the
            # values must still be right or the chunk reported
            try:
                got = read_region(spec, (slice(0, 40), slice(0, 100)), engine)
            except ChunkDecodeError as e:
                assert "c/2/0" in str(e)
            else:
                np.testing.assert_array_equal(got, data)
            return
        with pytest.raises(ChunkDecodeError, match=rf"c/2/0.*{'bytes' if codec == 'none' else codec}"):
            read_region(spec, (slice(0, 40), slice(0, 100)), engine)
        np.testing.assert_array_equal(read_region(spec, (slice(0, 20), slice(0, 100)), engine),
                                      data[:20])  # the rest still reads
    finally:
        engine.close()


def test_truncated_shard_names_the_shard_and_entry(tmp_path):
    """Index entries are checked against the shard's size before anything is read."""
    data = np.random.default_rng(5).normal(size=(8, 64)).astype("float32")
    make(tmp_path / "a", data, (1, 64), "zstd", shards=(8, 64), index_location="start")
    shard = tmp_path / "a" / "c" / "0" / "0"
    raw = shard.read_bytes()
    overwrite(shard, raw[: len(raw) - 100])
    engine = make_engine("io_uring")
    try:
        with pytest.raises(ChunkDecodeError, match=r"c/0/0'.*sharding_indexed index.*entry "
                                                   r"\(7, 0\).*not within"):
            read_region(spec_of(tmp_path / "a"), (slice(0, 8), slice(0, 64)), engine)
    finally:
        engine.close()


def test_without_the_kernel_numcodecs_decodes(tmp_path):
    """A build without the codec libraries reads the same values, and says why."""
    import subprocess
    import sys

    data = np.random.default_rng(6).normal(size=(6, 30)).astype("float32")
    make(tmp_path / "a", data, (2, 7), "zstd", holes=0.2)
    path = str(tmp_path / "a")
    code = (
        'import sys; sys.modules["dask_lsio.zarr._kernel_ext"] = None\n'
        "import numpy as np, zarr, dask_lsio\n"
        "from dask_lsio.__main__ import main\n"
        "main(['info'])\n"
        f"got = dask_lsio.from_zarr({path!r}).compute()\n"
        f"np.testing.assert_array_equal(got, zarr.open_array({path!r})[...])\n"
        "print('values ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "decode: numcodecs, several times slower" in out.stdout
    assert "values ok" in out.stdout
    # said once, loudly, on first use (the build record here says built: so it cannot load)
    assert out.stderr.count("C decode kernel was built but cannot be loaded") == 1


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_gather_equals_numpy_copy(data):
    """The kernel's strided copy (encoders' input) gives numpy's values for any view:
    steps, negative steps, length-1 and empty axes, every item size."""
    ndim = data.draw(st.integers(0, 4))
    dtype = data.draw(st.sampled_from(["u1", "<i2", "<f4", "<f8", "<c16", "V3"]))
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    base = np.frombuffer(np.random.default_rng(0).bytes(int(np.prod(shape)) *
                                                         np.dtype(dtype).itemsize),
                         dtype).reshape(shape)
    view = base[tuple(slice(data.draw(st.integers(0, n - 1)), None,
                            data.draw(st.sampled_from([1, 1, 2, 3, -1])))
                      for n in shape)]
    out = np.empty(view.shape, view.dtype)
    assert _kernel.gather(view, out)
    assert out.tobytes() == np.ascontiguousarray(view).tobytes()


def test_gather_refuses_what_does_not_suit_it():
    a = np.arange(24, dtype="f4").reshape(4, 6)
    assert not _kernel.gather(a, np.empty((6, 4), "f4"))  # another shape
    assert not _kernel.gather(a, np.empty((4, 6), "f8"))  # another dtype
    assert not _kernel.gather(a, np.empty((6, 4), "f4").T)  # not C order
    assert _kernel.gather(a[:, :0], np.empty((4, 0), "f4"))  # nothing to copy


def test_encode_of_views_equals_encode_of_copies():
    """Encoding stages strided chunks in a reused buffer: each output is its own chunk's
    (nothing of an earlier chunk, no output sharing the buffer)."""
    from dask_lsio.zarr.codecs import v3_chain

    block = np.random.default_rng(3).normal(size=(8, 32, 32)).astype("f4")
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}},
              {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5,
                                                  "shuffle": "shuffle", "typesize": 4,
                                                  "blocksize": 0}}]
    chain = v3_chain(codecs, (8, 8, 8), np.dtype("f4"))
    outs = [chain.encode(block[:, i:i + 8, j:j + 8])
            for i in range(0, 32, 8) for j in range(0, 32, 8)]
    want = [chain.encode(np.ascontiguousarray(block[:, i:i + 8, j:j + 8]))
            for i in range(0, 32, 8) for j in range(0, 32, 8)]
    assert [bytes(o) for o in outs] == [bytes(w) for w in want]
    np.testing.assert_array_equal(chain.decode(outs[5], "c"), block[:, 8:16, 8:16])


@pytest.mark.parametrize("order", [None, [2, 0, 1]])
def test_encode_without_codecs_of_views(order):
    """A chain that stores the values as they are: a strided chunk is gathered into an
    array of its own (each output its own chunk's bytes, in the stored order)."""
    from dask_lsio.zarr.codecs import v3_chain

    block = np.random.default_rng(4).normal(size=(8, 32, 32)).astype("f4")
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if order:
        codecs.insert(0, {"name": "transpose", "configuration": {"order": order}})
    chain = v3_chain(codecs, (8, 8, 8), np.dtype("f4"))
    views = [block[:, i:i + 8, j:j + 8] for i in range(0, 32, 8) for j in range(0, 32, 8)]
    outs = [chain.encode(v) for v in views]
    for out, view in zip(outs, views):
        stored = view if order is None else view.transpose(order)
        assert bytes(out) == np.ascontiguousarray(stored).tobytes()
        np.testing.assert_array_equal(chain.decode(out, "c"), view)


@pytest.mark.parametrize("dtype", ["u1", "<i2", "<f4", "<f8", "V3"])
@pytest.mark.parametrize("cname", ["lz4", "lz4hc", "blosclz", "zstd", "zlib"])
def test_blosc_encode_equals_numcodecs(dtype, cname):
    """The kernel's c-blosc encodes as numcodecs' Blosc does, byte for byte (every shuffle,
    AUTOSHUFFLE resolved by the item size as numcodecs does), and decodes back. (Byte for
    byte where the kernel is built from the sources numcodecs is built from, the default;
    a kernel against the system's c-blosc may compress differently, validly.)"""
    from dask_lsio._build_info import BUILD_INFO

    same_sources = BUILD_INFO["extensions"]["kernel"]["source"] == "bundled"
    rng = np.random.default_rng(1)
    arr = (np.frombuffer(rng.bytes(3000 * 7), "V3") if dtype == "V3"
           else (rng.normal(size=(70, 30)) * 50).astype(dtype))
    for shuffle in (-1, 0, 1, 2):
        for blocksize in (0, 4096):
            codec = numcodecs.Blosc(cname, 5, shuffle, blocksize)
            got = _kernel.encode_blosc(arr, codec)
            assert got is not None
            assert bytes(got) == codec.encode(arr) or not same_sources
            assert bytes(codec.decode(bytes(got))) == arr.tobytes()


def test_blosc_encode_refuses_what_c_blosc_refuses():
    """What c-blosc would refuse goes to numcodecs (None here), never a wrong frame."""
    arr = np.arange(100, dtype="f4")
    assert _kernel.encode_blosc(arr, numcodecs.Blosc("snappy", 5, 1)) is None  # not built
    assert _kernel.encode_blosc(arr[::2], numcodecs.Blosc("lz4", 5, 1)) is None  # strided
    empty = _kernel.encode_blosc(arr[:0], numcodecs.Blosc("lz4", 5, 1))
    assert bytes(empty) == numcodecs.Blosc("lz4", 5, 1).encode(arr[:0])


def test_blosc_units_equal_unit_by_unit():
    """Many units of a strided block in one call: each unit's bytes are the one-unit
    encoding of that unit; units of fill_value only (bit for bit: -0.0 is data where the
    fill is 0.0) are skipped with size 0; a given buffer large enough is used."""
    rng = np.random.default_rng(3)
    block = rng.normal(size=(9, 12, 40)).astype("f4")[:, :, 2:38].transpose(0, 2, 1)  # strided
    block[0:3, 0:6, 0:4] = 0
    block[3:6, 0:6, 0:4] = -0.0
    unit = (3, 6, 4)
    starts = np.array([(a, b, c) for a in (0, 3, 6) for b in (0, 6, 30) for c in (0, 4, 8)])
    codec = numcodecs.Blosc("lz4", 5, 1)
    arena = np.empty(len(starts) * (int(np.prod(unit)) * 4 + 16) + 100, np.uint8)
    got, sizes = _kernel.encode_blosc_units(block, starts, unit, codec,
                                            np.asarray(0, "f4"), arena)
    assert got is arena
    offset = 0
    for (a, b, c), size in zip(starts, sizes):
        part = np.ascontiguousarray(block[a:a + 3, b:b + 6, c:c + 4])
        if (a, b, c) == (0, 0, 0):
            assert size == 0  # all +0.0: fill
            continue
        assert bytes(got[offset:offset + size]) == bytes(_kernel.encode_blosc(part, codec))
        offset += size
    _, all_written = _kernel.encode_blosc_units(block, starts, unit, codec, None)
    assert (all_written > 0).all()  # no fill given: every unit encoded


def test_blosc_units_refuse_units_outside_and_settings_c_blosc_refuses():
    block = np.zeros((4, 4), "f4")
    codec = numcodecs.Blosc("lz4", 5, 1)
    with pytest.raises(ValueError, match="reach outside the block"):
        _kernel.encode_blosc_units(block, np.array([[2, 0]]), (3, 4), codec, None)
    with pytest.raises(ValueError, match="reach outside the block"):
        _kernel.encode_blosc_units(block, np.array([[-1, 0]]), (2, 2), codec, None)
    snappy = numcodecs.Blosc("snappy", 5, 1)  # not built: the caller encodes unit by unit
    assert _kernel.encode_blosc_units(block, np.array([[0, 0]]), (2, 2), snappy, None) is None
    assert _kernel.encode_blosc_units(block[:, ::-1], np.array([[0, 0]]), (2, 2), codec,
                                      None) is None  # negative strides
    arena, sizes = _kernel.encode_blosc_units(block, np.zeros((0, 2)), (2, 2), codec, None)
    assert sizes.size == 0


@pytest.mark.parametrize("seed", range(6))
def test_coalesce_in_c_equals_the_python_loop(seed):
    """The kernel's merge of a shard's byte ranges into reads equals the loop it replaced:
    shards changing, gaps under and over the limit, ranges that overlap (shards may point
    several chunks at the same bytes), a chunk larger than the read limit alone."""
    from dask_lsio.zarr.shard import coalesce_loop

    rng = np.random.default_rng(seed)
    n = 2000
    shards = np.sort(rng.integers(0, 7, n))
    lengths = rng.integers(0, 3000, n)
    lengths[::97] = 50_000  # past the limit on their own
    offsets = rng.integers(0, 200_000, n)
    offsets[1::13] = offsets[::13][:len(offsets[1::13])]  # shared bytes
    order = np.lexsort((offsets, shards))
    sh, off, end = shards[order], offsets[order], (offsets + lengths)[order]
    for gap, limit in [(0, 1 << 20), (1024, 16_384), (4096, 1), (-1, 1 << 30)]:
        got = _kernel.coalesce_sorted(sh, off, end, gap, limit)
        np.testing.assert_array_equal(got, coalesce_loop(sh, off, end, gap, limit))
    assert _kernel.coalesce_sorted(sh[:0], off[:0], end[:0], 0, 1).size == 0
