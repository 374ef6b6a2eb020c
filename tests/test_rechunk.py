"""dask_lsio.rechunk against zarr-python, the oracle (issue 18): local paths and MemoryStore.

- hypothesis: source arrays (v2 and v3, sharded or not, blosc/zstd/gzip/none, int16, uint8,
  float32, float64, fill values with NaN, write units never written, edges cutting chunks, 1 to
  4 dims) rechunked to random grids (random shards for v3 targets, random compressor names and
  format conversions) with random ``max_mem`` from the smallest that works (read from the
  error) up: zarr-python reads back the same values, the grid asked for and the source's dtype,
  fill_value, shape and attributes; single- and two-stage plans both occur.
- explicit layouts: time to space through an intermediate array, v2/gzip to sharded v3/zstd,
  target chunks by dimension name, -1/None for a whole axis, every compressor name.
- the plan: its attributes and repr, ``dask.compute(plan)``, dask's ProgressBar.
- errors: max_mem too small (the smallest value that works, exactly), bad target chunks, a
  missing source, an existing target, a corrupt source chunk (no target unit of the failed
  task is written).
- resume: a subprocess SIGKILLed once half the tasks of a pass have finished (target or
  intermediate units on disk), rerun in-process with the same arguments; a rerun of a complete
  run skips everything; units of fill_value only count as not done.
- memory: the peak RSS growth of a subprocess rechunking 64 MiB with max_mem 32 MiB stays
  within max_mem + MEMORY_OVERHEAD (printed with ``-s``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
import zarr.errors
from dask.diagnostics import ProgressBar
from dask.utils import format_bytes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
from zarr.storage import MemoryStore

import dask_lsio
from rechunk_cases import (NAMED, check_target, chunk_objects, compressor,
                           files_and_stamps, make_source, resolve_chunks,
                           smallest_max_mem, sources)

# the module, not its function of the same name (dask_lsio.graph's rechunk)
rechunk_module = sys.modules["dask_lsio.graph.rechunk"]
EXAMPLES = int(os.environ.get("LSIO_RECHUNK_EXAMPLES", 25))
MiB = 1 << 20


def check_plan(plan, max_mem: int, ndim: int, fresh: bool = True) -> None:
    """The plan's attributes keep the contract."""
    assert isinstance(plan, dask_lsio.Rechunked)
    assert plan.max_mem == max_mem
    assert len(plan.stages) in (1, 2), plan.stages
    for stage in plan.stages:
        assert dataclasses.is_dataclass(stage) and stage.__dataclass_params__.frozen
        assert isinstance(stage.source, str) and isinstance(stage.target, str)
        assert len(stage.block) == ndim and all(b >= 1 for b in stage.block)
        assert stage.tasks >= 0 and 0 < stage.memory <= max_mem
        assert stage.read_amplification >= 1
    assert max(s.memory for s in plan.stages) <= plan.memory_per_task <= max_mem
    for first, second in zip(plan.stages, plan.stages[1:]):
        assert first.target == second.source  # through the intermediate array
    if fresh:
        assert plan.skipped == 0 and plan.tasks == sum(s.tasks for s in plan.stages) > 0


# -- the oracle ------------------------------------------------------------------------------
@st.composite
def cases(draw) -> dict:
    """A source spec, target grid and options, a max_mem factor over the smallest, a store.

    A third are "time to space" layouts (maps of 1 or 2 steps -> whole timeseries of small
    tiles) of 5 to 20 MiB at max_mem near the smallest: where one pass would decode each map
    many times and an intermediate array is cheaper (smaller arrays cost more in tasks than
    they save in decoding: the planner keeps one pass)."""
    if draw(st.integers(0, 2)) == 0:
        spec = draw(sources())
        shape = (draw(st.sampled_from([96, 128, 160])), draw(st.sampled_from([96, 128])), 128)
        spec.update(shape=shape, chunks=(draw(st.integers(1, 2)),) + shape[1:],
                    dtype=draw(st.sampled_from(["float32", "float64"])),
                    dims=draw(st.sampled_from([None, ("time", "y", "x")])), shards=None)
        if spec["zarr_format"] == 3 and draw(st.booleans()):
            spec["shards"] = (spec["chunks"][0] * 4,) + shape[1:]
        chunks = (draw(st.sampled_from([-1, None, shape[0]])),) + tuple(
            draw(st.sampled_from([8, 12, 16])) for _ in shape[1:])
        factor = draw(st.sampled_from([1, 1.5, 2, 3]))
    else:
        spec = draw(sources())
        chunks = tuple(draw(st.one_of(st.integers(1, n), st.sampled_from([-1, None])))
                       for n in spec["shape"])
        factor = draw(st.sampled_from([1, 1.25, 2, 8, 100, 10**4]))
    fmt = draw(st.sampled_from([None, None, 2, 3]))
    shards = None
    if (fmt or spec["zarr_format"]) == 3 and draw(st.booleans()):
        shards = tuple(c * draw(st.integers(1, 3))
                       for c in resolve_chunks(chunks, spec["shape"]))
    return dict(spec=spec, chunks=chunks, zarr_format=fmt, shards=shards,
                compressors=draw(st.sampled_from([None, None, "zstd", "lz4", "blosc-zstd",
                                                  "gzip", "none"])),
                factor=factor, store=draw(st.sampled_from(["path", "array", "memory"])),
                seed=draw(st.integers(0, 2**16)))


