"""to_zarr against zarr-python, the oracle: zarr-python reads back exactly what we write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.diagnostics import ProgressBar
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, ZstdCodec
from zarr_cases import arrays, make_array

import dask_lsio
from dask_lsio.errors import UnsupportedCodecError

EXAMPLES = int(os.environ.get("LSIO_HYPOTHESIS_EXAMPLES", 60))


def random_chunks(draw, shape):
    """dask chunks of random sizes (aligned or not with anything)."""
    out = []
    for n in shape:
        sizes, left = [], n
        while left > 0:
            sizes.append(min(left, draw(st.integers(1, max(1, n)))))
            left -= sizes[-1]
        out.append(tuple(sizes) or (0,))
    return tuple(out)


def new_values(shape, dtype, seed, fill):
    """Random values, with the first dask block-sized corner set to fill_value."""
    rng = np.random.default_rng(seed + 1)
    data = np.asarray((rng.random(shape) * 100).astype(dtype))
    if data.size and rng.random() < 0.5:
        data[tuple(slice(0, max(1, n // 2)) for n in shape)] = fill
    return data


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=arrays(), seed=st.integers(0, 2**16), data=st.data())
def test_overwrite_what_zarr_wrote(spec, seed, data):
    """zarr-python writes; we read it, overwrite it with new blocks; zarr-python reads ours."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a")
        before = make_array(path, spec, seed)
        np.testing.assert_array_equal(dask_lsio.from_zarr(path).compute(), before)
        z = zarr.open_array(path)
        fill = np.zeros((), z.dtype)[()] if z.fill_value is None else z.fill_value
        after = new_values(z.shape, z.dtype, seed, fill)
        x = da.from_array(after, chunks=random_chunks(data.draw, z.shape))
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*through zarr-python")  # no fallback
            assert dask_lsio.to_zarr(x, z) is None
        np.testing.assert_array_equal(zarr.open_array(path)[...], after)


