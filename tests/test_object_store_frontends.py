"""Object stores through every front end: S3 (a moto server on loopback, tests/s3_fixtures.py)
read and written by dask-lsio, against zarr-python on the same bucket (the oracle).

- ``dask_lsio.store.open_store("s3://...", storage_options=...)`` gives an ``ObjectStore``
  that keeps the Store contract (batched reads of ranges and suffixes, missing objects as
  FileNotFoundError, list, child, delete, pickling); unknown options raise TypeError.
- ``from_zarr``, ``open_zarr``, ``RandomCrops``, ``iter_blocks`` and zarr-python with
  ``LSIOCodecPipeline`` read what zarr-python wrote (tests/zarr_cases.py layouts: v2 and
  v3, sharded or not, chunks left unwritten read as fill_value, partial edge chunks) as
  zarr-python's default pipeline reads it; so does ``from_zarr`` of an array zarr-python
  opened on ``zarr.storage.ObjectStore`` or ``FsspecStore``.
- What ``dask_lsio.to_zarr`` writes (whole arrays, regions) zarr-python reads back equal,
  with the same objects stored as zarr-python would store.
- A hypothesis oracle over tests/zarr_cases.py's array strategy, on S3.

``lsio.strict`` is on: a fallback to zarr-python or dask raises instead of passing quietly.
"""

from __future__ import annotations

import pickle
import uuid

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dask_lsio
from zarr_cases import arrays, make_array

try:
    from dask_lsio.store import ObjectStore, open_store
except ImportError:
    pytest.skip("dask_lsio.store.ObjectStore cannot be imported (yet): these are the tests "
                "of the object-store backend", allow_module_level=True)

from dask_lsio.loader.sources import spec_of_dask  # noqa: E402

LSIO = {"codec_pipeline.path": "dask_lsio.zarr.LSIOCodecPipeline"}
V2 = {"name": "v2", "separator": "."}
CASES = {  # make_array specs: a few of every layout, with edges and unwritten chunks
    "v3-shards-end": dict(shape=(13, 11), chunks=(4, 3), shards=(8, 6), index_location="end",
                          dtype="float32", zarr_format=3, compressors="zstd", endian="little",
                          transpose=False, fill=1, missing=0.3,
                          chunk_key_encoding={"name": "default", "separator": "/"}),
    "v3-shards-start": dict(shape=(6, 10, 7), chunks=(2, 5, 3), shards=(4, 5, 6),
                            index_location="start", dtype="int16", zarr_format=3,
                            compressors="blosc", endian="big", transpose=True, fill=None,
                            missing=0.4, chunk_key_encoding={"name": "default",
                                                             "separator": "."}),
    "v3-chunks": dict(shape=(9, 14), chunks=(4, 5), dtype="uint8", zarr_format=3,
                      compressors="gzip", endian="little", transpose=False, fill=0,
                      missing=0.25, chunk_key_encoding=V2),
    "v2-dot": dict(shape=(10, 7), chunks=(3, 4), dtype=">i4", zarr_format=2, order="F",
                   compressors="zlib", chunk_key_encoding=V2, fill=1, missing=0.3),
    "v2-slash": dict(shape=(5, 6, 7), chunks=(2, 3, 4), dtype="float64", zarr_format=2,
                     order="C", compressors="blosc", fill=None, missing=0.2,
                     chunk_key_encoding={"name": "v2", "separator": "/"}),
}


@pytest.fixture(autouse=True)
def strict():
    with dask.config.set({"lsio.strict": True}):
        yield


def write_case(s3, name: str, path: str) -> np.ndarray:
    """Case ``name``'s array at ``path``, written by zarr-python (through obstore for v3,
    s3fs for v2); returns zarr-python's reading of it."""
    kind = "obstore" if CASES[name]["zarr_format"] == 3 else "fsspec"
    return make_array(s3.zarr_store(path, kind), CASES[name], seed=5)