TIME_TO_SPACE = dict(  # two explicit examples: a two-stage and a single-stage plan
    spec=dict(shape=(128, 128, 128), chunks=(1, 128, 128), zarr_format=3, dtype="float32",
              fill="nan", compressor="zstd", missing=0.3, shards=None, dims=None),
    chunks=(128, 16, 16), zarr_format=None, shards=None, compressors=None, factor=1.5,
    store="path", seed=1)
ALIGNED = dict(
    spec=dict(shape=(13, 11), chunks=(4, 3), zarr_format=2, dtype="int16", fill=3,
              compressor="gzip", missing=0.3, shards=None, dims=("y", "x")),
    chunks=(8, 6), zarr_format=3, shards=(8, 12), compressors="zstd", factor=10**4,
    store="memory", seed=2)


def run_case(case: dict, tmp: str):
    """Rechunk the case's source; check the target as zarr-python reads it; the plan."""
    spec = case["spec"]
    if case["store"] == "memory":
        z, expected = make_source(MemoryStore(), spec, case["seed"])
        source, target, temp = z, MemoryStore(), MemoryStore()
    else:
        path = os.path.join(tmp, "src")
        z, expected = make_source(path, spec, case["seed"])
        source = path if case["store"] == "path" else zarr.open_array(path, mode="r")
        target, temp = os.path.join(tmp, "dst"), None
    options = {k: case[k] for k in ("shards", "compressors", "zarr_format") if case[k]}

    def rechunk(max_mem):
        return dask_lsio.rechunk(source, case["chunks"], target, max_mem, temp, **options)

    smallest = smallest_max_mem(rechunk)
    max_mem = max(smallest, int(smallest * case["factor"]))
    plan = rechunk(max_mem)
    check_plan(plan, max_mem, z.ndim)
    out = plan.execute()
    assert isinstance(out, zarr.Array)
    got = zarr.open_array(target, mode="r")
    check_target(got, z, expected, case["chunks"], case["shards"], case["zarr_format"],
                 case["compressors"])
    np.testing.assert_array_equal(out[...], expected)
    if case["store"] != "memory":
        assert not os.path.exists(target + ".rechunk-temp")  # removed when the run completes
    return plan


def test_random_rechunks_read_back_equal():
    kinds = collections.Counter()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @example(case=TIME_TO_SPACE)
    @example(case=ALIGNED)
    @given(case=cases())
    def check(case):
        with tempfile.TemporaryDirectory() as tmp:
            plan = run_case(case, tmp)
        kinds[len(plan.stages)] += 1

    check()
    print(f"\nplans by number of stages: {dict(kinds)}")
    assert kinds[1] and kinds[2], f"single- and two-stage plans must both occur: {dict(kinds)}"


# -- explicit layouts --------------------------------------------------------------------------
@pytest.fixture
def time_space(tmp_path):
    """(64, 32, 32) float32 in maps of (1, 32, 32), blosc-lz4: its path, array and values."""
    values = np.random.default_rng(7).random((64, 32, 32)).astype("float32")
    z = zarr.create_array(tmp_path / "src", shape=values.shape, chunks=(1, 32, 32),
                          dtype="float32", compressors=BloscCodec(cname="lz4"),
                          attributes={"units": "K"})
    z[...] = values
    return str(tmp_path / "src"), z, values


@pytest.fixture
def maps(tmp_path):
    """(128, 128, 128) float32 (8 MiB) in maps of (1, 128, 128), zstd: path, array, values."""
    values = np.random.default_rng(8).random((128, 128, 128)).astype("float32")
    z = zarr.create_array(tmp_path / "maps", shape=values.shape, chunks=(1, 128, 128),
                          dtype="float32", compressors=ZstdCodec(level=1),
                          dimension_names=("time", "y", "x"), attributes={"units": "K"})
    z[...] = values
    return str(tmp_path / "maps"), z, values


def test_time_to_space_through_an_intermediate_array(maps, tmp_path):
    src, z, values = maps
    dst = str(tmp_path / "dst")
    smallest = smallest_max_mem(lambda m: dask_lsio.rechunk(src, (128, 16, 16), dst, m))
    # one pass reading each map once needs all 128 maps (8 MiB) per task; at 1.5x the
    # smallest budget (~1 MiB) it would decode every map many times: two passes are cheaper
    max_mem = int(1.5 * smallest)
    plan = dask_lsio.rechunk(src, (128, 16, 16), dst, max_mem)
    print(f"\n{plan!r}")
    check_plan(plan, max_mem, 3)
    assert len(plan.stages) == 2, plan
    first, second = plan.stages
    assert src in first.source and dst + ".rechunk-temp" in first.target
    assert dst in second.target and ".rechunk-temp" not in second.target
    assert isinstance(plan.execute(), zarr.Array)
    check_target(zarr.open_array(dst), z, values, (128, 16, 16))
    assert not os.path.exists(dst + ".rechunk-temp")  # removed when the run completed
    # an explicit temp
    plan = dask_lsio.rechunk(src, (128, 16, 16), tmp_path / "dst2", max_mem,
                             temp=tmp_path / "scratch")
    assert len(plan.stages) == 2 and str(tmp_path / "scratch") in plan.stages[0].target
    plan.execute()
    check_target(zarr.open_array(tmp_path / "dst2"), z, values, (128, 16, 16))
    assert not chunk_objects(tmp_path / "scratch")  # the intermediate array is gone
    # a max_mem that holds everything: one pass reading each map once
    plan = dask_lsio.rechunk(src, (128, 16, 16), tmp_path / "dst3", "1GiB")
    check_plan(plan, 1 << 30, 3)
    assert len(plan.stages) == 1 and plan.stages[0].read_amplification == 1
    plan.execute()
    check_target(zarr.open_array(tmp_path / "dst3"), z, values, (128, 16, 16))


