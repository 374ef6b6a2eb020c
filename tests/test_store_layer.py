"""The store layer: keys instead of paths, the local and memory backends behind one interface,
one resolver, and the C kernel decoding for every store and engine."""

from __future__ import annotations

import os
import pickle
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, ZstdCodec

import dask_lsio
from dask_lsio.errors import BatchIOError, UnsupportedStoreError
from dask_lsio.store import ABSENT, LocalStore, MemoryStore, ObjectStore, Store, open_store
from dask_lsio.zarr import _kernel, execute
from dask_lsio.zarr.read import read_boxes
from dask_lsio.zarr.shard import IndexCache
from dask_lsio.zarr.spec import open_array, spec_from_array

from zarr_cases import arrays, make_array

EXAMPLES = max(10, int(os.environ.get("LSIO_HYPOTHESIS_EXAMPLES", 60)) // 3)


# -- the interface, on both backends ------------------------------------------------------
@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> Store:
    return LocalStore(tmp_path / "s") if request.param == "local" else MemoryStore()


def test_put_get_ranges_suffixes_list_delete(store):
    assert store.put([("a/b", b"0123456789"), ("c", b"xyz"), ("a/e", b"")]) == [10, 3, 0]
    got = dict(store.get(["a/b", "a/b", "a/b", "missing", "a/e"],
                         np.array([2, -4, 0, 0, 0]), np.array([3, -1, -1, -1, -1])))
    assert [bytes(got[i]) for i in (0, 1, 2, 4)] == [b"234", b"6789", b"0123456789", b""]
    assert store.has(["a/b", "missing", "a"]) == [True, False, False]
    assert isinstance(got[3], FileNotFoundError) and "missing" in str(got[3])
    with pytest.raises(BatchIOError):
        list(store.get(["missing"], errors="raise"))
    assert store.list() == ["a/b", "a/e", "c"] and store.list("a/") == ["a/b", "a/e"]
    assert store.child("a").list() == ["b", "e"]
    store.delete(["a/b", "never-there"])
    assert store.list() == ["a/e", "c"]


def test_hold_keeps_versions(store):
    store.put([("k", b"old"), ("j", b"same")])
    with store.hold(["k", "j", "none"]) as held:
        store.put([("k", b"new!")])
        assert bytes(dict(held.reader.get(["k"]))[0]) == b"old"
        assert bytes(dict(store.get(["k"]))[0]) == b"new!"
        assert held.present(0) and not held.present(2) and held.identity(2) == ABSENT
        first = held.identity(0)
    with store.hold(["k"]) as again:
        assert again.identity(0) != first  # a new version is told from the old


def test_stores_pickle_as_their_description(tmp_path):
    local = LocalStore(tmp_path, engine=dask_lsio.get_engine())
    data = pickle.dumps(local)
    assert len(data) < 200 and b"Engine" not in data
    assert pickle.loads(data) == local and pickle.loads(data).url == str(tmp_path)
    mem = MemoryStore().child("g")
    mem.put([("x", b"1")])
    back = pickle.loads(pickle.dumps(mem))
    assert back == mem and back.list() == ["x"]  # the same dict, in this process


def test_one_resolver():
    assert open_store("/a/b") == LocalStore("/a/b") == open_store("file:///a/b")
    assert open_store(zarr.storage.LocalStore("/a/b")) == LocalStore("/a/b")
    zmem = zarr.storage.MemoryStore()
    ours = open_store(zarr.storage.StorePath(zmem, "g/x"))
    assert ours.url.endswith("/g/x") and ours == open_store(zarr.storage.StorePath(zmem, "g/x"))
    assert isinstance(open_store("s3://bucket/a.zarr"), ObjectStore)
    assert open_store("gs://b/a.zarr").child("x").url == "gs://b/a.zarr/x"
    with pytest.raises(UnsupportedStoreError, match="hdfs://"):
        open_store("hdfs://namenode/a.zarr")
    with pytest.raises(TypeError, match="anon"):
        open_store("/a/b", storage_options={"anon": True})


# -- zarr arrays in memory go the fast way ------------------------------------------------
def _memory_array(**kwargs) -> tuple[zarr.Array, np.ndarray]:
    values = np.random.default_rng(3).random((12, 20, 18)).astype("float32")
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=values.shape, dtype="float32",
                          **kwargs)
    z[...] = values
    return z, values


