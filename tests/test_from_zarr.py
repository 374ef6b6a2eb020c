"""from_zarr against zarr-python, the oracle: every array and selection reads the same."""

from __future__ import annotations

import os
import tempfile
import warnings
from unittest import mock

import dask
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr_cases import arrays, make_array

import dask_lsio
from dask_lsio.zarr import _kernel
from dask_lsio.graph.clients import active_client, queue_slots, task_threads, worker_threads
from dask_lsio.errors import ChunkDecodeError, LSIOError, UnsupportedCodecError
from dask_lsio.io import get_engine

def selections(shape, rng, n=6):
    out = [()]
    for _ in range(n):
        sel = []
        for d in shape:
            kind = rng.integers(0, 4)
            if d == 0 or kind == 0:
                sel.append(slice(None))
            elif kind == 1:
                sel.append(int(rng.integers(0, d)))
            elif kind == 2:
                a, b = sorted(rng.integers(0, d + 1, 2))
                sel.append(slice(int(a), int(b)))
            else:
                sel.append(slice(int(rng.integers(0, d)), None, int(rng.integers(1, 4))))
        out.append(tuple(sel))
    return out


@settings(max_examples=int(os.environ.get("LSIO_HYPOTHESIS_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=arrays(), seed=st.integers(0, 2**16))
def test_matches_zarr_python(spec, seed):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a")
        expected = make_array(path, spec, seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*does not decode")  # no fallback
            x = dask_lsio.from_zarr(path)
        assert x.shape == expected.shape and x.dtype == expected.dtype
        np.testing.assert_array_equal(x.compute(), expected)
        rng = np.random.default_rng(seed)
        for sel in selections(expected.shape, rng):
            np.testing.assert_array_equal(x[sel].compute(), expected[sel], err_msg=str(sel))
        small = dask_lsio.from_zarr(path, chunks=tuple(max(1, n // 2) for n in expected.shape))
        np.testing.assert_array_equal(small.compute(scheduler="sync"), expected)
        with mock.patch.object(_kernel, "_streamed", lambda out: True):  # every block streamed
            np.testing.assert_array_equal(small.compute(scheduler="sync"), expected)


@pytest.fixture
def big(tmp_path):
    """A (20, 256, 256) float32 array of 1x128x128 blosc chunks, and a sharded twin."""
    data = np.random.default_rng(1).random((20, 256, 256)).astype("float32")
    plain = zarr.create_array(tmp_path / "plain", shape=data.shape, chunks=(1, 128, 128),
                              dtype="float32", compressors=BloscCodec(cname="lz4"))
    plain[:] = data
    sharded = zarr.create_array(tmp_path / "sharded", shape=data.shape, chunks=(1, 128, 128),
                                shards=(4, 256, 256), dtype="float32", compressors=ZstdCodec())
    sharded[:] = data
    return tmp_path, data


def count_requests(fn):
    engine = get_engine()
    before = engine.stats["requests"]
    result = fn()
    return result, engine.stats["requests"] - before


def test_blocks_are_coarse_and_aligned(big):
    root, data = big
    x = dask_lsio.from_zarr(root / "plain")
    # 5 MiB: whole chunks, whole planes, and at least two blocks per core
    assert x.chunks[1:] == ((256,), (256,))
    assert len(x.chunks[0]) >= min(20, 2 * (os.cpu_count() or 1))
    assert len(set(x.chunks[0][:-1])) <= 1
    with dask.config.set({"array.chunk-size": "512KiB"}):
        y = dask_lsio.from_zarr(root / "sharded")
    assert all(c % 4 == 0 for c in y.chunks[0][:-1]) and y.chunks[1:] == ((256,), (256,))
    assert len(x.dask) == x.npartitions + 1  # the blocks and the source: a tiny graph


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint8", "float64"])
@pytest.mark.parametrize("codec", ["blosc-lz4", "blosc-lz4-noshuffle", "zstd", None])
def test_streamed_blocks_read_the_same(tmp_path, monkeypatch, dtype, codec):
    """Blocks placed with non-temporal stores (here every one) read the same values, whether
    a chunk lands in pieces (1x64x100 in blocks of whole planes) or whole (blocks of one
    chunk), sharded or not."""
    monkeypatch.setattr(_kernel, "_streamed", lambda out: True)
    data = (np.random.default_rng(2).random((6, 128, 200)) * 100).astype(dtype)
    comp = {"blosc-lz4": BloscCodec(cname="lz4", shuffle="shuffle"),
            "blosc-lz4-noshuffle": BloscCodec(cname="lz4", shuffle="noshuffle"),
            "zstd": ZstdCodec(), None: None}[codec]
    for shards in (None, (2, 128, 200)):
        path = tmp_path / f"a{shards is None}"
        z = zarr.create_array(path, shape=data.shape, chunks=(1, 64, 100), shards=shards,
                              dtype=dtype, compressors=comp)
        z[:] = data
        for chunks in ((2, 128, 200), (1, 64, 100)):
            got = dask_lsio.from_zarr(path, chunks=chunks).compute(scheduler="sync")
            np.testing.assert_array_equal(got, data, err_msg=f"{shards} {chunks}")
        boxes = dask_lsio.read_boxes(path, [[0, 3, 5], [4, 50, 90]], (2, 70, 110))
        np.testing.assert_array_equal(boxes[1], data[4:6, 50:120, 90:200])


def test_outputs_are_streamed_when_large_and_mapped():
    """Non-temporal stores for outputs of lsio.nontemporal-bytes or more whose memory is
    mapped already; not for fresh memory (its first-touch faults zero it through the cache)
    nor for small outputs (their reader finds them in cache)."""
    big = np.empty(32 << 20, np.uint8)
    assert not _kernel._streamed(big)  # fresh: nothing mapped yet
    big[::4096] = 1
    assert _kernel._streamed(big)
    assert not _kernel._streamed(big[: 8 << 20])  # below 16 MiB
    with dask.config.set({"lsio.nontemporal-bytes": "4 MiB"}):
        assert _kernel._streamed(big[: 8 << 20])
    half = np.empty(32 << 20, np.uint8)
    half[: 16 << 20] = 1
    assert not _kernel._streamed(half)  # only part of it mapped


def test_queue_slots_count_as_distributed_does():
    """ceil(worker-saturation x threads) per worker, at least one; none with queuing off
    or a setting that is not a number; threads: the workers', else num_workers or cores."""
    assert queue_slots([1, 1]) == 4 and queue_slots([4]) == 5 and queue_slots([1, 2, 8]) == 14
    for value, slots in ((0.5, 4), ("inf", None), (float("inf"), None), ("many", None)):
        with dask.config.set({"distributed.scheduler.worker-saturation": value}):
            assert queue_slots([1, 2, 3]) == slots
    assert task_threads([3, 1]) == 4
    with dask.config.set(num_workers=5):
        assert task_threads(None) == 5


def test_blocks_on_a_cluster(big, loopback_cluster):
    """With a distributed client: at least two blocks per thread of the cluster (not of
    this machine), and blocks of up to twice array.chunk-size where that makes them no more
    than the tasks the scheduler sends at once (ceil(1.1 x threads) per worker), which it
    would otherwise queue; larger arrays, and a scheduler that does not queue, keep blocks
    of chunk-size."""
    root, data = big  # 5 MiB: planes of 256 KiB, stored chunks of 64 KiB (1x128x128)
    sizes = ("1MiB", "512KiB", "128KiB")

    def planes_per_block() -> dict[str, tuple[int, ...]]:
        out = {}
        for size in sizes:
            with dask.config.set({"array.chunk-size": size}):
                out[size] = dask_lsio.from_zarr(root / "plain").chunks[0]
        return out

    here = planes_per_block()
    with loopback_cluster(n_workers=2, threads_per_worker=2, processes=False) as (_, client):
        assert worker_threads(client) == [2, 2]
        assert task_threads([2, 2]) == 4 and queue_slots([2, 2]) == 6
        on_cluster = planes_per_block()
        with dask.config.set({"distributed.scheduler.worker-saturation": "inf"}):
            assert queue_slots([2, 2]) is None
            unqueued = planes_per_block()
        with dask.config.set({"array.chunk-size": "1MiB"}):
            np.testing.assert_array_equal(dask_lsio.from_zarr(root / "plain").compute(), data)
        # dask's scheduler set to threads: graphs run here, beside the client
        with dask.config.set({"scheduler": "threads"}):
            assert active_client() is None
            assert planes_per_block() == here
    # 1 MiB: two planes a block (two per cluster thread) would be 10 tasks, 4 queued; five
    # blocks of four planes (1 MiB) are sent at once
    assert on_cluster["1MiB"] == (4,) * 5 and unqueued["1MiB"] == (2,) * 10
    # 512 KiB: six tasks at once would take blocks over twice chunk-size: as they are
    assert on_cluster["512KiB"] == unqueued["512KiB"] == here["512KiB"] == (2,) * 10
    assert on_cluster["128KiB"] == unqueued["128KiB"] == here["128KiB"]


def test_slices_are_pushed_down(big):
    root, data = big
    x = dask_lsio.from_zarr(root / "plain")
    got, n = count_requests(lambda: x[7, :100, :100].compute())
    np.testing.assert_array_equal(got, data[7, :100, :100])
    assert n == 1  # one chunk object
    got, n = count_requests(lambda: x[3:5, 120:140, 0].compute())
    np.testing.assert_array_equal(got, data[3:5, 120:140, 0])
    assert n == 4
    s = dask_lsio.from_zarr(root / "sharded")
    got, n = count_requests(lambda: s[7, :100, :100].compute())
    np.testing.assert_array_equal(got, data[7, :100, :100])
    assert n == 2  # the shard index, then one inner chunk
    got, n = count_requests(lambda: s.sum().compute())
    assert np.isclose(got, data.sum(dtype="float64"), rtol=1e-5)
    # per shard: its index, then all its inner chunks in one read; the index of the shard
    # read above is kept (the very file's), so it is not read again
    assert n == 2 * 5 - 1
    got, n = count_requests(lambda: s.sum().compute())
    assert n == 5  # every index kept: one read per shard
    for gap, most in [("1GiB", 1), (0, 4)]:  # 4 inner chunks: one read, or up to one each
        with dask.config.set({"lsio.coalesce-gap": gap}):
            got, n = count_requests(lambda: s[0, :, :200].compute())
        np.testing.assert_array_equal(got, data[0, :, :200])
        assert 1 <= n <= most  # (the shard's index is kept from the reads above)


@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes"])
def test_schedulers(big, scheduler):
    root, data = big
    x = dask_lsio.from_zarr(root / "sharded", chunks=(4, 128, 256))
    np.testing.assert_array_equal(x.compute(scheduler=scheduler), data)


def test_accepts_zarr_array_group_component_and_url(big):
    root, data = big
    zarr.open_group(root / "g", mode="w").create_array("v", data=data[:2])
    np.testing.assert_array_equal(dask_lsio.from_zarr(zarr.open_array(root / "plain")).compute(), data)
    np.testing.assert_array_equal(dask_lsio.from_zarr(root / "g", component="v").compute(), data[:2])
    np.testing.assert_array_equal(dask_lsio.from_zarr(f"file://{root}/plain")[0].compute(), data[0])


def test_missing_array(tmp_path):
    """The error zarr-python and dask raise (ArrayNotFoundError: a FileNotFoundError and a
    ValueError), also an LSIOError, naming the place."""
    for catch in (FileNotFoundError, ValueError, zarr.errors.ArrayNotFoundError, LSIOError):
        with pytest.raises(catch, match="no Zarr array at .*nothing.*found nothing"):
            dask_lsio.from_zarr(tmp_path / "nothing")
    zarr.open_group(tmp_path / "g", mode="w")
    with pytest.raises(dask_lsio.ArrayNotFoundError, match="found a group"):
        dask_lsio.from_zarr(tmp_path / "g")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "zarr.json").write_text("{not json")
    with pytest.raises(LSIOError, match="unreadable Zarr metadata at .*bad"):
        dask_lsio.from_zarr(tmp_path / "bad")


def corrupt(path, how):
    with open(path, "r+b") as f:
        raw = f.read()
        f.seek(0)
        f.truncate()
        f.write(raw[: len(raw) // 2] if how == "truncate" else b"\x07" * len(raw))


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_corrupt_chunk_names_key_and_codec(big, how):
    root, data = big
    corrupt(root / "plain" / "c" / "3" / "1" / "0", how)
    x = dask_lsio.from_zarr(root / "plain")
    with pytest.raises(ChunkDecodeError, match=r"c/3/1/0.*blosc"):
        x.compute()
    np.testing.assert_array_equal(x[4].compute(), data[4])  # the rest still reads


@pytest.mark.parametrize("how", ["truncate", "garbage"])
@pytest.mark.parametrize("comp", [BloscCodec(cname="lz4"), ZstdCodec(), Crc32cCodec()])
def test_corrupt_chunk_decoded_in_place(tmp_path, how, comp):
    """1-d chunks land in contiguous pieces of the block: they decode straight into it."""
    data = np.random.default_rng(3).random(4000)
    z = zarr.create_array(tmp_path / "a", shape=data.shape, chunks=(1000,), dtype="float64",
                          compressors=comp)
    z[:] = data
    np.testing.assert_array_equal(dask_lsio.from_zarr(tmp_path / "a").compute(), data)
    corrupt(tmp_path / "a" / "c" / "2", how)
    with pytest.raises(ChunkDecodeError, match="c/2"):
        dask_lsio.from_zarr(tmp_path / "a").compute()


def test_unreadable_chunk_raises_the_os_error(big):
    root, data = big
    chunk = root / "plain" / "c" / "2" / "0" / "1"
    chunk.unlink()
    chunk.mkdir()  # a directory where a chunk object should be
    with pytest.raises(IsADirectoryError) as info:
        dask_lsio.from_zarr(root / "plain").compute()
    assert info.value.filename == str(chunk)
    assert any(str(root / "plain") in note for note in info.value.__notes__)


def test_checksum_mismatch(tmp_path):
    z = zarr.create_array(tmp_path / "a", shape=(10,), chunks=(5,), dtype="int32",
                          compressors=Crc32cCodec())
    z[:] = np.arange(10)
    with open(tmp_path / "a" / "c" / "1", "r+b") as f:
        f.seek(2)
        f.write(b"\xff")
    with pytest.raises(ChunkDecodeError, match="crc32c mismatch"):
        dask_lsio.from_zarr(tmp_path / "a").compute()


def test_corrupt_shard_index(big):
    root, data = big
    shard = root / "sharded" / "c" / "1" / "0" / "0"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-3] + b"\x00\x00\x00")
    with pytest.raises(ChunkDecodeError, match=r"c/1/0/0.*index crc32c mismatch"):
        dask_lsio.from_zarr(root / "sharded").compute()
    shard.write_bytes(raw[:10])
    with pytest.raises(ChunkDecodeError, match="index of 10 bytes"):
        dask_lsio.from_zarr(root / "sharded")[4:8].compute()


@pytest.mark.parametrize("name", ["Zlib", "LZ4", "BZ2", "LZMA", "Delta"])
def test_numcodecs_v3_codecs(tmp_path, name):
    import numcodecs.zarr3 as nz

    data = np.arange(1000, dtype="int32").reshape(10, 100)
    codec = getattr(nz, name)(dtype="int32") if name == "Delta" else getattr(nz, name)()
    kind = {"filters": [codec], "compressors": None} if name == "Delta" else {"compressors": codec}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns that numcodecs.* codecs are not in the spec
        zarr.create_array(tmp_path / "a", shape=data.shape, chunks=(3, 30), dtype="int32",
                          **kind)[:] = data
        warnings.filterwarnings("error", message=".*does not decode")
        np.testing.assert_array_equal(dask_lsio.from_zarr(tmp_path / "a").compute(), data)


def test_unsupported_codec_falls_back_or_raises(tmp_path):
    z = zarr.create_array(tmp_path / "s", shape=(4,), chunks=(2,), dtype=str)
    z[:] = np.array(["a", "bb", "ccc", "d"])
    with pytest.warns(UserWarning, match="does not decode .*zarr-python"):
        x = dask_lsio.from_zarr(tmp_path / "s")
    assert list(x.compute()) == ["a", "bb", "ccc", "d"]
    with dask.config.set({"lsio.strict": True}), pytest.raises(UnsupportedCodecError):
        dask_lsio.from_zarr(tmp_path / "s")


def test_distributed_local_cluster(big, loopback_cluster):
    root, data = big
    with loopback_cluster(n_workers=2) as (_, client):
        x = dask_lsio.from_zarr(root / "sharded", chunks=(4, 256, 256))
        np.testing.assert_array_equal(client.compute(x).result(), data)
        total = client.compute(dask_lsio.from_zarr(root / "plain").sum()).result()
        assert np.isclose(total, data.sum(dtype="float64"), rtol=1e-5)
