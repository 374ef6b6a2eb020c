"""dask_lsio.rechunk of groups and xarray datasets, on a distributed LocalCluster, and on the
object store (a moto S3 server on loopback, tests/s3_fixtures.py); zarr-python and xarray
read back what it wrote (the oracles).

- groups: every array of a group (data and 1-d coordinate-like arrays, a subgroup),
  target chunks by array name and by dimension name; the structure, attributes and values
  are the source's, the chunks as asked (arrays not named keep theirs).
- xarray: a dataset written by ``xarray.Dataset.to_zarr`` (coordinates, attributes, a
  datetime coordinate, CF encodings: scale_factor/add_offset/_FillValue on int16), opened
  with ``dask_lsio.open_zarr`` and rechunked by dimension: ``xarray.open_zarr`` of the
  target is identical to that of the source, encodings kept, chunks as asked.
- a LocalCluster on loopback (worker processes): ``plan.execute()`` without and with
  ``LSIOWorkerPlugin``, ``client.compute`` / ``client.persist`` + ``distributed.progress``.
- S3: a two-stage rechunk with source, temp and target on the bucket (sources written by
  zarr-python and by dask_lsio.to_zarr), and a local source to an S3 target.
"""

from __future__ import annotations

import os

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

import dask_lsio
from rechunk_cases import check_target, same_fill, smallest_max_mem

MiB = 1 << 20


def assert_same_group(got: zarr.Group, want: zarr.Group, chunks: dict[str, tuple]) -> None:
    """Same members (arrays and groups, at every depth), attributes, values, dtypes, fill
    values, dimension names; each array's chunks as in ``chunks`` (by path)."""
    def tree(g):
        return {p: type(m).__name__ for p, m in g.members(max_depth=None)}

    assert tree(got) == tree(want)
    assert dict(got.attrs) == dict(want.attrs)
    for path, member in want.members(max_depth=None):
        mine = got[path]
        assert dict(mine.attrs) == dict(member.attrs), path
        if isinstance(member, zarr.Group):
            continue
        assert mine.shape == member.shape and mine.dtype == member.dtype, path
        assert same_fill(mine.fill_value, member.fill_value), path
        if member.metadata.zarr_format == 3:
            assert mine.metadata.dimension_names == member.metadata.dimension_names, path
        assert mine.chunks == chunks[path], (path, mine.chunks, chunks[path])
        np.testing.assert_array_equal(mine[...], member[...], err_msg=path)


# -- groups ------------------------------------------------------------------------------------
@pytest.fixture(params=[2, 3])
def group(request, tmp_path):
    """A group (v2 or v3) of a (time, y, x) variable, its coordinates, a 2-d mask and a
    subgroup with an array; attributes on everything."""
    fmt = request.param
    rng = np.random.default_rng(11)
    g = zarr.create_group(tmp_path / "src", zarr_format=fmt, attributes={"title": "a group",
                                                                         "version": 2})

    def add(name, values, chunks, dims, where=g, **kwargs):
        named = ({"dimension_names": dims} if fmt == 3 else {})
        attrs = {"long_name": name, **({} if fmt == 3 else {"_ARRAY_DIMENSIONS": list(dims)})}
        a = where.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks,
                               attributes=attrs, **named, **kwargs)
        a[...] = values
        return a

    add("data", rng.random((48, 20, 16)).astype("float32"), (1, 20, 16), ("time", "y", "x"),
        fill_value=np.nan)
    add("time", np.arange(48, dtype="int64") * 3600, (12,), ("time",))
    add("y", np.linspace(50, 60, 20), (20,), ("y",))
    add("x", np.linspace(0, 8, 16), (16,), ("x",))
    add("mask", (rng.random((20, 16)) > 0.5).astype("uint8"), (10, 16), ("y", "x"))
    sub = g.create_group("extra", attributes={"note": "nested"})
    add("counts", rng.integers(0, 9, (48, 4)).astype("int16"), (6, 4), ("time", "band"),
        where=sub, fill_value=-1)
    return tmp_path / "src", fmt