@pytest.mark.parametrize("name, codec", [("lz4", "blosc"), ("none", None), ("zstd", "zstd")])
def test_intermediate_compressor(maps, tmp_path, name, codec):
    """lsio.rechunk.temp-compressor: the intermediate array's codec."""
    src, z, values = maps
    dst = str(tmp_path / "dst")
    with dask.config.set({"lsio.rechunk.temp-compressor": name}):
        plan = dask_lsio.rechunk(src, (128, 16, 16), dst, 2 << 20)
        assert len(plan.stages) == 2, plan
        (middle,) = [p for p in os.listdir(dst + ".rechunk-temp")]
        meta = json.loads((Path(dst + ".rechunk-temp") / middle / "zarr.json").read_text())
        names = [c["name"] for c in meta["codecs"]]
        assert names == ["bytes"] + ([codec] if codec else []), names
        plan.execute()
    check_target(zarr.open_array(dst), z, values, (128, 16, 16))
    assert not os.path.exists(dst + ".rechunk-temp")


def intermediate_codecs(temp_root: Path) -> list[str]:
    (middle,) = os.listdir(temp_root)
    meta = json.loads((temp_root / middle / "zarr.json").read_text())
    return [c["name"] for c in meta["codecs"]]


def test_intermediate_uncompressed_where_the_page_cache_holds_it(maps, tmp_path, monkeypatch):
    """The default ("auto"): no codec on a local disk when the copy fits in the page cache's
    room for written data; blosc-lz4 when it does not, and on other stores."""
    src, z, values = maps
    assert dask.config.get("lsio.rechunk.temp-compressor") == "auto"
    plan = dask_lsio.rechunk(src, (128, 16, 16), tmp_path / "a", 2 << 20)
    assert intermediate_codecs(tmp_path / "a.rechunk-temp") == ["bytes"]
    plan.execute()
    check_target(zarr.open_array(tmp_path / "a"), z, values, (128, 16, 16))
    # a machine whose page cache would write the intermediate array back to its disk
    monkeypatch.setattr(rechunk_module, "_dirty_room", lambda: z.nbytes - 1)
    plan = dask_lsio.rechunk(src, (128, 16, 16), tmp_path / "b", 2 << 20)
    assert intermediate_codecs(tmp_path / "b.rechunk-temp") == ["bytes", "blosc"]
    plan.execute()
    check_target(zarr.open_array(tmp_path / "b"), z, values, (128, 16, 16))
    monkeypatch.undo()
    temp = MemoryStore()
    plan = dask_lsio.rechunk(src, (128, 16, 16), tmp_path / "c", 2 << 20, temp=temp)
    middle = zarr.open_array(temp, path=plan.stages[0].target.rsplit("/", 1)[1], mode="r")
    assert [type(c).__name__ for c in middle.compressors] == ["BloscCodec"]
    plan.execute()
    check_target(zarr.open_array(tmp_path / "c"), z, values, (128, 16, 16))
    assert rechunk_module._dirty_room() > z.nbytes  # on this machine: the first case's cause


def test_another_intermediate_compressor_another_intermediate(maps, tmp_path):
    """A rerun after the compressor changed plans a new intermediate array, not the old one
    with other metadata (which would refuse it)."""
    dst = str(tmp_path / "dst")
    with dask.config.set({"lsio.rechunk.temp-compressor": "none"}):
        dask_lsio.rechunk(maps[0], (128, 16, 16), dst, 2 << 20)
    with dask.config.set({"lsio.rechunk.temp-compressor": "lz4"}):
        plan = dask_lsio.rechunk(maps[0], (128, 16, 16), dst, 2 << 20)
    assert len(os.listdir(dst + ".rechunk-temp")) == 2
    plan.execute()
    check_target(zarr.open_array(dst), maps[1], maps[2], (128, 16, 16))


def test_unknown_intermediate_compressor(maps, tmp_path):
    with dask.config.set({"lsio.rechunk.temp-compressor": "snappy"}), \
            pytest.raises(ValueError, match="unknown compressor 'snappy'"):
        dask_lsio.rechunk(maps[0], (128, 16, 16), tmp_path / "dst", 2 << 20)


