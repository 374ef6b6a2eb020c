"""read_boxes (the crops of a batch) against numpy slicing of zarr-python's reads."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec
from zarr_cases import arrays, make_array

from dask_lsio.errors import ChunkDecodeError
from dask_lsio.io import get_engine
from dask_lsio.zarr.boxes import IndexCache, read_boxes
from dask_lsio.zarr.spec import spec_from_array


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

    from dask_lsio.zarr.boxes import read_boxes_many

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
    got_a, got_b = read_boxes_many([(specs[0], starts_a, (3, 10, 10), None, None),
                                    (specs[1], starts_b, (2, 6, 6), None, None)], engine)
    assert engine.stats["batches"] == before + 1
    np.testing.assert_array_equal(got_a, expected_boxes(a_vals, starts_a, (3, 10, 10), 0))
    np.testing.assert_array_equal(got_b, expected_boxes(b_vals, starts_b, (2, 6, 6), -7))
    (tmp_path / "b" / "c" / "1" / "2" / "2").write_bytes(b"not zstd")
    with pytest.raises(ChunkDecodeError, match="b/c/1/2/2"):
        read_boxes_many([(specs[0], starts_a, (3, 10, 10), None, None),
                         (specs[1], starts_b, (2, 6, 6), None, None)], engine)
