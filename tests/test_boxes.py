"""read_boxes (the crops of a batch) against numpy slicing of zarr-python's reads."""

from __future__ import annotations

import os
import tempfile

import dask
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec
from zarr_cases import arrays, make_array

from dask_lsio.errors import ChunkDecodeError, LSIOError
from dask_lsio.io import get_engine
from dask_lsio.zarr.read import read_boxes
from dask_lsio.zarr.shard import IndexCache
from dask_lsio.zarr.spec import spec_from_array


@pytest.fixture
def partial_decode():
    """lsio.partial-decode on: blosc chunks a crop needs a part of are decoded in part."""
    with dask.config.set({"lsio.partial-decode": True}):
        yield


def expected_boxes(values: np.ndarray, starts: np.ndarray, shape, pad) -> np.ndarray:
    """The boxes cut from the whole array, ``pad`` outside it."""
    m = int(max(shape)) + int(np.abs(starts).max()) + 1  # room for any box on every side
    padded = np.pad(values, m, constant_values=pad)
    return np.stack([padded[tuple(slice(a + m, a + m + n) for a, n in zip(b, shape))]
                     for b in starts.tolist()])


@settings(max_examples=int(os.environ.get("LSIO_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=arrays().filter(lambda s: len(s["shape"]) > 0 and all(s["shape"])),
       seed=st.integers(0, 2**16))
def test_boxes_equal_slices_of_zarr_python_reads(spec, seed):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a")
        values = make_array(path, spec, seed)
        z = zarr.open_array(path, mode="r")
        ours = spec_from_array(path, z)
        rng = np.random.default_rng(seed)
        shape = tuple(int(rng.integers(1, n + 3)) for n in z.shape)
        starts = np.stack([rng.integers(-2, n, 12) for n in z.shape], axis=1)
        starts[::3] = starts[0]  # repeated boxes: the same chunks for several boxes
        pad = np.array(3).astype(z.dtype)[()]
        got = read_boxes(ours, starts, shape, pad=pad, threads=int(rng.integers(1, 3)))
        np.testing.assert_array_equal(got, expected_boxes(values, starts, shape, pad))
        assert got.dtype == values.dtype


def test_one_batch_each_chunk_decoded_once(tmp_path):
    values = np.random.default_rng(1).random((16, 64, 64)).astype("float32")
    z = zarr.create_array(tmp_path / "a", shape=values.shape, chunks=(1, 32, 32),
                          dtype="float32", compressors=BloscCodec(cname="lz4"))
    z[...] = values
    spec = spec_from_array(str(tmp_path / "a"), z)
    starts = np.array([[2, 10, 10], [2, 10, 10], [3, 20, 0], [15, 40, 40]])
    engine = get_engine()
    before = dict(engine.stats)
    got = read_boxes(spec, starts, (2, 24, 24), engine=engine)
    np.testing.assert_array_equal(got, expected_boxes(values, starts, (2, 24, 24), 0))
    assert engine.stats["batches"] == before["batches"] + 1
    # distinct chunks: boxes 0 and 1 share all 8, box 2 needs 4 (two of them box 0's),
    # box 3 one (its second step is outside the array)
    assert engine.stats["requests"] - before["requests"] == 8 + 2 + 1


def test_sharded_indexes_are_kept_between_calls(tmp_path):
    values = np.arange(8 * 32 * 32, dtype="int32").reshape(8, 32, 32)
    z = zarr.create_array(tmp_path / "s", shape=values.shape, chunks=(1, 8, 8),
                          shards=(4, 16, 16), dtype="int32")
    z[...] = values
    z[4:8, 16:32, 0:16] = 0  # an all-fill shard: absent (zarr deletes it)
    values[4:8, 16:32, 0:16] = 0
    spec = spec_from_array(str(tmp_path / "s"), z)
    cache = IndexCache(spec)
    engine = get_engine()
    starts = np.array([[1, 5, 5], [5, 20, 2], [3, 14, 14]])
    got = read_boxes(spec, starts, (3, 9, 9), indexes=cache, engine=engine)
    np.testing.assert_array_equal(got, expected_boxes(values, starts, (3, 9, 9), 0))
    before = engine.stats["batches"]
    read_boxes(spec, starts, (3, 9, 9), indexes=cache, engine=engine)
    assert engine.stats["batches"] == before + 1  # the indexes came from the cache


def test_corrupt_chunk_is_named(tmp_path):
    z = zarr.create_array(tmp_path / "a", shape=(4, 8), chunks=(2, 4), dtype="int16",
                          compressors=BloscCodec(cname="lz4"))
    z[...] = 1
    (tmp_path / "a" / "c" / "1" / "0").write_bytes(b"garbage, not blosc")
    spec = spec_from_array(str(tmp_path / "a"), z)
    with pytest.raises(ChunkDecodeError, match="c/1/0"):
        read_boxes(spec, [[0, 0], [2, 1]], (2, 3))


def test_several_arrays_in_one_batch(tmp_path):
    """RandomCrops' multi-source read: two arrays, two codecs, one engine batch; a missing
    chunk of the second is fill_value, a corrupt one names its path."""
    from zarr.codecs import ZstdCodec

    from dask_lsio.zarr.read import BoxRead, read_boxes_many

    rng = np.random.default_rng(2)
    a_vals = rng.random((6, 32, 32)).astype("float32")
    b_vals = rng.integers(0, 1000, (3, 16, 16)).astype("int16")
    a = zarr.create_array(tmp_path / "a", shape=a_vals.shape, chunks=(1, 8, 8), dtype="float32",
                          compressors=BloscCodec(cname="lz4"))
    b = zarr.create_array(tmp_path / "b", shape=b_vals.shape, chunks=(1, 4, 4), dtype="int16",
                          compressors=ZstdCodec(), fill_value=-7)
    a[...], b[...] = a_vals, b_vals
    (tmp_path / "b" / "c" / "0" / "0" / "0").unlink()
    b_vals[0, :4, :4] = -7
    specs = spec_from_array(str(tmp_path / "a"), a), spec_from_array(str(tmp_path / "b"), b)
    starts_a, starts_b = np.array([[0, 3, 5], [2, 20, 1]]), np.array([[0, 0, 0], [1, 9, 9]])
    engine = get_engine()
    before = engine.stats["batches"]
    got_a, got_b = read_boxes_many([BoxRead(specs[0], starts_a, (3, 10, 10)),
                                    BoxRead(specs[1], starts_b, (2, 6, 6))], engine)
    assert engine.stats["batches"] == before + 1
    np.testing.assert_array_equal(got_a, expected_boxes(a_vals, starts_a, (3, 10, 10), 0))
    np.testing.assert_array_equal(got_b, expected_boxes(b_vals, starts_b, (2, 6, 6), -7))
    (tmp_path / "b" / "c" / "1" / "2" / "2").write_bytes(b"not zstd")
    with pytest.raises(ChunkDecodeError, match="b/c/1/2/2"):
        read_boxes_many([BoxRead(specs[0], starts_a, (3, 10, 10)),
                         BoxRead(specs[1], starts_b, (2, 6, 6))], engine)


def _blosc_values(shape, dtype, rng) -> np.ndarray:
    """Repeating values, one in ten a little off: every layout compresses."""
    ramp = np.arange(int(np.prod(shape))).reshape(shape) % 251
    noise = rng.integers(0, 4, shape) * (rng.random(shape) < 0.1)
    return (ramp * 3 + noise).astype(dtype)


@pytest.mark.parametrize("dtype,typesize", [
    ("uint8", None), ("int16", None), ("float32", None), ("float64", None),
    ("complex128", None), ("float32", 2), ("int32", 8), ("random float32", None)])
@pytest.mark.parametrize("shuffle", ["shuffle", "noshuffle", "bitshuffle"])
@pytest.mark.parametrize("blocksize", [0, 256, 4096])
def test_parts_of_blosc_chunks_equal_zarr_python(tmp_path, dtype, typesize, shuffle, blocksize,
                                                partial_decode):
    """Crops that need part of a chunk: the kernel decodes the LZ4 stream prefixes they need
    and unshuffles only what it places (split and unsplit blocks, streams stored raw (random
    low bytes), several blocks and a shorter last one, typesize not the item size);
    bitshuffle and chunks stored raw go through c-blosc."""
    rng = np.random.default_rng(7)
    noisy = dtype == "random float32"
    if noisy:
        dtype, values = "float32", rng.random((5, 45, 38)).astype("float32")
    else:
        values = _blosc_values((5, 45, 38), dtype, rng)
    codec = BloscCodec(cname="lz4", clevel=5, shuffle=shuffle, blocksize=blocksize,
                       typesize=typesize)
    z = zarr.create_array(tmp_path / "a", shape=values.shape, chunks=(2, 37, 29), dtype=dtype,
                          compressors=codec)
    z[...] = values
    flags = (tmp_path / "a" / "c" / "0" / "0" / "0").read_bytes()[2]
    assert flags >> 5 == 1  # LZ4 (stored raw, flag 0x2, where it does not compress)
    assert shuffle != "shuffle" or noisy or not flags & 0x2
    spec = spec_from_array(str(tmp_path / "a"), z)
    starts = np.stack([rng.integers(-1, n, 40) for n in values.shape], axis=1)
    pad = np.array(9).astype(dtype)[()]
    for shape in [(1, 5, 7), (2, 20, 3), (3, 40, 30)]:
        got = read_boxes(spec, starts, shape, pad=pad)  # chunks several boxes share
        np.testing.assert_array_equal(got, expected_boxes(values, starts, shape, 9))
        for one in starts[:12]:  # chunks one box needs: decoded in part
            got = read_boxes(spec, one[None], shape, pad=pad)
            np.testing.assert_array_equal(got, expected_boxes(values, one[None], shape, 9))


def test_parts_of_unsplit_blosc_lz4_chunks(tmp_path, partial_decode):
    """c-blosc can write LZ4 blocks unsplit (one shuffled stream a block: BLOSC_SPLITMODE
    NEVER); the kernel then decodes each block up to its last needed byte plane."""
    import ctypes
    import ctypes.util

    lib = ctypes.util.find_library("blosc")
    if lib is None:
        pytest.skip("libblosc not found to write unsplit chunks")
    blosc = ctypes.CDLL(lib)
    blosc.blosc_set_splitmode(2)  # BLOSC_NEVER_SPLIT (process-wide in this c-blosc)
    values = _blosc_values((4, 64, 64), "float32", np.random.default_rng(3))
    z = zarr.create_array(tmp_path / "a", shape=values.shape, chunks=(1, 64, 64),
                          dtype="float32", compressors=BloscCodec(cname="lz4", blocksize=8192))
    z[...] = values
    try:
        for t in range(4):  # recompress each chunk unsplit, with the system's c-blosc
            raw = np.ascontiguousarray(values[t])
            dest = ctypes.create_string_buffer(raw.nbytes + 16)
            n = blosc.blosc_compress(5, 1, 4, ctypes.c_size_t(raw.nbytes),
                                     raw.ctypes.data_as(ctypes.c_void_p), dest,
                                     ctypes.c_size_t(raw.nbytes + 16))
            assert n > 0 and dest.raw[2] & 0x10  # the no-split flag
            (tmp_path / "a" / "c" / str(t) / "0" / "0").write_bytes(dest.raw[:n])
    finally:
        blosc.blosc_set_splitmode(4)  # c-blosc's default, BLOSC_FORWARD_COMPAT_SPLIT
    spec = spec_from_array(str(tmp_path / "a"), z)
    starts = np.array([[0, 0, 0], [1, 30, 5], [2, 50, 60], [3, 63, 0]])
    got = read_boxes(spec, starts, (1, 9, 9))
    np.testing.assert_array_equal(got, expected_boxes(values, starts, (1, 9, 9), 0))


@pytest.mark.parametrize("damage", ["truncated", "stream size"])
def test_damaged_blosc_lz4_chunk_read_in_part_is_named(tmp_path, damage, partial_decode):
    values = _blosc_values((1, 64, 64), "float32", np.random.default_rng(4))
    z = zarr.create_array(tmp_path / "a", shape=values.shape, chunks=(1, 64, 64),
                          dtype="float32", compressors=BloscCodec(cname="lz4"))
    z[...] = values
    chunk = tmp_path / "a" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    if damage == "truncated":
        del data[-100:]
    else:  # the first stream's compressed size runs past the chunk
        first = int.from_bytes(data[16:20], "little")
        data[first:first + 4] = (len(data)).to_bytes(4, "little")
    chunk.write_bytes(bytes(data))
    spec = spec_from_array(str(tmp_path / "a"), z)
    with pytest.raises(ChunkDecodeError, match="c/0/0/0"):
        read_boxes(spec, [[0, 0, 0]], (1, 4, 4))  # the first rows only


def _plane_sizes(frame: bytes) -> list[int]:
    """The compressed size of each stream of a blosc frame of one split block."""
    at, sizes = int.from_bytes(frame[16:20], "little"), []
    for _ in range(frame[3]):  # typesize streams
        sizes.append(int.from_bytes(frame[at:at + 4], "little", signed=True))
        at += 4 + sizes[-1]
    return sizes


def test_decoded_bytes_are_counted_and_parts_decode_less(tmp_path):
    """``lsio-decoded``: a whole read decodes every chunk; so does a crop with
    lsio.partial-decode off; on (the default), a crop decodes each byte plane up to the
    last element it needs (planes of long runs whole, unless that is within their first
    third): its first rows a short prefix, its last rows and columns the whole chunk."""
    values = _blosc_values((2, 128, 128), "float32", np.random.default_rng(5))
    z = zarr.create_array(tmp_path / "a", shape=values.shape, chunks=(1, 128, 128),
                          dtype="float32", compressors=BloscCodec(cname="lz4"))
    z[...] = values
    spec, engine = spec_from_array(str(tmp_path / "a"), z), get_engine()

    def decoded(read) -> float:
        before = engine.totals.snapshot().get(("lsio-decoded", "bytes"), 0)
        read()
        return engine.totals.snapshot()[("lsio-decoded", "bytes")] - before

    from dask_lsio.zarr.read import read_region

    assert decoded(lambda: read_region(spec, (slice(0, 2), slice(0, 128), slice(0, 128)),
                                       engine)) == values.nbytes
    with dask.config.set({"lsio.partial-decode": False}):  # whole: damage anywhere is found
        assert decoded(lambda: read_boxes(spec, [[0, 0, 0]], (1, 16, 16), engine=engine)) == \
            128 * 128 * 4
    # a region's chunks are decoded whole whatever the setting
    assert decoded(lambda: read_region(spec, (slice(0, 1), slice(0, 16), slice(0, 16)),
                                       engine)) == 128 * 128 * 4
    with dask.config.set({"lsio.partial-decode": True}):
        # rows 0-15, columns 0-15: elements up to 15 * 128 + 16 of each of the 4 byte planes
        assert decoded(lambda: read_boxes(spec, [[0, 0, 0]], (1, 16, 16), engine=engine)) == \
            4 * (15 * 128 + 16)
        # rows 100-115, columns 0-15: up to 115 * 128 + 16 (90% of the plane), in the
        # planes LZ4 compressed less than 16x; the planes of long runs (here the first and
        # the last, stored in 75 and 365 bytes) are decoded whole past a third
        sizes = _plane_sizes((tmp_path / "a" / "c" / "1" / "0" / "0").read_bytes())
        runs = sum(1 for n in sizes if n * 16 < 128 * 128)
        assert 0 < runs < 4
        assert decoded(lambda: read_boxes(spec, [[1, 100, 0]], (1, 16, 16), engine=engine)) \
            == (4 - runs) * (115 * 128 + 16) + runs * 128 * 128
        assert decoded(lambda: read_boxes(spec, [[1, 112, 112]], (1, 16, 16), engine=engine)) \
            == 128 * 128 * 4


def test_sharded_chunk_several_boxes_need_is_decoded_once(tmp_path):
    values = np.arange(4 * 32 * 32, dtype="int32").reshape(4, 32, 32)
    z = zarr.create_array(tmp_path / "s", shape=values.shape, chunks=(1, 8, 8),
                          shards=(2, 16, 16), dtype="int32")  # zstd inner chunks
    z[...] = values
    spec, engine = spec_from_array(str(tmp_path / "s"), z), get_engine()
    starts = np.array([[1, 9, 9], [1, 9, 9], [1, 10, 12]])  # all in inner chunk (1, 1, 1)
    before = engine.totals.snapshot().get(("lsio-decoded", "bytes"), 0)
    got = read_boxes(spec, starts, (1, 4, 4), engine=engine)
    np.testing.assert_array_equal(got, expected_boxes(values, starts, (1, 4, 4), 0))
    assert engine.totals.snapshot()[("lsio-decoded", "bytes")] - before == 8 * 8 * 4


# -- dask_lsio.read_boxes: the public batched read ---------------------------------------------
def test_public_read_boxes_by_path_array_and_dims(tmp_path):
    """dask_lsio.read_boxes equals numpy slicing of zarr-python's read: a path, a
    zarr.Array, shards, boxes reaching outside (the fill value, or ``pad``), shapes by
    dimension name; one engine batch per call."""
    import dask_lsio

    values = np.random.default_rng(5).random((12, 40, 48)).astype("float32")
    z = zarr.create_array(tmp_path / "s", shape=values.shape, chunks=(1, 8, 8),
                          shards=(4, 16, 16), dtype="float32", fill_value=-1.0,
                          compressors=BloscCodec(cname="lz4"), dimension_names=("t", "y", "x"))
    z[...] = values
    rng = np.random.default_rng(6)
    starts = np.stack([rng.integers(-1, n, 200) for n in values.shape], axis=1)
    want = expected_boxes(zarr.open_array(tmp_path / "s")[...], starts, (1, 9, 10), -1.0)
    engine = get_engine()
    for source in (str(tmp_path / "s"), zarr.open_array(tmp_path / "s", mode="r")):
        before = engine.stats["batches"]
        got = dask_lsio.read_boxes(source, starts, (1, 9, 10))
        assert engine.stats["batches"] - before <= 2  # (the shard indexes, then the data)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32 and got.shape == (200, 1, 9, 10)
    whole_t = starts * [0, 1, 1]  # the axis not named is whole: its boxes start at 0
    got = dask_lsio.read_boxes(z, whole_t.tolist(), {"y": 9, "x": 10}, pad=7.0)
    np.testing.assert_array_equal(got, expected_boxes(values, whole_t, (12, 9, 10), 7.0))
    assert dask_lsio.read_boxes(z, np.zeros((0, 3), int), (1, 2, 2)).shape == (0, 1, 2, 2)
    # one box per call (the array resolved once); then the array grows: its new shape holds
    for s in starts[:20]:
        np.testing.assert_array_equal(dask_lsio.read_boxes(z, [s], (1, 9, 10)),
                                      want[[np.flatnonzero((starts == s).all(1))[0]]])
    z.resize((14, 40, 48))
    z[12:] = 5.0
    got = dask_lsio.read_boxes(z, [[12, 0, 0], [13, 35, 40]], (2, 9, 10))
    np.testing.assert_array_equal(got[0], np.concatenate([np.full((1, 9, 10), 5.0, "f4"),
                                                          np.full((1, 9, 10), 5.0, "f4")]))
    assert (got[1][:, 5:, 8:] == -1.0).all() and (got[1][0, :5, :8] == 5.0).all()


def test_public_read_boxes_refuses_bad_starts_and_several_arrays(tmp_path):
    import dask_lsio

    z = zarr.create_array(tmp_path / "a", shape=(4, 8), chunks=(2, 4), dtype="int16")
    z[...] = 1
    for bad in ([0, 1], [[0, 1, 2]], [[0.5, 1.0]]):
        with pytest.raises(ValueError, match="starts must be integers of shape"):
            dask_lsio.read_boxes(z, bad, (1, 2))
    with pytest.raises(ValueError, match="axes"):
        dask_lsio.read_boxes(z, [[0, 0]], (1, 2, 3))
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset({"a": (("y", "x"), np.ones((4, 8))), "b": (("y", "x"), np.zeros((4, 8)))})
    with pytest.raises(LSIOError, match="not a dask array; open it with dask_lsio.open_zarr"):
        dask_lsio.read_boxes(ds["a"], [[0, 0]], (1, 2))  # in memory: nothing to read
    ds.to_zarr(tmp_path / "g", zarr_format=3, consolidated=False)
    ds = dask_lsio.open_zarr(tmp_path / "g", consolidated=False)
    with pytest.raises(ValueError, match="reads one array"):
        dask_lsio.read_boxes(ds, [[0, 0]], (1, 2))
    got = dask_lsio.read_boxes(ds["b"], [[1, 6]], (2, 3))
    np.testing.assert_array_equal(got, np.pad(np.zeros((2, 2)), ((0, 0), (0, 1)),
                                              constant_values=np.nan)[None])