def test_intermediate_chunks_not_deleted_is_only_a_warning(maps, tmp_path, monkeypatch, caplog):
    """The second stage deletes the intermediate chunks it has read; a deletion that fails
    (here: refused by the file system, injected) leaves a warning, not a failed copy, and
    the intermediate array still goes at the end."""
    from dask_lsio.store import LocalStore

    src, z, values = maps
    dst = str(tmp_path / "dst")
    real = LocalStore.delete

    def refusing(self, keys):
        if ".rechunk-temp" in self.root and keys:
            raise PermissionError(13, "injected: permission denied", keys[0])
        return real(self, keys)

    monkeypatch.setattr(LocalStore, "delete", refusing)
    with caplog.at_level("WARNING", logger="dask_lsio"):
        dask_lsio.rechunk(src, (128, 16, 16), dst, 2 << 20).execute()
    check_target(zarr.open_array(dst), z, values, (128, 16, 16))
    assert "could not delete intermediate chunks" in caplog.text
    assert not os.path.exists(dst + ".rechunk-temp")


def test_v2_gzip_to_sharded_v3_zstd(tmp_path):
    values = np.random.default_rng(1).integers(-999, 999, (40, 30, 20)).astype("int16")
    values[:10] = -1  # write units of fill_value only: not stored
    z = zarr.create_array(tmp_path / "v2", shape=values.shape, chunks=(10, 30, 20),
                          dtype="int16", zarr_format=2, compressors=numcodecs_gzip(),
                          fill_value=-1, attributes={"_ARRAY_DIMENSIONS": ["t", "y", "x"],
                                                     "scale_factor": 0.5})
    z[...] = values
    plan = dask_lsio.rechunk(tmp_path / "v2", (20, 5, 5), tmp_path / "v3", "64MiB",
                             shards=(40, 10, 10), compressors="zstd", zarr_format=3)
    check_plan(plan, 64 * MiB, 3)
    plan.execute()
    got = zarr.open_array(tmp_path / "v3")
    check_target(got, z, values, (20, 5, 5), (40, 10, 10), 3, "zstd")
    assert isinstance(got.compressors[0], ZstdCodec)
    assert got.fill_value == -1 and got.dtype == np.dtype("int16")
    assert set(chunk_objects(tmp_path / "v3")) == {f"c/0/{i}/{j}" for i in range(3)
                                                    for j in range(2)}


def numcodecs_gzip():
    return compressor("gzip", 2, "int16")


@pytest.mark.parametrize("fmt", [2, 3])
def test_target_chunks_by_dimension_name(tmp_path, fmt):
    values = np.random.default_rng(2).random((24, 10, 12))
    dims = {"dimension_names": ("time", "y", "x")} if fmt == 3 else {
        "attributes": {"_ARRAY_DIMENSIONS": ["time", "y", "x"]}}
    z = zarr.create_array(tmp_path / "src", shape=values.shape, chunks=(1, 10, 12),
                          dtype="float64", zarr_format=fmt, **dims)
    z[...] = values
    plan = dask_lsio.rechunk(tmp_path / "src", {"x": 4, "time": 24, "y": 5}, tmp_path / "a",
                             "16MiB")
    plan.execute()
    check_target(zarr.open_array(tmp_path / "a"), z, values, (24, 5, 4))
    # dims not named keep their chunks; -1 / None are the whole axis
    dask_lsio.rechunk(tmp_path / "src", {"time": -1}, tmp_path / "b", "16MiB").execute()
    check_target(zarr.open_array(tmp_path / "b"), z, values, (24, 10, 12))
    dask_lsio.rechunk(tmp_path / "src", {"time": 6, "x": None}, tmp_path / "c",
                      "16MiB").execute()
    check_target(zarr.open_array(tmp_path / "c"), z, values, (6, 10, 12))
    if fmt == 3:  # shards by dimension name too
        dask_lsio.rechunk(tmp_path / "src", {"time": 6, "y": 5, "x": 4}, tmp_path / "d",
                          "16MiB", shards={"time": 12, "y": 10, "x": 12}).execute()
        check_target(zarr.open_array(tmp_path / "d"), z, values, (6, 5, 4), (12, 10, 12))


def test_whole_axis(tmp_path):
    values = np.arange(15 * 8 * 6, dtype="uint8").reshape(15, 8, 6)
    z = zarr.create_array(tmp_path / "src", shape=values.shape, chunks=(4, 3, 2),
                          dtype="uint8", compressors=None, fill_value=0)
    z[...] = values
    for i, chunks in enumerate([(-1, 2, None), (None, None, None), (-1, -1, 1)]):
        dst = tmp_path / f"dst{i}"
        dask_lsio.rechunk(z, chunks, dst, "8MiB").execute()
        check_target(zarr.open_array(dst), z, values, chunks)
        assert zarr.open_array(dst).chunks == resolve_chunks(chunks, values.shape)


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("name", list(NAMED))
def test_compressor_names(tmp_path, fmt, name):
    values = np.random.default_rng(3).random((20, 9)).astype("float32")
    z = zarr.create_array(tmp_path / "src", shape=values.shape, chunks=(5, 9), dtype="float32",
                          compressors=GzipCodec())
    z[...] = values
    dask_lsio.rechunk(z, (20, 3), tmp_path / "dst", "8MiB", compressors=name,
                      zarr_format=fmt).execute()
    got = zarr.open_array(tmp_path / "dst")
    check_target(got, z, values, (20, 3), zarr_format=fmt, compressors=name)
    if name == "lz4":  # blosc-lz4 with shuffle
        shuffle = got.compressors[0].shuffle
        assert getattr(shuffle, "value", shuffle) in ("shuffle", 1), got.compressors