def test_group_by_array_name(group, tmp_path):
    src, fmt = group
    plan = dask_lsio.rechunk(src, {"data": (48, 5, 4), "extra/counts": {"time": 48}},
                             tmp_path / "dst", "64MiB")
    out = plan.execute()
    assert isinstance(out, zarr.Group)
    want = zarr.open_group(src, mode="r")
    assert_same_group(zarr.open_group(tmp_path / "dst", mode="r"), want, {
        "data": (48, 5, 4), "time": (12,), "y": (20,), "x": (16,), "mask": (10, 16),
        "extra": None, "extra/counts": (48, 4)})  # the others as they were
    # the stages of every array (those not named are copied as they are)
    for name in ("data", "time", "y", "x", "mask", "extra/counts"):
        assert [s for s in plan.stages if s.target.rstrip("/").endswith(name)], (name, plan)


def test_group_by_dimension(group, tmp_path):
    src, fmt = group
    source = zarr.open_group(src, mode="r")  # a zarr.Group source
    smallest = smallest_max_mem(lambda m: dask_lsio.rechunk(
        source, {"time": 48, "y": 4, "x": 4}, tmp_path / "dst", m))
    plan = dask_lsio.rechunk(source, {"time": 48, "y": 4, "x": 4}, tmp_path / "dst",
                             max(smallest, MiB))
    print(f"\n{plan!r}")
    plan.execute()
    assert_same_group(zarr.open_group(tmp_path / "dst", mode="r"), source, {
        "data": (48, 4, 4), "time": (48,), "y": (4,), "x": (4,), "mask": (4, 4),
        "extra": None, "extra/counts": (48, 4)})  # "band": not named, kept


def test_group_errors(group, tmp_path):
    src, _ = group
    with pytest.raises(ValueError, match="nowhere"):
        dask_lsio.rechunk(src, {"nowhere": 4}, tmp_path / "dst", "64MiB")
    with pytest.raises(ValueError, match="data"):
        dask_lsio.rechunk(src, {"data": (4, 4)}, tmp_path / "dst", "64MiB")


# -- xarray ------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
@pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata")
@pytest.mark.parametrize("fmt,consolidated", [(2, True), (3, False), (3, True)])
def test_xarray_dataset(tmp_path, fmt, consolidated):
    xr = pytest.importorskip("xarray")
    import pandas as pd

    rng = np.random.default_rng(12)
    nt, ny, nx = 36, 16, 12
    precip = rng.random((nt, ny, nx)) * 50
    precip[rng.random(precip.shape) < 0.1] = np.nan  # masked: _FillValue on disk
    ds = xr.Dataset(
        {"t2m": (("time", "y", "x"), (rng.random((nt, ny, nx)) * 40 + 250).astype("float32"),
                 {"units": "K", "long_name": "2 m temperature"}),
         "precip": (("time", "y", "x"), precip, {"units": "mm", "long_name": "rain"})},
        coords={"time": pd.date_range("2021-01-01", periods=nt, freq="6h"),
                "y": ("y", np.linspace(40, 55, ny), {"units": "degrees_north"}),
                "x": ("x", np.linspace(-5, 10, nx), {"units": "degrees_east"}),
                "elevation": (("y", "x"), rng.random((ny, nx)).astype("float32") * 3000)},
        attrs={"title": "rechunk me", "history": "made by a test"})
    encoding = {
        "t2m": {"chunks": (1, ny, nx)},
        "precip": {"chunks": (1, ny, nx), "dtype": "int16", "scale_factor": 0.01,
                   "add_offset": 10.0, "_FillValue": -32768},
        "time": {"units": "hours since 2021-01-01", "calendar": "proleptic_gregorian",
                 "dtype": "int64"}}
    src, dst = str(tmp_path / "src.zarr"), str(tmp_path / "dst.zarr")
    ds.to_zarr(src, zarr_format=fmt, consolidated=consolidated, encoding=encoding)
    opened = dask_lsio.open_zarr(src)
    plan = dask_lsio.rechunk(opened, {"time": nt, "y": 4, "x": 4}, dst, "64MiB")
    out = plan.execute()
    assert isinstance(out, zarr.Group)
    want = xr.open_zarr(src)
    got = xr.open_zarr(dst)
    xr.testing.assert_identical(got.compute(), want.compute())
    asked = {"time": nt, "y": 4, "x": 4}
    for name, var in want.variables.items():
        mine = got[name]
        for key in ("dtype", "scale_factor", "add_offset", "_FillValue", "units",
                    "calendar"):
            a, b = mine.encoding.get(key), var.encoding.get(key)
            assert same_fill(a, b) if key == "_FillValue" else a == b, (name, key, a, b)
        expected = tuple(asked[d] for d in var.dims)
        assert tuple(mine.encoding["chunks"]) == expected, (name, mine.encoding["chunks"])
        assert zarr.open_group(dst, mode="r")[name].chunks == expected, name
    # the stored int16 values themselves, not only the decoded ones
    raw_src = zarr.open_group(src, mode="r")["precip"]
    raw_dst = zarr.open_group(dst, mode="r")["precip"]
    assert raw_dst.dtype == np.dtype("int16")
    np.testing.assert_array_equal(raw_dst[...], raw_src[...])
    xr.testing.assert_identical(dask_lsio.open_zarr(dst).compute(), want.compute())


