"""The shard-index cache of sharded box reads (``dask_lsio.zarr.shard.IndexCache``), shared
by the two prefetch threads of RandomCrops: thread-safe, bounded by the bytes of the index
arrays it keeps (``max_bytes``, default ``lsio.index-cache-bytes``), and every index it
returns is the one in the shard file."""

from __future__ import annotations

import os
import shutil
import threading
import traceback

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

import dask_lsio
from dask_lsio.io import get_engine
from dask_lsio.loader import RandomCrops
from dask_lsio.zarr.shard import IndexCache
from dask_lsio.zarr.spec import spec_from_array

# (512, 64) int32 in shards of (4, 64), chunks (2, 32): 128 shards of 4 inner chunks, index
# of 4 (offset, nbytes) uint64 pairs + crc32c at each shard's end
SHAPE, SHARDS, CHUNKS = (512, 64), (4, 64), (2, 32)
N_SHARDS = SHAPE[0] // SHARDS[0]
INNER = 4


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The array, with some shards missing and some inner chunks missing (fill_value), the
    rest zstd chunks of various sizes (so each shard's index differs); and each shard's
    index as read from its file's end, None for a missing one."""
    root = str(tmp_path_factory.mktemp("cache") / "a")
    z = zarr.create_array(root, shape=SHAPE, chunks=CHUNKS, shards=SHARDS, dtype="int32",
                          fill_value=0, compressors=ZstdCodec(level=1))
    rng = np.random.default_rng(0)
    widths = rng.integers(1, 31, (SHAPE[0] // CHUNKS[0], SHAPE[1] // CHUNKS[1]))
    values = rng.integers(0, 2**31 - 1, SHAPE, dtype="int32")
    values >>= np.repeat(np.repeat(31 - widths, CHUNKS[0], 0), CHUNKS[1], 1)
    values[rng.random(SHAPE[0] // CHUNKS[0]).repeat(CHUNKS[0]) < 0.1, :32] = 0  # inner missing
    z[...] = values
    truth: list[np.ndarray | None] = []
    for s in range(N_SHARDS):
        path = os.path.join(root, "c", str(s), "0")
        if s % 9 == 4:  # missing shards
            os.unlink(path)
        if not os.path.exists(path):
            truth.append(None)
            continue
        with open(path, "rb") as f:
            raw = f.read()
        truth.append(np.frombuffer(raw[-(16 * INNER + 4):-4], "<u8").copy())
    assert any(t is None for t in truth)
    assert len({t.tobytes() for t in truth if t is not None}) > N_SHARDS // 2  # they differ
    return root, truth


def _check(got, shards, truth, where=""):
    assert len(got) == len(shards), where
    for s, idx in zip(shards.reshape(-1).tolist(), got):
        want = truth[s]
        if want is None:
            assert idx is None, f"{where}: shard {s} is missing, got an index"
        else:
            assert idx is not None, f"{where}: shard {s} exists, got None"
            np.testing.assert_array_equal(np.asarray(idx).reshape(-1), want,
                                          err_msg=f"{where}: index of shard {s}")


def _positions(rows: np.ndarray) -> np.ndarray:
    """Grid positions (shard row, 0) of shard rows."""
    return np.stack([rows, np.zeros_like(rows)], axis=1).astype(np.int64)


def test_threads_share_an_evicting_cache(sharded):
    """Four threads call ``get`` on random overlapping shard sets for ~2.5 s with a bound of
    4 KiB (the 128 indexes take 8 KiB: it evicts all the time); a fifth watches it. No call
    raises; each index returned is the file's; ``nbytes`` never exceeds ``max_bytes``
    (one call asks for at most 6 shards: its own indexes fit well within the bound)."""
    root, truth = sharded
    max_bytes = 4096
    cache = IndexCache(spec_from_array(root, zarr.open_array(root, mode="r")),
                       max_bytes=max_bytes)
    stop = threading.Event()
    errors: list[str] = []
    calls = [0] * 4
    seen = {"nbytes": 0, "len": 0}

    def hammer(t: int) -> None:
        rng = np.random.default_rng(t)
        try:
            while not stop.is_set():
                hot = rng.random() < 0.5  # half the calls on a hot range: hits and evictions
                pool = 24 if hot else N_SHARDS
                rows = rng.choice(pool, int(rng.integers(1, 7)), replace=False)
                rows = rows + (int(rng.integers(0, N_SHARDS - pool + 1)) if hot else 0)
                got = cache.get(_positions(rows))
                _check(got, rows, truth, f"thread {t}")
                assert cache.nbytes <= max_bytes, f"nbytes {cache.nbytes} > {max_bytes}"
                calls[t] += 1
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())
            stop.set()

    def watch() -> None:
        try:
            while not stop.is_set():
                n, size = len(cache), cache.nbytes
                seen["nbytes"], seen["len"] = max(seen["nbytes"], size), max(seen["len"], n)
                assert size <= max_bytes, f"nbytes {size} > {max_bytes}"
                assert 0 <= n <= N_SHARDS
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())
            stop.set()

    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(4)]
    threads.append(threading.Thread(target=watch))
    for t in threads:
        t.start()
    stop.wait(2.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, "\n".join(errors)
    assert min(calls) > 50, calls
    present = sum(t is not None for t in truth)
    assert seen["len"] < present, "the cache never evicted: the test does not test eviction"
    assert 0 < seen["nbytes"] <= max_bytes


def test_bound_from_dask_config_and_lru(sharded):
    """``IndexCache(spec)`` takes its bound from ``lsio.index-cache-bytes``; reading every
    shard a few at a time keeps ``nbytes`` within it and returns every index right; a shard
    read again at once is still there (its index not reread)."""
    root, truth = sharded
    spec = spec_from_array(root, zarr.open_array(root, mode="r"))
    engine = get_engine()
    with dask.config.set({"lsio.index-cache-bytes": "1 KiB"}):
        cache = IndexCache(spec)
        for first in range(0, N_SHARDS, 3):
            rows = np.arange(first, min(first + 3, N_SHARDS))
            _check(cache.get(_positions(rows)), rows, truth, f"rows {rows}")
            assert cache.nbytes <= 1024
        assert 0 < len(cache) < sum(t is not None for t in truth)
        rows = np.array([N_SHARDS - 1])
        reads = engine.stats["batches"]
        _check(cache.get(_positions(rows)), rows, truth, "again")
        assert engine.stats["batches"] == reads  # a hit: no engine batch
    big = IndexCache(spec)  # the default (64 MiB): keeps them all
    rows = np.arange(N_SHARDS)
    _check(big.get(_positions(rows)), rows, truth, "all")
    assert len(big) >= sum(t is not None for t in truth)


# -- RandomCrops over 20,480 shards ------------------------------------------------------------

BIG = (40960, 8, 8)


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """(40960, 8, 8) float32 in 20,480 shards of (2, 8, 8), chunks (1, 8, 8): element
    ``[t, y, x]`` holds ``t * 64 + y * 8 + x`` (exact in float32), so a crop tells where it
    was cut; every other shard holds only fill_value -1 and has no file (half the files to
    create: the crops read present and missing shards alike). Written by dask_lsio.to_zarr;
    zarr-python reads a sample back. Deleted after the module's tests."""
    root = str(tmp_path_factory.mktemp("crops") / "a")
    values = np.arange(int(np.prod(BIG)), dtype="float32").reshape(BIG)
    values.reshape(BIG[0] // 4, 4, 8, 8)[:, 2:] = -1  # odd shards: rows 4k+2, 4k+3
    dask_lsio.to_zarr(da.from_array(values, chunks=(8192, 8, 8)), root, chunks=(1, 8, 8),
                      shards=(2, 8, 8), fill_value=-1, compressors=None)
    z = zarr.open_array(root, mode="r")
    assert z.shards == (2, 8, 8) and z.chunks == (1, 8, 8)
    assert len(os.listdir(os.path.join(root, "c"))) == BIG[0] // 4
    for t in np.random.default_rng(0).integers(0, BIG[0] // 2, 64).tolist():
        np.testing.assert_array_equal(z[2 * t : 2 * t + 2], values[2 * t : 2 * t + 2])
    np.testing.assert_array_equal(z[-512:], values[-512:])
    yield root, values
    shutil.rmtree(root)  # 10,240 files: not left for pytest to delete in a later session


def test_random_crops_with_a_small_index_cache(many_shards):
    """The tracker's case: RandomCrops (1, 8, 8) crops, batches of 512, prefetch 2 (two
    threads sharing the source's IndexCache), 150 batches: past batch ~65 the indexes of
    more than 16,384 shards have been read, and with ``lsio.index-cache-bytes`` at 64 KiB
    (at most 2,048 of these 32-byte indexes) the cache evicts within the first few batches.
    Every batch arrives, and every crop is the array's slice at its location."""
    root, values = many_shards
    name = os.path.basename(root)
    within = np.arange(64, dtype="float32").reshape(1, 8, 8)
    n = 0
    with dask.config.set({"lsio.index-cache-bytes": "64 KiB"}):
        crops = RandomCrops(root, (1, 8, 8), batch_size=512, seed=0, length=150, prefetch=2)
        for b, batch in enumerate(crops):
            got = batch[name]
            assert got.shape == (512, 1, 8, 8)
            starts = crops.locations(0, b)[name]
            assert (starts[:, 1:] == 0).all()
            rows = starts[:, 0]
            np.testing.assert_array_equal(got[:, 0], values[rows], err_msg=f"batch {b}")
            present = rows % 4 < 2
            assert present.any() and not present.all()
            # and on their own: each present crop is one whole slice, of the row it says
            said = got[present, 0, 0, 0] // 64
            np.testing.assert_array_equal(said, rows[present], err_msg=f"batch {b}")
            np.testing.assert_array_equal(got[present], said[:, None, None, None] * 64 + within,
                                          err_msg=f"batch {b}")
            assert (got[~present] == -1).all(), f"batch {b}: a missing shard's crop"
            n += 1
    assert n == 150
    (source,) = crops.sources
    assert source.indexes is not None and source.indexes.nbytes <= 64 * 1024
    assert len(source.indexes) <= 64 * 1024 // 32  # ~19,900 shards were read: it evicted