@pytest.mark.parametrize("layout", [
    dict(chunks=(1, 8, 6), compressors=BloscCodec(cname="lz4")),
    dict(chunks=(2, 4, 6), shards=(4, 8, 18), compressors=ZstdCodec()),
])
def test_memory_store_arrays_through_every_front_end(layout):
    z, values = _memory_array(**layout)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        x = dask_lsio.from_zarr(z)
        np.testing.assert_array_equal(x.compute(), values)
        np.testing.assert_array_equal(x[3:7, 5:9].compute(), values[3:7, 5:9])
        loader = dask_lsio.RandomCrops(z, (2, 5, 5), batch_size=6, seed=2, length=1)
        crops = loader.batch(0, 0)["data"]
        blocks = np.concatenate(list(dask_lsio.iter_blocks(z)))
        np.testing.assert_array_equal(blocks, values)
    for b, s in enumerate(loader.locations(0, 0)["data"]):
        box = tuple(slice(int(a), int(a) + n) for a, n in zip(s, (2, 5, 5)))
        np.testing.assert_array_equal(crops[b], values[box])


def test_to_zarr_into_a_memory_store_is_read_back_by_zarr():
    zmem = zarr.storage.MemoryStore()
    x = da.random.default_rng(1).random((10, 16, 16), chunks=(5, 8, 8)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dask_lsio.to_zarr(x, zmem, component="v", chunks=(2, 8, 8), shards=(4, 16, 16))
    np.testing.assert_array_equal(zarr.open_array(zmem, path="v", mode="r")[...], x.compute())


def test_a_rewritten_shard_is_never_served_from_the_cache():
    z, values = _memory_array(chunks=(2, 4, 6), shards=(4, 8, 18), compressors=ZstdCodec())
    spec = spec_from_array(*open_array(z))
    starts = np.array([[0, 0, 0], [5, 3, 2]])
    cache = IndexCache(spec)
    first = read_boxes(spec, starts, (3, 6, 6), indexes=cache)
    z[...] = values + 1  # new shards, new indexes (other inner chunk sizes)
    again = read_boxes(spec, starts, (3, 6, 6), indexes=cache)
    np.testing.assert_array_equal(again, first + 1)


# -- one decode kernel for every store and engine ------------------------------------------
@pytest.fixture
def counted_kernel(monkeypatch):
    """The bytes the C kernel decoded (its own count, summed over the batches' hook
    contexts), with the numcodecs path forbidden."""
    if _kernel.lib is None:
        pytest.skip("the C kernel is not built here")
    decoded = []
    record = _kernel._record_decoded

    def counting(store, plans):
        decoded.append(sum(int(d[0]) for _, _, d in plans))
        return record(store, plans)

    def no_numcodecs(*args, **kwargs):
        raise AssertionError("decoded with numcodecs")

    monkeypatch.setattr(_kernel, "_record_decoded", counting)
    monkeypatch.setattr(execute, "_decode_numcodecs", no_numcodecs)
    return decoded


@pytest.mark.parametrize("where", ["threads", "threads-python", "memory"])
def test_the_kernel_decodes_for_the_thread_engine_and_the_memory_store(tmp_path, where,
                                                                         counted_kernel,
                                                                         monkeypatch):
    if where == "threads-python":  # the thread engine without its C reader (not built)
        from dask_lsio.io import _cbatch

        monkeypatch.setattr(_cbatch, "lib", None)
        monkeypatch.setattr(dask_lsio.io._select, "_engines", {})  # a fresh engine
    values = np.random.default_rng(4).random((8, 32, 32)).astype("float32")
    target = zarr.storage.MemoryStore() if where == "memory" else str(tmp_path / "a")
    z = zarr.create_array(target, shape=values.shape, chunks=(1, 16, 16), dtype="float32",
                          compressors=BloscCodec(cname="zstd"))
    z[...] = values
    with dask.config.set({"lsio.engine": "auto" if where == "memory" else "threads"}):
        x = dask_lsio.from_zarr(z)
        got = x.compute(scheduler="sync")
        if where != "memory":
            assert dask_lsio.get_engine().kind == "threads"
    np.testing.assert_array_equal(got, values)
    assert sum(counted_kernel) == values.nbytes  # every chunk, by the kernel


# -- the oracle, on the other backends ----------------------------------------------------
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=arrays(), seed=st.integers(0, 2**16), backend=st.sampled_from(["threads", "memory"]))
def test_matches_zarr_python_on_every_backend(spec, seed, backend):
    target = zarr.storage.MemoryStore()
    if backend == "memory":
        expected = make_array(target, spec, seed)
        url = target
    else:
        import tempfile

        tmp = tempfile.TemporaryDirectory()
        url = os.path.join(tmp.name, "a")
        expected = make_array(url, spec, seed)
    with dask.config.set({"lsio.engine": "threads" if backend == "threads" else "auto"}):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*does not decode")  # no fallback
            x = dask_lsio.from_zarr(url)
        np.testing.assert_array_equal(x.compute(scheduler="sync"), expected)
        if expected.ndim:
            half = tuple(slice(n // 3, n) for n in expected.shape)
            np.testing.assert_array_equal(x[half].compute(scheduler="sync"), expected[half])


# -- what interrupted writers leave ---------------------------------------------------------
def test_interrupted_writers_leftovers_are_cleaned_up_and_never_read(tmp_path):
    x = da.arange(8 * 6, dtype="int32", chunks=12).reshape(8, 6).rechunk((2, 6))
    dask_lsio.to_zarr(x, tmp_path / "a", chunks=(2, 6))
    chunk_dir = tmp_path / "a" / "c" / "1"
    old = chunk_dir / ".0.999999-dead0000-0.lsio-tmp"  # a killed writer's temporary object
    new = chunk_dir / ".0.999998-beef0000-0.lsio-tmp"  # one being written right now
    lock = chunk_dir / ".0.lsio-lock"  # a killed writer's lock file (nobody holds it)
    for f in (old, new, lock):
        f.write_bytes(b"partial")
    os.utime(old, (0, 0))
    assert LocalStore(tmp_path / "a").list("c/1/") == ["c/1/0"]  # hidden from readers
    np.testing.assert_array_equal(dask_lsio.from_zarr(tmp_path / "a").compute(), x.compute())
    assert dask_lsio.cleanup(tmp_path / "a") == 2
    assert not old.exists() and not lock.exists() and new.exists()
    os.utime(new, (0, 0))
    dask_lsio.to_zarr(x[:2] + 1, tmp_path / "a", region=(slice(0, 2), slice(0, 6)))  # the next
    assert not new.exists()  # writer of the array cleans up
    assert dask_lsio.cleanup(tmp_path / "a", older_than=0) == 0


def test_a_held_lock_file_is_not_removed(tmp_path):
    from dask_lsio.io import locks

    target = str(tmp_path / "obj")
    with locks.locked([target]):
        assert dask_lsio.cleanup(tmp_path, older_than=0) == 0
        assert os.path.exists(locks.lock_path(target))
    assert not os.path.exists(locks.lock_path(target))  # its holder removed it


def test_subclasses_of_zarr_stores_are_not_taken_for_them(tmp_path):
    """A subclass may change what reading means (zarr's tests count accesses through one):
    only the very classes map to our stores; the others fall back, with a warning."""

    class Counting(zarr.storage.MemoryStore):
        pass

    z = zarr.create_array(Counting(), shape=(4,), chunks=(2,), dtype="int32")
    with pytest.raises(UnsupportedStoreError, match="Counting"):
        open_store(z)
    with pytest.warns(UserWarning, match="Counting"):
        dask_lsio.from_zarr(z)


@pytest.mark.parametrize("fill", [0.0, -0.0])
def test_negative_zero_is_data_where_zero_is_the_fill(tmp_path, fill):
    """zarr-python compares a zero fill_value bit for bit: -0.0 chunks are written."""
    dask_lsio.to_zarr(da.full((4,), -fill, chunks=2, dtype="float32"), tmp_path / "a",
                      chunks=(2,), fill_value=fill)
    z = zarr.open_array(tmp_path / "a", mode="r")
    assert z.nchunks_initialized == 2
    assert np.signbit(z[...]).tolist() == [bool(np.signbit(-fill))] * 4