def test_memory_store_source_and_target():
    values = np.random.default_rng(4).random((30, 16, 16)).astype("float32")
    z = zarr.create_array(MemoryStore(), shape=values.shape, chunks=(1, 16, 16),
                          dtype="float32", fill_value=0, attributes={"a": [1, 2]})
    z[:20] = values[:20]
    values[20:] = 0
    target = MemoryStore()
    smallest = smallest_max_mem(lambda m: dask_lsio.rechunk(z, (30, 2, 2), target, m,
                                                            MemoryStore()))
    plan = dask_lsio.rechunk(z, (30, 2, 2), target, 4 * smallest, MemoryStore())
    check_plan(plan, 4 * smallest, 3)
    out = plan.execute()
    assert isinstance(out, zarr.Array)
    check_target(zarr.open_array(target, mode="r"), z, values, (30, 2, 2))
    np.testing.assert_array_equal(out[...], values)


# -- the plan ----------------------------------------------------------------------------------
def test_the_plan_object(time_space, tmp_path, capsys):
    src, z, values = time_space
    plan = dask_lsio.rechunk(src, (64, 8, 8), tmp_path / "a", "1MiB")
    check_plan(plan, MiB, 3)
    text = repr(plan)
    assert str(plan.tasks) in text and "stage" in text.lower(), text
    assert format_bytes(plan.memory_per_task) in text, text
    for stage in plan.stages:  # each stage: its blocks and tasks
        assert str(stage.tasks) in text and str(stage.block) in text, text
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.stages[0].tasks = 0
    assert not chunk_objects(tmp_path / "a")  # planning writes no data
    assert zarr.open_array(tmp_path / "a").chunks == (64, 8, 8)  # but the metadata
    dask.compute(plan)  # a dask collection
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], values)

    plan = dask_lsio.rechunk(src, (64, 8, 8), tmp_path / "b", "1MiB")
    capsys.readouterr()
    with ProgressBar():
        out = plan.execute(scheduler="threads", num_workers=2)
    assert "100% Completed" in capsys.readouterr().out
    assert isinstance(out, zarr.Array) and out.chunks == (64, 8, 8)
    np.testing.assert_array_equal(out[...], values)

    plan = dask_lsio.rechunk(src, (64, 8, 8), tmp_path / "c", "1MiB")
    out = plan.compute(scheduler="sync")
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "c")[...], values)
    for text, value in [("256MiB", 256 * MiB), ("1GB", 10**9), (3 * MiB, 3 * MiB)]:
        assert dask_lsio.rechunk(src, (64, 8, 8), tmp_path / "d", text).max_mem == value


def test_blocks_chained_for_read_ahead_on_threads_only(time_space, tmp_path):
    """On the threaded scheduler each pass's blocks form as many chains as threads (a
    block follows the one ``threads`` before it, and reads ahead the one after it); on
    another scheduler (a cluster's) and with lsio.rechunk.readahead off, no chains."""
    src, z, values = time_space
    plan = dask_lsio.rechunk(src, (64, 8, 8), tmp_path / "a", "160KiB")
    lanes, depth = plan.threads, sys.modules["dask_lsio.graph.rechunked"].READ_AHEAD

    def chains(graph) -> dict:
        deps = {}
        for key, task in dict(graph).items():
            if isinstance(key, tuple) and key[0].startswith("rechunk-copy-"):
                deps[key] = [d for d in task[4:] if isinstance(d, tuple)]
        return deps

    deps = chains(plan.__dask_graph__())
    assert len(deps) == plan.tasks and any(deps.values())
    for name in {k[0] for k in deps}:
        keys = sorted(k for k in deps if k[0] == name)
        for n, key in enumerate(keys):
            assert deps[key] == ([keys[n - lanes]] if n >= lanes else []), (key, deps[key])
            ahead = dict(plan.__dask_graph__())[key][3]
            later = [n + j * lanes for j in range(1, depth + 1)]  # its chain's next blocks
            want = [n, *later] if n < lanes else later[-1:]  # the others: hinted before
            assert ahead == tuple(keys[m][1] for m in want if m < len(keys)), (key, ahead)
    with dask.config.set(scheduler="processes"):
        assert not any(chains(plan.__dask_graph__()).values())
    plan.execute()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a")[...], values)
    with dask.config.set({"lsio.rechunk.readahead": False}):
        plan = dask_lsio.rechunk(src, (64, 8, 8), tmp_path / "b", "160KiB")
    assert not any(chains(plan.__dask_graph__()).values())
    plan.execute()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "b")[...], values)