@pytest.fixture(scope="module", params=list(CASES))
def written(request, s3_module) -> tuple[str, np.ndarray]:
    """A case's array at ``<case>/a`` in the module's bucket (tests only read it):
    its path and zarr-python's reading of it."""
    path = f"{request.param}/a"
    return path, write_case(s3_module, request.param, path)


def ours(x: da.Array) -> ObjectStore:
    """The store a from_zarr array's tasks read (it must be ours: no fallback)."""
    store = spec_of_dask(x, "x").store
    assert isinstance(store, ObjectStore), store
    return store


def boxes_of(expected: np.ndarray) -> list[tuple[slice, ...]]:
    return [tuple(slice(n // 3, n) for n in expected.shape),
            tuple(slice(1, max(1, n - 1)) for n in expected.shape)]


# -- the store ---------------------------------------------------------------------------
def test_open_store_gives_an_object_store_keeping_the_contract(s3):
    so = s3.storage_options
    store = open_store(f"{s3.url}/p", storage_options=so)
    assert isinstance(store, ObjectStore) and s3.bucket in store.url
    assert store == open_store(f"{s3.url}/p", storage_options=s3.storage_options)
    assert store.put([("a/b", b"0123456789"), ("c", b"xyz"), ("a/e", b"")]) == [10, 3, 0]
    got = dict(store.get(["a/b", "a/b", "a/b", "missing", "a/e"],
                         np.array([2, -4, 0, 0, 0]), np.array([3, -1, -1, -1, -1])))
    assert [bytes(got[i]) for i in (0, 1, 2, 4)] == [b"234", b"6789", b"0123456789", b""]
    assert isinstance(got[3], FileNotFoundError) and "missing" in str(got[3])
    assert store.has(["a/b", "missing", "a"]) == [True, False, False]
    assert store.sizes(["a/b", "missing"]) == [10, None]
    assert store.list() == ["a/b", "a/e", "c"] and store.list("a/") == ["a/b", "a/e"]
    assert store.child("a").list() == ["b", "e"]
    zstore = s3.zarr_store("p")  # zarr-python sees the same objects
    assert zarr.core.sync.sync(zstore.get("a/b", zarr.core.buffer.default_buffer_prototype())
                               ).to_bytes() == b"0123456789"
    store.delete(["a/b", "never-there"])
    assert store.list() == ["a/e", "c"]
    back = pickle.loads(pickle.dumps(store))
    assert back == store and back.list() == ["a/e", "c"]


def test_unknown_storage_options_raise_type_error_naming_them(s3):
    with pytest.raises(TypeError, match="no_such_option"):
        open_store(s3.url, storage_options={**s3.storage_options, "no_such_option": 1})
    with pytest.raises(TypeError, match="no_such_option"):
        dask_lsio.from_zarr(s3.url, storage_options={**s3.storage_options,
                                                      "no_such_option": 1})


# -- reads ---------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:chunks .* split the stored")
def test_from_zarr_reads_as_zarr_python(s3_module, written):
    s3, (path, written) = s3_module, written
    so = s3.storage_options
    x = dask_lsio.from_zarr(f"{s3.url}/{path}", storage_options=so)
    ours(x)
    np.testing.assert_array_equal(x.compute(), written)
    y = dask_lsio.from_zarr(s3.url, component=path, storage_options=so, chunks=3)
    np.testing.assert_array_equal(y.compute(scheduler="sync"), written)
    for box in boxes_of(written):
        np.testing.assert_array_equal(x[box].compute(), written[box])


@pytest.mark.parametrize("kind", ["obstore", "fsspec"])
def test_the_pipeline_on_zarr_stores_reads_as_zarr_python(s3_module, written, kind):
    (path, written) = written
    with zarr.config.set(LSIO):
        z = zarr.open_array(s3_module.zarr_store(path, kind), mode="r")
        assert type(z._async_array.codec_pipeline).__name__ == "LSIOCodecPipeline"
        np.testing.assert_array_equal(z[...], written)
        for box in boxes_of(written):
            np.testing.assert_array_equal(z[box], written[box])


@pytest.mark.parametrize("kind", ["obstore", "fsspec"])
def test_from_zarr_of_arrays_on_zarr_stores(s3_module, written, kind):
    (path, written) = written
    z = zarr.open_array(s3_module.zarr_store(path, kind), mode="r")
    x = dask_lsio.from_zarr(z)
    ours(x)  # read by our client, on the same bucket and prefix
    np.testing.assert_array_equal(x.compute(), written)
    box = boxes_of(written)[0]
    np.testing.assert_array_equal(x[box].compute(), written[box])


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
@pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata")
@pytest.mark.parametrize("consolidated", [True, False])
def test_open_zarr_matches_xarray(s3, consolidated):
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset({"v": (("t", "x"), np.arange(60.0).reshape(6, 10)),
                     "w": (("x",), np.arange(10, dtype="int16"))},
                    coords={"t": np.arange(6), "x": np.linspace(0, 1, 10)},
                    attrs={"title": "s3"})
    ds.to_zarr(s3.zarr_store("ds"), zarr_format=3, consolidated=consolidated,
               encoding={"v": {"chunks": (2, 5)}})
    want = xr.open_zarr(s3.zarr_store("ds"), consolidated=consolidated).compute()
    for kwargs in ({}, {"consolidated": consolidated}):  # (xarray's default, then told)
        got = dask_lsio.open_zarr(f"{s3.url}/ds", storage_options=s3.storage_options,
                                  **kwargs)
        ours(got["v"].data)
        xr.testing.assert_identical(got.compute(), want)
    ds.to_zarr(s3.zarr_store(), group="g", zarr_format=3, consolidated=consolidated)
    got = dask_lsio.open_zarr(s3.url, group="g", storage_options=s3.storage_options)
    want = xr.open_zarr(s3.zarr_store(), group="g", consolidated=consolidated).compute()
    xr.testing.assert_identical(got.compute(), want)


def test_crops_and_blocks_read_as_zarr_python(s3):
    values = np.random.default_rng(3).random((8, 20, 18)).astype("float32")
    z = zarr.create_array(s3.zarr_store("a"), shape=values.shape, chunks=(2, 4, 6),
                          shards=(4, 8, 18), dtype="float32", fill_value=0)
    z[:6] = values[:6]  # the last shard row stays unwritten: fill_value
    values[6:] = 0
    url, so = f"{s3.url}/a", s3.storage_options
    for source, options in ((url, so), (dask_lsio.from_zarr(url, storage_options=so), None)):
        loader = dask_lsio.RandomCrops({"v": source}, (2, 5, 5), batch_size=6, seed=2,
                                       length=2, storage_options=options)
        for b, batch in enumerate(loader):
            for crop, s in zip(batch["v"], loader.locations(0, b)["v"]):
                box = tuple(slice(int(a), int(a) + n) for a, n in zip(s, (2, 5, 5)))
                np.testing.assert_array_equal(crop, values[box])
    with dask.config.set({"array.chunk-size": "4 KiB"}):  # blocks of one shard (2 KiB)
        blocks = list(dask_lsio.iter_blocks(url, storage_options=so))
    assert len(blocks) == 2
    np.testing.assert_array_equal(np.concatenate(blocks), values)
    blocks = list(dask_lsio.iter_blocks(dask_lsio.from_zarr(url, storage_options=so), axis=1))
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), values)


