"""Several writers into one array at once, and readers during writes.

Writers that write disjoint regions sharing a shard (or a chunk) must not lose each other's
values: a region that splits a write unit is read, merged and written whole, and two such
read-merge-writes of one unit at once must not both start from the old unit. Readers must
never see a shard half old, half new (an index of one version with the data of another).

zarr-python reading the array is the oracle. Every written value encodes its position (and
so its writer), so a lost region reads back as fill_value 0.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import traceback

import dask.array as da
import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

import dask_lsio

LSIO = {"codec_pipeline.path": "dask_lsio.zarr.LSIOCodecPipeline"}
WRITERS = 4
SHAPE = (240, 32, 32)  # four writers of 60 rows: two per shard of 120, regions on chunks of 20
SHARDS = (120, 32, 32)
CHUNKS = (20, 16, 16)
ROWS = 60
VALUES = np.arange(1, int(np.prod(SHAPE)) + 1, dtype="int32").reshape(SHAPE)  # never 0


def create(path, **kwargs):
    options = dict(shape=SHAPE, chunks=CHUNKS, shards=SHARDS, dtype="int32", fill_value=0,
                   compressors=ZstdCodec(level=1)) | kwargs
    return zarr.create_array(path, **options)


def region(i: int, rows: int = ROWS) -> slice:
    return slice(rows * i, rows * i + rows)


def check_all_present(path, expected, trial, rows=ROWS) -> None:
    """zarr-python (default pipeline) reads back every writer's values."""
    got = zarr.open_array(path, mode="r")[...]
    lost = [i for i in range(len(expected) // rows)
            if not np.array_equal(got[region(i, rows)], expected[region(i, rows)])]
    assert not lost, (f"trial {trial}: rows of writers {lost} lost "
                      f"(e.g. {[int((got[region(i, rows)] == 0).sum()) for i in lost]} "
                      "elements back at fill_value)")


def run_threads(target, n: int) -> None:
    """Run ``target(i, barrier)`` on ``n`` threads started together; re-raise any error."""
    barrier = threading.Barrier(n)
    errors: list[str] = []

    def run(i: int) -> None:
        try:
            target(i, barrier)
        except BaseException:  # noqa: BLE001  (reported by the test thread)
            errors.append(traceback.format_exc())
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer hangs"
    assert not errors, "\n".join(errors)


def test_threads_to_zarr_regions_sharing_shards(tmp_path):
    """Four threads, each ``dask_lsio.to_zarr(block, path, region=60 rows)``: two regions
    per shard, aligned to chunks but not to shards. Ten trials, each into a new array."""
    for trial in range(10):
        path = str(tmp_path / f"a{trial}")
        create(path)

        def write(i, barrier):
            block = da.from_array(VALUES[region(i)], chunks=(20, 32, 32))
            barrier.wait(60)
            dask_lsio.to_zarr(block, path, region=(region(i),))

        run_threads(write, WRITERS)
        check_all_present(path, VALUES, trial)


def test_threads_through_the_pipeline_sharing_shards(tmp_path):
    """The same through zarr-python with LSIOCodecPipeline: ``z[60*i:60*i+60] = block`` on
    an array opened per thread. Ten trials."""
    for trial in range(10):
        path = str(tmp_path / f"a{trial}")
        create(path)
        with zarr.config.set(LSIO):
            arrays = [zarr.open_array(path, mode="r+") for _ in range(WRITERS)]
        for z in arrays:
            assert type(z._async_array.codec_pipeline).__name__ == "LSIOCodecPipeline"

        def write(i, barrier):
            barrier.wait(60)
            arrays[i][region(i)] = VALUES[region(i)]

        run_threads(write, WRITERS)
        check_all_present(path, VALUES, trial)


@pytest.mark.parametrize("how", ["to_zarr", "pipeline"])
@pytest.mark.parametrize("fmt", [2, 3])
def test_threads_regions_splitting_unsharded_chunks(tmp_path, how, fmt):
    """Unsharded arrays (v2, v3) with chunks of 20 rows, four writers of 10 rows: each chunk
    is shared by two writers (read, merged and written whole by each). Ten trials."""
    rows, shape = 10, (40, 32, 32)
    expected = VALUES[: shape[0]]
    for trial in range(10):
        path = str(tmp_path / f"a{trial}")
        create(path, shape=shape, chunks=(20, 16, 16), shards=None, zarr_format=fmt,
               compressors=None if fmt == 2 else ZstdCodec(level=1))
        with zarr.config.set(LSIO):
            arrays = [zarr.open_array(path, mode="r+") for _ in range(WRITERS)]
        assert type(arrays[0]._async_array.codec_pipeline).__name__ == "LSIOCodecPipeline"

        def write(i, barrier):
            part = expected[region(i, rows)]
            if how == "to_zarr":
                block = da.from_array(part, chunks=(5, 32, 32))
                barrier.wait(60)
                dask_lsio.to_zarr(block, path, region=(region(i, rows),))
            else:
                barrier.wait(60)
                arrays[i][region(i, rows)] = part

        run_threads(write, WRITERS)
        check_all_present(path, expected, trial, rows)


def _process_writer(i: int, paths: list[str], barrier, errors) -> None:
    """One writer process: for every trial's array, wait for the others, write its rows."""
    try:
        block = VALUES[region(i)]
        for path in paths:
            barrier.wait(120)
            dask_lsio.to_zarr(da.from_array(block, chunks=(20, 32, 32)), path,
                              region=(region(i),))
    except BaseException:  # noqa: BLE001
        errors.put(f"writer {i}: {traceback.format_exc()}")
        barrier.abort()


def test_processes_to_zarr_regions_sharing_shards(tmp_path):
    """Four processes (spawned once; each trial starts at a shared barrier), each writing
    its 60 rows with ``dask_lsio.to_zarr(..., region=...)``, in four trials."""
    trials = 4
    paths = [str(tmp_path / f"a{t}") for t in range(trials)]
    for p in paths:
        create(p)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    errors = ctx.Queue()
    procs = [ctx.Process(target=_process_writer, args=(i, paths, barrier, errors))
             for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures)
    assert not alive and all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    for trial, path in enumerate(paths):
        check_all_present(path, VALUES, trial)


# -- readers during writes ---------------------------------------------------------------------

R_SHAPE, R_SHARDS, R_CHUNKS = (8, 64, 64), (2, 64, 64), (1, 32, 32)


def version(v: int) -> np.ndarray:
    """The array's values in version ``v``: ``v`` in the high bits of every element, random
    low bits of a width that varies with ``v`` (so the zstd inner chunks change size, and
    so do the offsets in each shard's index)."""
    width = 1 + (v * 7) % 19
    low = np.random.default_rng(v).integers(0, 2**width, R_SHAPE, dtype="int32")
    return (np.int32(v) << 20) | low


def versioned_array(path: str):
    """A sharded array of zstd inner chunks holding :func:`version` 0."""
    z = zarr.create_array(path, shape=R_SHAPE, chunks=R_CHUNKS, shards=R_SHARDS, dtype="int32",
                          fill_value=0, compressors=ZstdCodec(level=1))
    z[...] = version(0)
    return z


@contextlib.contextmanager
def rewriting(write):
    """Call ``write(version(v))`` for v = 1, 2, ... on a thread while the block runs; after
    it, check that the writer raised nothing and that the block overlapped many rewrites."""
    stop = threading.Event()
    errors: list[str] = []
    written = [0]

    def rewrite() -> None:
        try:
            v = 0
            while not stop.is_set() and v < 2000:
                v += 1
                write(version(v))
                written[0] = v
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())

    thread = threading.Thread(target=rewrite)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
    assert not errors, "\n".join(errors)
    assert written[0] >= 10  # the reads did overlap many rewrites