# -- errors ------------------------------------------------------------------------------------
def test_max_mem_too_small_says_the_smallest_that_works(time_space, tmp_path):
    src, z, values = time_space
    dst = tmp_path / "dst"
    with pytest.raises(ValueError, match=r"max_mem.*the smallest that works is .*\(\d+ bytes\)"):
        dask_lsio.rechunk(src, (64, 4, 4), dst, "1KiB")
    smallest = smallest_max_mem(lambda m: dask_lsio.rechunk(src, (64, 4, 4), dst, m))
    # one target unit (64, 4, 4) and one source unit (1, 32, 32): 4 KiB each, at the least
    assert smallest >= (64 * 4 * 4 + 32 * 32) * 4
    with pytest.raises(ValueError, match=f"\\({smallest} bytes\\)"):
        dask_lsio.rechunk(src, (64, 4, 4), dst, smallest - 1)
    plan = dask_lsio.rechunk(src, (64, 4, 4), dst, smallest)  # exactly: it works
    check_plan(plan, smallest, 3)
    plan.execute()
    check_target(zarr.open_array(dst), z, values, (64, 4, 4))


def test_bad_target_chunks(time_space, tmp_path):
    src = time_space[0]
    for chunks in [(64, 4), (64, 4, 4, 4), (0, 4, 4), (64, -3, 4), (64, 4.5, 4)]:
        with pytest.raises(ValueError, match="target_chunks"):
            dask_lsio.rechunk(src, chunks, tmp_path / "dst", "64MiB")
    with pytest.raises(ValueError, match="target_chunks.*time"):  # the array has no dims
        dask_lsio.rechunk(src, {"time": 4}, tmp_path / "dst", "64MiB")
    zarr.create_array(tmp_path / "named", shape=(4, 4), chunks=(2, 2), dtype="int8",
                      dimension_names=("y", "x"))
    with pytest.raises(ValueError, match="target_chunks.*lat"):
        dask_lsio.rechunk(tmp_path / "named", {"lat": 2}, tmp_path / "dst2", "64MiB")
    with pytest.raises(ValueError, match="target_chunks"):
        dask_lsio.rechunk(tmp_path / "named", {"y": 0}, tmp_path / "dst2", "64MiB")
    assert not os.path.exists(tmp_path / "dst") and not os.path.exists(tmp_path / "dst2")


def test_missing_source(tmp_path):
    for catch in (dask_lsio.ArrayNotFoundError, FileNotFoundError):
        with pytest.raises(catch, match="nothing"):
            dask_lsio.rechunk(tmp_path / "nothing", (4,), tmp_path / "dst", "64MiB")
    assert not os.path.exists(tmp_path / "dst")


def test_codec_it_cannot_copy_is_refused_before_anything_is_written(tmp_path):
    """A source (or target) dask-lsio does not encode itself (variable-length strings)
    raises UnsupportedCodecError naming the array, and leaves no target behind."""
    src = zarr.create_array(tmp_path / "names", shape=(4,), chunks=(2,), dtype=str)
    src[...] = np.array(["a", "b", "c", "d"])
    with pytest.raises(dask_lsio.UnsupportedCodecError, match="names"):
        dask_lsio.rechunk(tmp_path / "names", (4,), tmp_path / "dst", "64MiB")
    assert not os.path.exists(tmp_path / "dst")


def test_existing_target(time_space, tmp_path):
    src, z, values = time_space
    dst = tmp_path / "dst"
    old = zarr.create_array(dst, shape=(70, 32, 32), chunks=(7, 32, 32), dtype="float32")
    old[...] = 5
    with pytest.raises(zarr.errors.ContainsArrayError):
        dask_lsio.rechunk(src, (64, 8, 8), dst, "64MiB")
    np.testing.assert_array_equal(zarr.open_array(dst)[...], 5)  # untouched
    plan = dask_lsio.rechunk(src, (64, 8, 8), dst, "64MiB", overwrite=True)
    plan.execute()
    check_target(zarr.open_array(dst), z, values, (64, 8, 8))
    # no object of the old array is left: the same keys as zarr-python writes
    ref = zarr.create_array(tmp_path / "ref", shape=values.shape, chunks=(64, 8, 8),
                            dtype="float32", compressors=z.compressors)
    ref[...] = values
    assert chunk_objects(dst) == chunk_objects(tmp_path / "ref")