# -- writes --------------------------------------------------------------------------------
def stored_keys(s3, prefix: str) -> list[str]:
    """The objects under ``prefix`` (relative to it), listed by zarr-python."""
    async def keys():
        return sorted([k async for k in s3.zarr_store(prefix).list()])
    return zarr.core.sync.sync(keys())


@pytest.mark.parametrize("layout", [
    dict(zarr_format=3, chunks=(3, 4), shards=(6, 8)),
    dict(zarr_format=3, chunks=(3, 4)),
    dict(zarr_format=2, chunks=(3, 4)),
])
def test_to_zarr_is_read_back_by_zarr_python(s3, layout):
    values = np.arange(13 * 15, dtype="int32").reshape(13, 15) + 1
    values[:6, :8] = 0  # units of fill_value only: not stored, by zarr-python or by us
    x = da.from_array(values, chunks=(5, 7))
    so = s3.storage_options
    dask_lsio.to_zarr(x, s3.url, component="out", storage_options=so, fill_value=0, **layout)
    zarr.create_array(s3.zarr_store("ref"), shape=values.shape, dtype="int32", fill_value=0,
                      **layout)[...] = values
    got = zarr.open_array(s3.zarr_store("out"), mode="r")
    np.testing.assert_array_equal(got[...], values)
    assert got.metadata.zarr_format == layout["zarr_format"]
    assert stored_keys(s3, "out") == stored_keys(s3, "ref")
    update = values[2:9, 5:11] * 7  # a region splitting write units
    dask_lsio.to_zarr(da.from_array(update, chunks=4), s3.url, component="out",
                      storage_options=so, region=(slice(2, 9), slice(5, 11)))
    values[2:9, 5:11] = update
    np.testing.assert_array_equal(zarr.open_array(s3.zarr_store("out"), mode="r")[...], values)
    back = dask_lsio.from_zarr(s3.url, component="out", storage_options=so)
    np.testing.assert_array_equal(back.compute(), values)