# -- a LocalCluster on loopback ------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_on_a_local_cluster(tmp_path, loopback_cluster, capsys):
    """Worker processes (2 x 1 thread) on loopback: a two-stage plan without the worker
    plugin, then with it through client.compute / client.persist and distributed.progress."""
    distributed = pytest.importorskip("distributed")
    values = np.random.default_rng(13).random((128, 128, 128)).astype("float32")
    z = zarr.create_array(tmp_path / "src", shape=values.shape, chunks=(1, 128, 128),
                          dtype="float32", compressors=BloscCodec(cname="lz4"))
    z[...] = values
    src, chunks = str(tmp_path / "src"), (128, 16, 16)
    with loopback_cluster(n_workers=2) as (cluster, client):
        smallest = smallest_max_mem(lambda m: dask_lsio.rechunk(src, chunks,
                                                                tmp_path / "probe", m))
        max_mem = 3 * smallest  # (per worker process: one thread each)
        plan = dask_lsio.rechunk(src, chunks, tmp_path / "a", max_mem)  # no plugin
        print(f"\n{plan!r}")
        assert len(plan.stages) == 2, plan
        out = plan.execute()
        assert isinstance(out, zarr.Array)
        check_target(zarr.open_array(tmp_path / "a"), z, values, chunks)

        client.register_plugin(dask_lsio.LSIOWorkerPlugin())
        plan = dask_lsio.rechunk(src, chunks, tmp_path / "b", max_mem)
        future = client.compute(plan)
        capsys.readouterr()
        distributed.progress(future)
        assert isinstance(future.result(), zarr.Array)
        assert "100% Completed" in capsys.readouterr().out
        check_target(zarr.open_array(tmp_path / "b"), z, values, chunks)

        plan = dask_lsio.rechunk(src, chunks, tmp_path / "c", max_mem)
        persisted = client.persist(plan)
        distributed.progress(persisted)
        distributed.wait(persisted)
        check_target(zarr.open_array(tmp_path / "c"), z, values, chunks)
        dask.compute(dask_lsio.rechunk(src, (32, 32, 32), tmp_path / "d", max_mem))
        check_target(zarr.open_array(tmp_path / "d"), z, values, (32, 32, 32))
    for name in "abcd":
        assert not os.path.exists(tmp_path / f"{name}.rechunk-temp")


# -- S3 ----------------------------------------------------------------------------------------
@pytest.fixture
def strict():
    with dask.config.set({"lsio.strict": True}):  # no quiet fallback to zarr-python / dask
        yield


def s3_keys(s3, prefix: str) -> list[str]:
    async def keys():
        return sorted([k async for k in s3.zarr_store(prefix).list()])
    return zarr.core.sync.sync(keys())


TWO_STAGE = dict(shape=(64, 128, 128), chunks=(1, 128, 128), target=(64, 32, 32))  # float64: 8 MiB