def test_corrupt_source_chunk(tmp_path):
    """A corrupt source chunk: the error names it, and the tasks that read it write nothing
    (no target unit of their blocks); what other tasks wrote is whole and right."""
    values = np.random.default_rng(5).random((16, 32, 32)).astype("float32")
    z = zarr.create_array(tmp_path / "src", shape=values.shape, chunks=(1, 32, 32),
                          dtype="float32", compressors=ZstdCodec())
    z[...] = values
    with open(tmp_path / "src" / "c" / "5" / "0" / "0", "r+b") as f:
        raw = f.read()
        f.seek(0)
        f.write(b"\x07" * len(raw))
    dst = tmp_path / "dst"
    smallest = smallest_max_mem(lambda m: dask_lsio.rechunk(tmp_path / "src", (4, 8, 8), dst,
                                                            m))
    plan = dask_lsio.rechunk(tmp_path / "src", (4, 8, 8), dst, 2 * smallest)
    assert len(plan.stages) == 1, plan
    block = plan.stages[0].block
    assert block[0] < 16, plan  # (else every task reads the corrupt map)
    with pytest.raises(Exception, match="c/5/0/0") as info:
        plan.execute(scheduler="threads", num_workers=2)
    print(f"\nthe error of a corrupt chunk: {type(info.value).__name__}: {info.value}")
    written = chunk_objects(dst)
    failed = range(5 // block[0] * block[0], (5 // block[0] + 1) * block[0])  # their rows
    assert not [k for k in written if 4 * int(k.split("/")[1]) in failed], (block, written)
    got = zarr.open_array(dst)
    for key in written:  # units written by the other tasks: whole, and right
        i, j, k = map(int, key.split("/")[1:])
        box = (slice(4 * i, 4 * i + 4), slice(8 * j, 8 * j + 8), slice(8 * k, 8 * k + 8))
        np.testing.assert_array_equal(got[box], values[box])


# -- resume ------------------------------------------------------------------------------------
KILLED = """
import json, sys, time, dask_lsio
from dask.callbacks import Callback
src, chunks, dst, max_mem = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
plan = dask_lsio.rechunk(src, tuple(chunks), dst, max_mem)
print("planned", len(plan.stages), plan.tasks, flush=True)

def finished(key, *args):  # slow, and saying how far it got: we kill it part-way
    print("task", key, flush=True)
    time.sleep(0.05)

with Callback(posttask=finished):
    plan.execute(scheduler="threads", num_workers=2)
print("done", flush=True)
"""

RESUMABLE = {  # shape, source chunks, target chunks, max_mem factor
    "one pass": ((64, 64, 64), (1, 64, 64), (64, 8, 8), 2),
    "two passes, killed in the first": ((256, 128, 128), (1, 128, 128), (256, 8, 8), 4),
    "two passes, killed in the second": ((256, 128, 128), (1, 128, 128), (256, 8, 8), 4),
}


def run_until(args: list[str], tasks: int, timeout: float = 120) -> list[str]:
    """Run KILLED; SIGKILL it once ``tasks`` tasks have finished; return its lines."""
    lines = []
    with subprocess.Popen([sys.executable, "-c", KILLED, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                lines.append(line.strip())
                if sum(ln.startswith("task") for ln in lines) >= tasks:
                    proc.send_signal(signal.SIGKILL)
                    break
        finally:
            timer.cancel()
            proc.kill()
            err = proc.stderr.read()
    assert proc.wait() == -signal.SIGKILL, (lines, err[-3000:])
    assert "done" not in lines and sum(ln.startswith("task") for ln in lines) >= tasks, (
        lines, err[-3000:])
    return lines


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(RESUMABLE))
def test_resume_after_sigkill(tmp_path, case):
    """A run killed part-way (after half the tasks of a pass), rerun with the same arguments:
    the blocks done are skipped, those left are copied; units found are whole and right."""
    shape, chunks, target, factor = RESUMABLE[case]
    values = np.random.default_rng(6).random(shape).astype("float32")
    z = zarr.create_array(tmp_path / "src", shape=shape, chunks=chunks, dtype="float32",
                          compressors=ZstdCodec(level=1))
    z[...] = values
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    smallest = smallest_max_mem(lambda m: dask_lsio.rechunk(src, target, dst + "-probe", m))
    max_mem = factor * smallest
    fresh = dask_lsio.rechunk(src, target, str(tmp_path / "fresh"), max_mem)
    assert len(fresh.stages) == (1 if case == "one pass" else 2), fresh
    first = fresh.stages[0].tasks
    kill_after = {"one pass": first // 2, "two passes, killed in the first": first // 2,
                  "two passes, killed in the second": first + fresh.stages[-1].tasks // 2}
    said = run_until([src, json.dumps(target), dst, str(max_mem)], kill_after[case])
    assert said[0] == f"planned {len(fresh.stages)} {fresh.tasks}"
    written = chunk_objects(dst)
    units = math.prod(-(-n // c) for n, c in zip(shape, target))
    if case.endswith("first"):
        assert not written and chunk_objects(dst + ".rechunk-temp")
    else:
        assert 0 < len(written) < units, f"{len(written)} of {units} units: not part-way"
    if case.endswith("second"):  # blocks done deleted the intermediate units they read
        (middle,) = os.listdir(dst + ".rechunk-temp")
        whole = zarr.open_array(os.path.join(dst + ".rechunk-temp", middle)).nchunks
        left = len(chunk_objects(os.path.join(dst + ".rechunk-temp", middle)))
        assert 0 < left < whole, (left, whole)
    got = zarr.open_array(dst)
    for key in written:  # whole units (written atomically), with the right values
        box = tuple(slice(int(i) * c, int(i) * c + c) for i, c in zip(key.split("/")[1:],
                                                                      target))
        np.testing.assert_array_equal(got[box], values[box])
    plan = dask_lsio.rechunk(src, target, dst, max_mem)  # the same arguments: resumed
    print(f"\n{case}: killed after {kill_after[case]} tasks; {plan.skipped} of "
          f"{fresh.tasks} tasks skipped, {plan.tasks} to run\n{plan!r}")
    assert plan.skipped >= kill_after[case] - 2  # (two may have been writing when killed)
    assert plan.tasks + plan.skipped == fresh.tasks
    assert [s.block for s in plan.stages] == [s.block for s in fresh.stages]
    before = files_and_stamps(dst)
    plan.execute()
    after = files_and_stamps(dst)
    assert all(before[k] == after[k] for k in written), "complete units were written again"
    check_target(zarr.open_array(dst), z, values, target)
    assert not os.path.exists(dst + ".rechunk-temp")


@pytest.mark.parametrize("case", ["one pass", "two passes, killed in the second"])
def test_rerun_of_a_complete_run_skips_everything(tmp_path, case):
    shape, chunks, target, factor = RESUMABLE[case]
    values = np.random.default_rng(7).random(shape).astype("float32")
    z = zarr.create_array(tmp_path / "src", shape=shape, chunks=chunks, dtype="float32")
    z[...] = values
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    max_mem = factor * smallest_max_mem(lambda m: dask_lsio.rechunk(src, target, dst, m))
    first = dask_lsio.rechunk(src, target, dst, max_mem)
    first.execute()
    before = files_and_stamps(tmp_path)
    again = dask_lsio.rechunk(src, target, dst, max_mem)
    print(f"\nrerun of a complete run: tasks={again.tasks} skipped={again.skipped} "
          f"(first: tasks={first.tasks})")
    assert again.tasks == 0 and again.skipped == first.tasks
    assert isinstance(again.execute(), zarr.Array)
    assert files_and_stamps(tmp_path) == before  # nothing written, nothing left behind
    assert not os.path.exists(dst + ".rechunk-temp")
    check_target(zarr.open_array(dst), z, values, target)


def test_units_of_fill_value_count_as_not_done(tmp_path):
    values = np.random.default_rng(8).random((16, 16)).astype("float32")
    values[:, :8] = 0  # target units (16, 4) of columns 0..7: fill_value, never stored
    z = zarr.create_array(tmp_path / "src", shape=values.shape, chunks=(1, 16),
                          dtype="float32", fill_value=0)
    z[...] = values
    dask_lsio.rechunk(z, (16, 4), tmp_path / "dst", "64MiB").execute()
    assert chunk_objects(tmp_path / "dst") == ["c/0/2", "c/0/3"]
    again = dask_lsio.rechunk(z, (16, 4), tmp_path / "dst", "64MiB")
    assert again.tasks > 0  # recomputed (they may hold data that is not fill)
    again.execute()
    check_target(zarr.open_array(tmp_path / "dst"), z, values, (16, 4))


# -- memory ------------------------------------------------------------------------------------
MEASURE = """
import json, sys, dask_lsio
src, dst, max_mem = sys.argv[1], sys.argv[2], int(sys.argv[3])

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith(field + ":"))

plan = dask_lsio.rechunk(src, (256, 16, 16), dst, max_mem)
with open("/proc/self/clear_refs", "w") as f:  # the high-water mark from here
    f.write("5")
base = status("VmRSS")
plan.execute(scheduler="threads")
print(json.dumps({"base": base, "peak": status("VmHWM"), "stages": len(plan.stages),
                  "memory_per_task": plan.memory_per_task, "tasks": plan.tasks,
                  "plan": repr(plan)}))
"""


@pytest.mark.timeout(300)
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs /proc/self/clear_refs to reset the peak RSS")
def test_peak_memory_within_max_mem(tmp_path):
    """A 64 MiB rechunk with max_mem 32 MiB, in a subprocess: its peak RSS grows by at most
    max_mem + the stated overhead above its RSS after imports and planning, and by less than
    the array."""
    import importlib

    try:
        overhead = importlib.import_module("dask_lsio.graph.rechunk").MEMORY_OVERHEAD
    except (ImportError, AttributeError):
        overhead = 200 * MiB
    shape = (256, 256, 256)
    z = zarr.create_array(tmp_path / "src", shape=shape, chunks=(1, 256, 256),
                          dtype="float32", compressors=BloscCodec(cname="lz4"))
    rng = np.random.default_rng(9)
    for i in range(0, 256, 32):  # (random values in 3 decimals: compressible a little)
        z[i:i + 32] = np.round(rng.random((32, 256, 256)), 3).astype("float32")
    max_mem = 32 * MiB
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "src"),
                           str(tmp_path / "dst"), str(max_mem)],
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    growth = report["peak"] - report["base"]
    print(f"\npeak RSS growth {growth / MiB:.1f} MiB for max_mem {max_mem / MiB:.0f} MiB "
          f"(bound {(max_mem + overhead) / MiB:.0f} MiB; {report['stages']} stage(s), "
          f"{report['tasks']} tasks of {report['memory_per_task'] / MiB:.2f} MiB; base RSS "
          f"{report['base'] / MiB:.0f} MiB)\n{report['plan']}")
    assert growth <= max_mem + overhead, f"peak RSS grew {growth / MiB:.0f} MiB"
    # the documented bound has room; what the copy holds is less than the array (a copy
    # that held all 64 MiB at once would fail here; measured: 42-44 MiB, 2026-11-30)
    assert growth < math.prod(shape) * 4 - 8 * MiB, f"peak RSS grew {growth / MiB:.0f} MiB"
    got = zarr.open_array(tmp_path / "dst")
    assert got.chunks == (256, 16, 16)
    for i in range(0, 256, 64):
        np.testing.assert_array_equal(got[:, i:i + 64], z[:, i:i + 64])