@st.composite
def creations(draw):
    """Creation options for to_zarr(url, ...): shape, chunks, shards, dtype, codecs."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 17), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    kwargs = dict(chunks=chunks, dtype=draw(st.sampled_from(["uint8", "int16", "float32",
                                                              "float64", "complex64"])))
    kwargs["compressors"] = draw(st.sampled_from([None, BloscCodec(cname="lz4"), ZstdCodec()]))
    if draw(st.booleans()):
        kwargs["shards"] = tuple(c * draw(st.integers(1, 3)) for c in chunks)
    kwargs["fill_value"] = draw(st.sampled_from([0, 7]))
    return shape, kwargs


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=creations(), seed=st.integers(0, 2**16), data=st.data())
def test_create_and_write(case, seed, data):
    """We create (metadata through zarr-python) and write; zarr-python reads it back."""
    shape, kwargs = case
    dtype = kwargs.pop("dtype")
    values = new_values(shape, dtype, seed, kwargs["fill_value"])
    x = da.from_array(values, chunks=random_chunks(data.draw, shape))
    with tempfile.TemporaryDirectory() as d:
        dask_lsio.to_zarr(x, os.path.join(d, "a"), **kwargs)
        z = zarr.open_array(os.path.join(d, "a"))
        assert z.chunks == kwargs["chunks"] and z.dtype == values.dtype
        np.testing.assert_array_equal(z[...], values)


def test_dask_chunks_of_30_into_shards_of_120(tmp_path):
    """dask.array.to_zarr loses data here (several tasks write one shard); we rechunk."""
    values = np.arange(240 * 8, dtype="int32").reshape(240, 8)
    x = da.from_array(values, chunks=(30, 8))
    dask_lsio.to_zarr(x, tmp_path / "a", chunks=(10, 8), shards=(120, 8))
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], values)


def test_creation_options_reach_zarr(tmp_path):
    x = da.ones((8, 6), chunks=(4, 3), dtype="float32")
    dask_lsio.to_zarr(x, tmp_path / "g", component="sub/a", chunks=(2, 3), shards=(4, 6),
                      compressors=ZstdCodec(level=1), fill_value=-1,
                      dimension_names=["y", "x"], attributes={"units": "K"})
    z = zarr.open_group(tmp_path / "g")["sub/a"]
    assert z.metadata.dimension_names == ("y", "x") and z.attrs["units"] == "K"
    assert z.shards == (4, 6) and z.chunks == (2, 3) and z.fill_value == -1
    np.testing.assert_array_equal(z[...], 1)
    v2 = da.arange(10, chunks=3)
    dask_lsio.to_zarr(v2, tmp_path / "v2", zarr_format=2, chunks=(4,))
    assert zarr.open_array(tmp_path / "v2").metadata.zarr_format == 2
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "v2")[...], np.arange(10))


def chunk_files(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path)
                  for f in fs if f != "zarr.json")


def test_modes(tmp_path):
    x = da.arange(12, chunks=4)
    path = tmp_path / "a"
    dask_lsio.to_zarr(x, path)  # "a": created
    dask_lsio.to_zarr(x * 2, path)  # "a": written into
    np.testing.assert_array_equal(zarr.open_array(path)[...], np.arange(12) * 2)
    with pytest.raises(ValueError, match="creation options .*chunks.*mode='w'"):
        dask_lsio.to_zarr(x, path, chunks=(6,))
    with pytest.raises(FileExistsError, match="mode='w-'"):
        dask_lsio.to_zarr(x, path, mode="w-")
    with pytest.raises(FileNotFoundError, match="missing.*mode='r\\+'"):
        dask_lsio.to_zarr(x, tmp_path / "missing", mode="r+")
    with pytest.raises(ValueError, match="Cannot use mode `r`"):  # dask's words
        dask_lsio.to_zarr(x, path, mode="r")
    with pytest.raises(ValueError, match="mode must be one of"):
        dask_lsio.to_zarr(x, path, mode="x")
    dask_lsio.to_zarr(da.zeros(12, chunks=6), path, mode="w", chunks=(6,))  # replaced
    z = zarr.open_array(path)
    assert z.chunks == (6,) and chunk_files(path) == []  # all fill: no chunk objects
    np.testing.assert_array_equal(z[...], 0)


def test_overwrite_deletes_stale_objects(tmp_path):
    z = zarr.create_array(tmp_path / "a", shape=(8, 8), chunks=(2, 4), shards=(4, 8),
                          dtype="float32", fill_value=0)
    z[...] = 1
    assert chunk_files(tmp_path / "a") == ["c/0/0", "c/1/0"]
    new = np.zeros((8, 8), "float32")
    new[4:, :] = 5
    dask_lsio.to_zarr(da.from_array(new, chunks=4), z)
    assert chunk_files(tmp_path / "a") == ["c/1/0"]
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], new)
    z2 = zarr.create_array(tmp_path / "b", shape=(8,), chunks=(4,), dtype="int8",
                           config={"write_empty_chunks": True})
    dask_lsio.to_zarr(da.zeros(8, chunks=4, dtype="int8"), z2)
    assert chunk_files(tmp_path / "b") == ["c/0", "c/1"]


@pytest.mark.parametrize("sharded", [False, True])
def test_regions(tmp_path, sharded):
    shards = {"shards": (8, 8)} if sharded else {}
    z = zarr.create_array(tmp_path / "a", shape=(20, 19), chunks=(4, 4), dtype="int32", **shards)
    base = np.arange(20 * 19, dtype="int32").reshape(20, 19)
    z[...] = base
    expected = base.copy()
    for region in [(slice(8, 16), slice(0, 19)),  # aligned
                   (slice(16, 20), slice(8, 19)),  # to the edge
                   (slice(3, 13), slice(5, 11)),  # splits units on every side
                   (slice(1, 2), slice(18, 19))]:  # inside one unit
        shape = tuple(s.stop - s.start for s in region)
        new = -np.arange(np.prod(shape), dtype="int32").reshape(shape) - 1
        dask_lsio.to_zarr(da.from_array(new, chunks=3), z, region=region)
        expected[region] = new
        np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], expected)
    dask_lsio.to_zarr(da.zeros((4, 19), dtype="int32"), tmp_path / "a", region=(slice(0, 4),))
    expected[:4] = 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], expected)


def test_bad_regions_and_arrays(tmp_path):
    z = zarr.create_array(tmp_path / "a", shape=(10,), chunks=(5,), dtype="int32")
    with pytest.raises(ValueError, match=r"shape \(4,\) does not fit region"):
        dask_lsio.to_zarr(da.zeros(4, dtype="int32"), z, region=(slice(0, 5),))
    with pytest.raises(ValueError, match="step 1"):
        dask_lsio.to_zarr(da.zeros(5, dtype="int32"), z, region=(slice(0, 10, 2),))
    unknown = da.from_array(np.arange(10))[da.from_array(np.arange(10)) > 3]
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        dask_lsio.to_zarr(unknown, z)


def test_compute_false_and_return_stored(tmp_path):
    values = np.random.default_rng(0).random((9, 7))
    x = da.from_array(values, chunks=(3, 7))
    lazy = dask_lsio.to_zarr(x, tmp_path / "a", chunks=(3, 7), compute=False)
    assert chunk_files(tmp_path / "a") == []  # nothing written yet
    dask.compute(lazy)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], values)
    stored = dask_lsio.to_zarr(x * 2, tmp_path / "a", return_stored=True)
    assert isinstance(stored, da.Array)
    np.testing.assert_array_equal(stored.compute(), values * 2)


def test_progress_bar(tmp_path, capsys):
    x = da.ones((16, 16), chunks=4)
    with ProgressBar():
        dask_lsio.to_zarr(x, tmp_path / "a", chunks=(4, 4))
    assert "100% Completed" in capsys.readouterr().out


def test_unsupported_dtype_falls_back_or_raises(tmp_path):
    strings = da.from_array(np.array(["a", "bb", "ccc", "d"]), chunks=2)
    with pytest.warns(UserWarning, match="through zarr-python"):
        dask_lsio.to_zarr(strings, tmp_path / "s", chunks=(2,), dtype=str)
    assert list(zarr.open_array(tmp_path / "s")[...]) == ["a", "bb", "ccc", "d"]
    with dask.config.set({"lsio.strict": True}), \
            pytest.raises(UnsupportedCodecError, match="s2"):  # names the array
        dask_lsio.to_zarr(strings, tmp_path / "s2", chunks=(2,), dtype=str)
    assert not (tmp_path / "s2").exists()  # refused before anything was written
    with dask.config.set({"lsio.strict": True}), pytest.raises(UnsupportedCodecError):
        dask_lsio.to_zarr(strings, tmp_path / "s", chunks=(2,), dtype=str, mode="w")
    assert list(zarr.open_array(tmp_path / "s")[...]) == ["a", "bb", "ccc", "d"]  # kept


def test_region_into_a_missing_array_writes_nothing(tmp_path):
    x = da.ones((4, 4), chunks=2)
    for catch in (FileNotFoundError, ValueError, dask_lsio.LSIOError):  # zarr's and dask's
        with pytest.raises(catch, match="no Zarr array at .*nothing.*region"):
            dask_lsio.to_zarr(x, tmp_path / "nothing", region=(slice(0, 4), slice(0, 4)))
    assert not (tmp_path / "nothing").exists()


def test_other_stores_go_through_dask_in_whole_units():
    """A store we do not write (here fsspec's memory://) goes through dask.array.to_zarr,
    still in blocks of whole shards: dask alone would lose data with these blocks."""
    values = np.arange(240, dtype="int32")
    x = da.from_array(values, chunks=30)
    url = f"memory://lsio-{os.getpid()}/a"
    with pytest.warns(UserWarning, match="through dask.array.to_zarr"):
        dask_lsio.to_zarr(x, url, chunks=(10,), shards=(120,))
    np.testing.assert_array_equal(zarr.open_array(url, mode="r")[...], values)


KILLED_WRITER = """
import sys, dask.array as da, dask_lsio
path = sys.argv[1]
for i in range(1, 10**6):  # until killed: every round stores i in every element
    dask_lsio.to_zarr(da.full((64, 256, 256), i, chunks=(8, 256, 256), dtype="int32"), path)
    print(i, flush=True)
"""


def test_killed_writer_leaves_whole_objects(tmp_path):
    """SIGKILL during writes: each chunk object is a whole old or new one, never torn."""
    path = tmp_path / "a"
    zarr.create_array(path, shape=(64, 256, 256), chunks=(1, 64, 64), dtype="int32",
                      compressors=ZstdCodec(level=1))
    with subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)],
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "1"  # one whole round is stored
        time.sleep(0.15)  # then kill it part-way through a later round
        proc.send_signal(signal.SIGKILL)
    z = zarr.open_array(path)
    values = z[...]  # every object decodes (a torn one would not)
    per_chunk = values.reshape(64, 4, 64, 4, 64)
    assert (per_chunk.min(axis=(2, 4)) == per_chunk.max(axis=(2, 4))).all()  # one round each
    assert values.min() >= 1
    for name in chunk_files(path):  # temporary names lie beside their chunk keys
        assert name.startswith("c/")


def test_distributed_local_cluster(tmp_path, loopback_cluster):
    values = np.random.default_rng(2).random((24, 64, 64)).astype("float32")
    x = da.from_array(values, chunks=(6, 64, 64))
    with loopback_cluster(n_workers=2):
        dask_lsio.to_zarr(x, tmp_path / "a", chunks=(4, 32, 32), shards=(12, 64, 64),
                          compressors=BloscCodec(cname="lz4"))
        back = dask_lsio.from_zarr(tmp_path / "a").compute()
    np.testing.assert_array_equal(back, values)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], values)