@pytest.mark.parametrize("writer", ["zarr-python v3 sharded", "dask_lsio.to_zarr v2"])
def test_s3_to_s3_through_an_intermediate_array(s3, strict, writer):
    values = np.random.default_rng(14).random(TWO_STAGE["shape"])
    values[:8] = 0  # write units of fill_value only: never stored
    if writer.startswith("zarr"):
        z = zarr.create_array(s3.zarr_store("src"), shape=values.shape, dtype="float64",
                              chunks=TWO_STAGE["chunks"], shards=(4, 128, 128), fill_value=0,
                              compressors=ZstdCodec(), attributes={"units": "K"},
                              dimension_names=("time", "y", "x"))
        z[...] = values
    else:
        dask_lsio.to_zarr(da.from_array(values, chunks=(8, 128, 128)), f"{s3.url}/src",
                          storage_options=s3.storage_options, zarr_format=2,
                          chunks=TWO_STAGE["chunks"], fill_value=0,
                          attributes={"units": "K"})
    source = zarr.open_array(s3.zarr_store("src", "fsspec"), mode="r")
    so = s3.storage_options
    url, target = f"{s3.url}/src", TWO_STAGE["target"]

    def rechunk(max_mem, name="dst"):
        return dask_lsio.rechunk(url, target, f"{s3.url}/{name}", max_mem,
                                 temp=f"{s3.url}/tmp-{name}", storage_options=so)

    smallest = smallest_max_mem(lambda m: rechunk(m, "probe"))
    plan = rechunk(2 * smallest)
    print(f"\n{plan!r}")
    assert len(plan.stages) == 2, plan
    assert plan.stages[0].target.startswith(f"{s3.url}/tmp-dst")
    out = plan.execute()
    assert isinstance(out, zarr.Array)
    np.testing.assert_array_equal(out[...], values)
    for kind in ("obstore", "fsspec"):
        check_target(zarr.open_array(s3.zarr_store("dst", kind), mode="r"), source, values,
                     target)
    if source.metadata.zarr_format == 2:  # the units and metadata, nothing else
        keys = [".zarray", ".zattrs"] + [f"0.{j}.{k}" for j in range(4) for k in range(4)]
    else:
        keys = ["zarr.json"] + [f"c/0/{j}/{k}" for j in range(4) for k in range(4)]
    assert s3_keys(s3, "dst") == sorted(keys)
    again = rechunk(2 * smallest)  # done: a rerun skips it all
    assert again.tasks == 0 and again.skipped > 0


def test_local_source_to_s3_target(s3, strict, tmp_path):
    """A local array (as a zarr.Array, then by path) into S3, with the intermediate array
    beside the target on S3; the same storage_options serve the URLs (a local path takes
    none)."""
    values = np.random.default_rng(15).random(TWO_STAGE["shape"])
    z = zarr.create_array(tmp_path / "src", shape=values.shape, dtype="float64",
                          chunks=TWO_STAGE["chunks"], attributes={"a": 1})
    z[...] = values
    so, target = s3.storage_options, TWO_STAGE["target"]

    def rechunk(source, max_mem, name, **kwargs):
        return dask_lsio.rechunk(source, target, f"{s3.url}/{name}", max_mem,
                                 storage_options=so, **kwargs)

    smallest = smallest_max_mem(lambda m: rechunk(z, m, "probe"))
    plan = rechunk(z, 2 * smallest, "dst")  # temp: "<target>.rechunk-temp" on S3
    print(f"\n{plan!r}")
    assert len(plan.stages) == 2, plan
    assert plan.stages[0].target.startswith(f"{s3.url}/dst.rechunk-temp")
    plan.execute()
    check_target(zarr.open_array(s3.zarr_store("dst"), mode="r"), z, values, target)
    assert s3_keys(s3, "dst.rechunk-temp") == []  # removed when the run completed
    # sharded v3 on S3, one stage
    plan = rechunk(z, 64 * MiB, "sharded", shards=(64, 64, 64), compressors="zstd")
    assert len(plan.stages) == 1, plan
    plan.execute()
    check_target(zarr.open_array(s3.zarr_store("sharded"), mode="r"), z, values, target,
                 shards=(64, 64, 64), compressors="zstd")
    assert s3_keys(s3, "sharded") == ["c/0/0/0", "c/0/0/1", "c/0/1/0", "c/0/1/1", "zarr.json"]
    # the source by path: storage_options are for the S3 target
    rechunk(tmp_path / "src", 2 * smallest, "by-path").execute()
    check_target(zarr.open_array(s3.zarr_store("by-path"), mode="r"), z, values, target)