class Versions(dict):
    """version -> its values, made on first use."""

    def __missing__(self, v: int) -> np.ndarray:
        self[v] = version(v)
        return self[v]


@pytest.mark.parametrize("writer", ["to_zarr", "pipeline"])
def test_readers_see_whole_shards_during_rewrites(tmp_path, writer):
    """One thread rewrites every shard whole, again and again, each time with new values
    whose compressed inner chunks have other sizes; meanwhile ``from_zarr(path).compute()``
    and zarr-python with our pipeline read the array: each shard of every read equals that
    shard in one written version (no ChunkDecodeError, no mix of two versions)."""
    path = str(tmp_path / "a")
    versioned_array(path)
    versions = Versions()
    with zarr.config.set(LSIO):
        ours = zarr.open_array(path, mode="r+")
        reader = zarr.open_array(path, mode="r")
    assert type(ours._async_array.codec_pipeline).__name__ == "LSIOCodecPipeline"

    def write(values: np.ndarray) -> None:
        if writer == "to_zarr":
            dask_lsio.to_zarr(da.from_array(values, chunks=R_SHARDS), path)
        else:
            ours[...] = values

    def check(got: np.ndarray, how: str, k: int) -> None:
        for s in range(R_SHAPE[0] // R_SHARDS[0]):
            rows = slice(s * R_SHARDS[0], (s + 1) * R_SHARDS[0])
            shard = got[rows]
            v = int(shard.flat[0]) >> 20
            assert 0 <= v <= 2000, f"read {k} through {how}: shard {s} holds no version"
            assert np.array_equal(shard, versions[v][rows]), (
                f"read {k} through {how}: shard {s} is no written version (its first "
                f"element says version {v}; versions seen: "
                f"{sorted(set((shard >> 20).ravel().tolist()))})")

    with rewriting(write):
        for k in range(60):
            check(dask_lsio.from_zarr(path).compute(), "dask_lsio.from_zarr", k)
            check(reader[...], "zarr-python with LSIOCodecPipeline", k)


def test_crops_with_kept_indexes_see_whole_shards_during_rewrites(tmp_path):
    """Boxes read with an IndexCache kept between reads (as RandomCrops does) while a thread
    rewrites every shard with inner chunks of other sizes: a kept index is used only for the
    file it was read from, so every box equals its shard in one written version."""
    from dask_lsio.zarr.read import read_boxes
    from dask_lsio.zarr.shard import IndexCache
    from dask_lsio.zarr.spec import spec_from_array

    path = str(tmp_path / "a")
    spec = spec_from_array(path, versioned_array(path))
    cache = IndexCache(spec)
    versions = Versions()
    rng = np.random.default_rng(0)
    shape = (R_SHARDS[0], 24, 24)  # boxes within one shard along the first axis

    def write(values: np.ndarray) -> None:
        dask_lsio.to_zarr(da.from_array(values, chunks=R_SHARDS), path)

    with rewriting(write):
        for k in range(200):
            starts = np.stack([rng.integers(0, R_SHAPE[0] // R_SHARDS[0], 16) * R_SHARDS[0],
                               rng.integers(0, R_SHAPE[1] - 24, 16),
                               rng.integers(0, R_SHAPE[2] - 24, 16)], axis=1)
            boxes = read_boxes(spec, starts, shape, indexes=cache)
            for b, (t, y, x) in enumerate(starts.tolist()):
                want = versions[int(boxes[b].flat[0]) >> 20][t:t + shape[0], y:y + 24, x:x + 24]
                assert np.array_equal(boxes[b], want), (
                    f"read {k}, box {b}: not shard {t // R_SHARDS[0]} of one written version")