@pytest.mark.parametrize("case", list(CASES))
def test_to_zarr_into_arrays_zarr_python_created(s3, case):
    written = write_case(s3, case, "g/a")
    so = s3.storage_options
    x = dask_lsio.from_zarr(f"{s3.url}/g/a", storage_options=so)
    changed = (written // 2).astype(written.dtype)
    dask_lsio.to_zarr(da.from_array(changed, chunks=x.chunks), f"{s3.url}/g/a",
                      storage_options=so, mode="r+")
    for kind in ("obstore", "fsspec"):
        np.testing.assert_array_equal(
            zarr.open_array(s3.zarr_store("g/a", kind), mode="r")[...], changed)


# -- the oracle ----------------------------------------------------------------------------
def coarse(spec: dict) -> dict:
    """At most 4 chunks along each axis (an S3 request costs more than a file read)."""
    spec = dict(spec)
    old = spec["chunks"]
    spec["chunks"] = tuple(max(c, -(-n // 4)) for c, n in zip(old, spec["shape"]))
    if "shards" in spec:
        spec["shards"] = tuple(c * (s // o) for c, s, o in zip(spec["chunks"], spec["shards"],
                                                                old))
    return spec


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=arrays().map(coarse), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["obstore", "fsspec"]))
def test_matches_zarr_python_on_s3(s3, spec, seed, kind):
    prefix = f"h{uuid.uuid4().hex[:8]}"
    expected = make_array(s3.zarr_store(prefix, kind), spec, seed)
    so = s3.storage_options
    x = dask_lsio.from_zarr(f"{s3.url}/{prefix}", storage_options=so)
    np.testing.assert_array_equal(x.compute(scheduler="sync"), expected)
    if expected.ndim:
        half = tuple(slice(n // 3, n) for n in expected.shape)
        np.testing.assert_array_equal(x[half].compute(), expected[half])
    with zarr.config.set(LSIO):
        np.testing.assert_array_equal(zarr.open_array(s3.zarr_store(prefix), mode="r")[...],
                                      expected)
    out = f"{prefix}-w"
    native = expected.astype(expected.dtype.newbyteorder("="))
    dask_lsio.to_zarr(da.from_array(native), s3.url, component=out, storage_options=so,
                      chunks=spec["chunks"], shards=spec.get("shards"),
                      zarr_format=spec["zarr_format"])
    np.testing.assert_array_equal(zarr.open_array(s3.zarr_store(out), mode="r")[...],
                                  expected)
