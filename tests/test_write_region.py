"""The format layer of to_zarr: what write_region stores, zarr-python reads back exactly."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, TransposeCodec, ZstdCodec

from conftest import make_engine
from dask_lsio.zarr.read import read_region
from dask_lsio.zarr.spec import open_array, spec_from_array
from dask_lsio.zarr.write import write_region

SHAPE, CHUNKS = (10, 13, 7), (4, 5, 7)
LAYOUTS = {
    "blosc": dict(compressors=BloscCodec(cname="lz4", shuffle="shuffle")),
    "zstd-crc32c": dict(compressors=[ZstdCodec(), Crc32cCodec()]),
    "big-endian-transpose": dict(compressors=None, serializer=BytesCodec(endian="big"),
                                 filters=[TransposeCodec(order=(2, 0, 1))]),
    "shards-end": dict(compressors=ZstdCodec(), shards=(8, 10, 7)),
    "shards-start": dict(compressors=None,
                         shards={"shape": (8, 10, 7), "index_location": "start"}),
    "v2-F-zlib": dict(zarr_format=2, order="F", compressors=numcodecs.Zlib()),
}


def create(path, layout, dtype="float32", fill=0):
    kwargs = dict(LAYOUTS[layout])
    z = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNKS, dtype=dtype, fill_value=fill,
                          **kwargs)
    return spec_from_array(*open_array(str(path))), z


def whole(spec):
    return tuple(slice(0, n) for n in spec.shape)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["io_uring", "threads"])
def test_zarr_reads_back_what_we_write(tmp_path, layout, kind):
    spec, z = create(tmp_path / "a", layout)
    values = np.random.default_rng(0).normal(size=SHAPE).astype("float32")
    values[:4, :5] = 0  # a unit of fill_value only: no object
    engine = make_engine(kind)
    try:
        write_region(spec, whole(spec), values, engine)
        np.testing.assert_array_equal(z[...], values)
        np.testing.assert_array_equal(read_region(spec, whole(spec), engine), values)
    finally:
        engine.close()


@pytest.mark.parametrize("layout", ["blosc", "shards-end"])
def test_aligned_region_keeps_the_rest(tmp_path, layout):
    spec, z = create(tmp_path / "a", layout)
    before = np.arange(np.prod(SHAPE), dtype="float32").reshape(SHAPE)
    z[...] = before
    g = spec.grid
    region = (slice(g[0], SHAPE[0]), slice(0, SHAPE[1]), slice(0, SHAPE[2]))  # to the edge
    new = -np.ones(tuple(s.stop - s.start for s in region), dtype="float32")
    write_region(spec, region, new)
    expected = before.copy()
    expected[region] = new
    np.testing.assert_array_equal(z[...], expected)


def test_misaligned_region_raises_and_writes_nothing(tmp_path):
    spec, z = create(tmp_path / "a", "shards-end")
    z[...] = 1
    region = (slice(2, 10), slice(0, 13), slice(0, 7))
    with pytest.raises(ValueError, match="axis 0 .* does not align with its shards of 8"):
        write_region(spec, region, np.zeros((8, 13, 7), "float32"))
    np.testing.assert_array_equal(z[...], 1)


@pytest.mark.parametrize("fill", [0, np.nan])
def test_all_fill_units_delete_stale_objects(tmp_path, fill):
    spec, z = create(tmp_path / "a", "blosc", fill=fill)
    z[...] = 5
    write_region(spec, whole(spec), np.full(SHAPE, fill, dtype="float32"))
    assert not [p for p in (tmp_path / "a").rglob("*") if p.is_file() and "c" in p.parts]
    np.testing.assert_array_equal(z[...], np.full(SHAPE, fill, dtype="float32"))
    write_region(spec, whole(spec), np.full(SHAPE, fill, dtype="float32"),
                 write_empty_chunks=True)
    assert sum(1 for p in (tmp_path / "a" / "c").rglob("*") if p.is_file()) == 3 * 3


def test_integer_and_bool_dtypes(tmp_path):
    for dtype in ["int16", "uint64", "bool", "complex64"]:
        spec, z = create(tmp_path / dtype, "zstd-crc32c", dtype=dtype)
        values = (np.random.default_rng(1).random(SHAPE) * 40).astype(dtype)
        write_region(spec, whole(spec), values)
        np.testing.assert_array_equal(z[...], values, err_msg=dtype)


@pytest.mark.parametrize("dtype,fill", [("float32", 0), ("float32", np.nan), ("int16", 3),
                                        ("uint8", 0), ("float64", 1.5)])
@pytest.mark.parametrize("write_empty", [False, True])
def test_units_encoded_in_one_call_equal_unit_by_unit(tmp_path, monkeypatch, dtype, fill,
                                                      write_empty):
    """A task's whole units go to the kernel in groups (one call each); edge units, and
    everything when more threads encode, go unit by unit: both store the same objects, byte
    for byte, and zarr-python reads back the values (fill_value units skipped alike, -0.0
    kept as data where the fill is 0)."""
    from dask_lsio.zarr import write as write_module

    monkeypatch.setattr(write_module, "ENCODE_GROUP_BYTES", 4 * 5 * 7 * 8 * 2)  # small groups
    values = (np.random.default_rng(2).normal(size=SHAPE) * 20).astype(dtype)
    values[:4, :5] = fill
    if dtype.startswith("float") and fill == 0:
        values[4:8, 5:10] = -0.0
    stored = {}
    for threads in (1, 2):
        spec, z = create(tmp_path / str(threads), "blosc", dtype=dtype, fill=fill)
        write_region(spec, whole(spec), values, write_empty_chunks=write_empty, threads=threads)
        np.testing.assert_array_equal(z[...], values)
        root = tmp_path / str(threads) / "c"
        stored[threads] = {p.relative_to(root): p.read_bytes()
                           for p in root.rglob("*") if p.is_file()}
    assert stored[1] == stored[2]
    assert len(stored[1]) == 3 * 3 * 1 - (0 if write_empty else 1)
    if dtype.startswith("float") and fill == 0:
        got = z[4:8, 5:10]
        assert np.signbit(got).all()  # -0.0 written as data


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("dtype,fill", [("float32", 0), ("float32", np.nan), ("int16", 3)])
def test_shard_inner_chunks_encoded_in_one_call_equal_chunk_by_chunk(tmp_path, dtype, fill,
                                                                     index_location):
    """A shard of blosc inner chunks encoded by one kernel call is the shard the loop over
    its inner chunks makes, byte for byte (fill_value chunks left out alike, -0.0 kept as
    data where the fill is 0), and zarr-python reads back the values."""
    from dask_lsio.zarr import shard_encode as shard
    from dask_lsio.zarr.write import _bitwise_fill, _is_fill

    z = zarr.create_array(str(tmp_path / "a"), shape=(8, 10, 7), chunks=(2, 5, 7),
                          shards={"shape": (8, 10, 7), "index_location": index_location},
                          dtype=dtype, fill_value=fill,
                          compressors=BloscCodec(cname="lz4", shuffle="shuffle"))
    spec = spec_from_array(*open_array(str(tmp_path / "a")))
    values = (np.random.default_rng(4).normal(size=(8, 10, 7)) * 20).astype(dtype)
    values[:2, :5] = fill
    if dtype == "float32" and fill == 0:
        values[2:4, :5] = -0.0
    keep = lambda chunk: not _is_fill(chunk, fill)  # noqa: E731
    fast = shard.encode(spec, values, keep, _bitwise_fill(spec, values.dtype, False))
    slow = shard.encode(spec, values, keep)
    assert bytes(fast) == bytes(slow)
    every = shard.encode(spec, values, lambda chunk: True)  # a keep the kernel cannot do
    assert bytes(shard.encode(spec, values)) == bytes(every)  # (no keep: the kernel)
    write_region(spec, whole(spec), values)
    np.testing.assert_array_equal(z[...], values)
    np.testing.assert_array_equal(read_region(spec, whole(spec)), values)
    assert shard.encode(spec, np.full((8, 10, 7), fill, dtype), keep,
                        _bitwise_fill(spec, np.dtype(dtype), False)) is None
