"""RandomCrops and iter_blocks: crops equal slices, sources align through coordinates,
seeds reproduce, order holds under random delays, memory stays bounded."""

from __future__ import annotations

import os
import random
import threading
import time

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

import dask_lsio
from dask_lsio.loader import RandomCrops, iter_blocks, stream


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """(time 24, y 40, x 48) float32 in 1x16x16 blosc chunks, a chunk left unwritten."""
    path = tmp_path_factory.mktemp("cube") / "a.zarr"
    values = np.random.default_rng(3).random((24, 40, 48)).astype("float32")
    z = zarr.create_array(path, shape=values.shape, chunks=(1, 16, 16), dtype="float32",
                          compressors=BloscCodec(cname="lz4"), fill_value=-1.0,
                          dimension_names=["time", "y", "x"])
    z[...] = values
    (path / "c" / "5" / "1" / "2").unlink()  # missing: fill_value
    values[5, 16:32, 32:48] = -1.0
    return str(path), values


def test_every_crop_equals_the_slice_at_its_location(cube):
    path, values = cube
    crops = RandomCrops(path, {"time": 4, "y": 16, "x": 20}, batch_size=8, seed=1, length=5)
    batches = list(crops)
    assert len(batches) == 5
    for b, batch in enumerate(batches):
        (name,) = batch
        starts = crops.locations(0, b)[name]
        assert batch[name].shape == (8, 4, 16, 20)
        for crop, (t, y, x) in zip(batch[name], starts.tolist()):
            np.testing.assert_array_equal(crop, values[t : t + 4, y : y + 16, x : x + 20])
            np.testing.assert_array_equal(crop, zarr.open_array(path)[t : t + 4, y : y + 16,
                                                                      x : x + 20])


def test_seeds_reproduce_and_epochs_differ(cube):
    path, _ = cube
    a = RandomCrops(path, (2, 8, 8), batch_size=4, seed=7, length=3)
    b = RandomCrops(path, (2, 8, 8), batch_size=4, seed=7, length=3, prefetch=0)
    first, again = list(a), list(b)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x["a.zarr"], y["a.zarr"])
    second_epoch = list(a)
    assert not np.array_equal(first[0]["a.zarr"], second_epoch[0]["a.zarr"])
    other = RandomCrops(path, (2, 8, 8), batch_size=4, seed=8, length=3)
    assert not np.array_equal(next(iter(other))["a.zarr"], first[0]["a.zarr"])


def test_sampler_and_padding(cube):
    path, values = cube
    corner = lambda rng, n: np.tile([[22, -3, 40]], (n, 1))  # noqa: E731
    padded = RandomCrops(path, (4, 8, 16), batch_size=2, seed=0, length=1, sampler=corner,
                         outside="pad", pad=np.nan)
    crop = next(iter(padded))["a.zarr"][0]
    assert np.isnan(crop[2:]).all() and np.isnan(crop[:, :3]).all() and np.isnan(crop[:, :, 8:]).all()
    np.testing.assert_array_equal(crop[:2, 3:, :8], values[22:24, 0:5, 40:48])
    with pytest.raises(ValueError, match="no crop location fits"):
        RandomCrops(path, (4, 8, 16), batch_size=2, seed=0, sampler=corner).batch(0, 0)


def _satellite_and_nwp(tmp_path):
    """Two grids whose values encode their own coordinates: satellite every 5 minutes on a
    1 km grid, NWP hourly on a 2 km grid over a smaller area (xarray, opened with
    dask_lsio.open_zarr)."""
    xr = pytest.importorskip("xarray")
    t0 = np.datetime64("2026-01-01T00:00")
    sat_t = t0 + np.arange(72) * np.timedelta64(5, "m")
    nwp_t = t0 + np.arange(7) * np.timedelta64(1, "h")
    sat_y, sat_x = np.arange(60.0), np.arange(80.0)
    nwp_y, nwp_x = np.arange(10.0, 50.0, 2.0), np.arange(4.0, 76.0, 2.0)

    def encode(times, ys, xs):  # minutes since t0 * 1e6 + y * 1e3 + x
        minutes = ((times - t0) // np.timedelta64(1, "m")).astype("float64")
        return minutes[:, None, None] * 1e6 + ys[None, :, None] * 1e3 + xs[None, None, :]

    for name, (t, y, x), chunks in [("sat", (sat_t, sat_y, sat_x), (1, 16, 16)),
                                    ("nwp", (nwp_t, nwp_y, nwp_x), (2, 8, 8))]:
        ds = xr.Dataset({"v": (("time", "y", "x"), encode(t, y, x))},
                        coords={"time": t, "y": y, "x": x})
        ds.to_zarr(tmp_path / f"{name}.zarr", encoding={"v": {"chunks": chunks}},
                   consolidated=False)
    return (dask_lsio.open_zarr(tmp_path / "sat.zarr", consolidated=False),
            dask_lsio.open_zarr(tmp_path / "nwp.zarr", consolidated=False))


def decode(value):
    return value // 1e6, (value % 1e6) // 1e3, value % 1e3


def test_two_sources_describe_the_same_place_and_time(tmp_path):
    sat, nwp = _satellite_and_nwp(tmp_path)
    crop = {"sat": {"time": 12, "y": 16, "x": 16}, "nwp": {"time": 2, "y": 8, "x": 8}}
    crops = RandomCrops({"sat": sat.v, "nwp": nwp.v}, crop, batch_size=16, seed=3, length=4)
    for batch in crops:
        assert batch["sat"].shape == (16, 12, 16, 16) and batch["nwp"].shape == (16, 2, 8, 8)
        for s, n in zip(batch["sat"], batch["nwp"]):
            st, sy, sx = decode(s[6, 8, 8])  # centre elements
            nt, ny, nx = decode(n[1, 4, 4])
            assert nt <= st < nt + 60  # the forecast step at or before the observation
            assert abs(ny - sy) <= 1 and abs(nx - sx) <= 1  # nearest on the 2 km grid
            # the crops are the arrays' own slices, whole
            assert (np.diff(decode(s)[0], axis=0) == 5).all()
            assert (np.diff(decode(n)[2], axis=2) == 2).all()
    rate = RandomCrops(sat.v, {"time": 12, "y": 16, "x": 16}, batch_size=4, seed=0)
    assert rate.sources[0].dims == ("time", "y", "x")


def test_sliced_dask_arrays_are_refused(cube):
    path, _ = cube
    with pytest.raises(dask_lsio.LSIOError, match="not a whole dask_lsio.from_zarr"):
        RandomCrops(dask_lsio.from_zarr(path)[2:], (1, 4, 4), batch_size=2)


def test_prefetch_is_bounded_with_a_slow_consumer(cube, monkeypatch):
    path, _ = cube
    crops = RandomCrops(path, (2, 8, 8), batch_size=2, seed=0, length=12, prefetch=3)
    started = []
    real = RandomCrops.batch

    def counted(self, epoch, number, **kw):
        started.append(number)
        return real(self, epoch, number, **kw)

    monkeypatch.setattr(RandomCrops, "batch", counted)
    for k, _ in enumerate(crops):
        assert len(started) <= k + 1 + 3  # the one held, and three ahead
        time.sleep(0.02)
    assert sorted(started) == list(range(12))


@pytest.mark.parametrize("cores, prefetch, threads, at_once, per_batch", [
    (2, 1, None, 1, 2), (2, 2, None, 2, 1), (2, 3, None, 2, 1), (2, 5, None, 2, 1),
    (4, 3, None, 3, 1), (8, 3, None, 3, 2), (2, 3, 3, 2, 3), (2, 0, None, 1, 2)])
def test_batches_read_at_once(cube, monkeypatch, cores, prefetch, threads, at_once, per_batch):
    """One batch per core is read at once (never more than prefetch), each decoded on the
    cores left over (one each, unless prefetch is below the cores); threads given are kept."""
    path, _ = cube
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    crops = RandomCrops(path, (2, 8, 8), batch_size=2, seed=0, length=9, prefetch=prefetch,
                        threads=threads)
    lock, running, most, used = threading.Lock(), [0], [0], set()
    real = RandomCrops.batch

    def slow(self, epoch, number, threads=None):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            used.add(threads or self.threads or os.cpu_count())
        time.sleep(0.05)
        try:
            return real(self, epoch, number, threads=threads)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(RandomCrops, "batch", slow)
    got = list(crops)
    assert len(got) == 9
    assert (most[0], used) == (at_once, {per_batch})
    monkeypatch.undo()
    for k, b in enumerate(got):  # the same batches as read one by one
        np.testing.assert_array_equal(b["a.zarr"], crops.batch(0, k)["a.zarr"])


@pytest.mark.parametrize("ordered", [True, False])
def test_iter_blocks_in_order_under_random_delays(cube, monkeypatch, ordered):
    path, values = cube
    arr = dask_lsio.from_zarr(path, chunks=(3, 40, 48))
    real = stream.read_region
    rng = random.Random(5)
    lock = threading.Lock()

    def slow(spec, region, *args, **kwargs):
        with lock:
            delay = rng.random() * 0.03
        time.sleep(delay)
        return real(spec, region, *args, **kwargs)

    monkeypatch.setattr(stream, "read_region", slow)
    blocks = list(iter_blocks(arr, axis=0, ordered=ordered, prefetch=4))
    assert len(blocks) == 8
    starts = [int(np.argmin(np.abs(values[:, 0, 0] - b[0, 0, 0]))) for b in blocks]
    if ordered:
        assert starts == list(range(0, 24, 3))
        np.testing.assert_array_equal(np.concatenate(blocks), values)
    else:
        assert sorted(starts) == list(range(0, 24, 3))
        for s, b in zip(starts, blocks):
            np.testing.assert_array_equal(b, values[s : s + 3])


def test_iter_blocks_other_axes_and_arrays(cube):
    path, values = cube
    got = list(iter_blocks(zarr.open_array(path), axis=-1, prefetch=2))
    np.testing.assert_array_equal(np.concatenate(got, axis=2), values)
    import dask.array as da

    plain = da.from_array(values, chunks=(5, 40, 48))
    np.testing.assert_array_equal(np.concatenate(list(iter_blocks(plain))), values)
    with pytest.raises(ValueError, match="axis 3"):
        next(iter_blocks(plain, axis=3))


def test_iter_blocks_bounded_with_a_slow_consumer(cube, monkeypatch):
    path, _ = cube
    started = []
    real = stream.read_region

    def counted(spec, region, *args, **kwargs):
        started.append(region[0].start)
        return real(spec, region, *args, **kwargs)

    monkeypatch.setattr(stream, "read_region", counted)
    arr = dask_lsio.from_zarr(path, chunks=(1, 40, 48))
    for k, _ in enumerate(iter_blocks(arr, prefetch=2)):
        assert len(started) <= k + 1 + 2
        time.sleep(0.01)
    assert len(started) == 24


def test_torch_dataloader_workers_share_batches_without_duplicates(cube):
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    path, _ = cube
    crops = RandomCrops(path, (2, 8, 8), batch_size=4, seed=11, length=10)
    data = dask_lsio.TorchCrops(crops)
    got = [b["a.zarr"].numpy() for b in DataLoader(data, batch_size=None, num_workers=2)]
    want = [crops.batch(0, k)["a.zarr"] for k in range(10)]
    found = sorted(next(k for k, w in enumerate(want) if np.array_equal(g, w)) for g in got)
    assert found == list(range(10))  # every batch of the epoch once, none twice
    data.set_epoch(1)
    assert not np.array_equal(next(iter(data))["a.zarr"].numpy(), want[0])


def test_batches_read_on_a_local_cluster_equal_local_ones(cube, loopback_cluster):
    path, _ = cube
    with loopback_cluster(n_workers=1, threads_per_worker=2) as (_, client):
        client.register_plugin(dask_lsio.LSIOWorkerPlugin())
        remote = RandomCrops(path, (2, 8, 8), batch_size=4, seed=5, length=5, client=client)
        local = RandomCrops(path, (2, 8, 8), batch_size=4, seed=5, length=5)
        pairs = list(zip(remote, local))
        assert len(pairs) == 5
        for r, l in pairs:
            np.testing.assert_array_equal(r["a.zarr"], l["a.zarr"])
        totals = client.run(lambda dask_worker: dask_worker.plugins["dask-lsio"].totals(
            dask_worker))
        (worker_totals,) = totals.values()
        assert worker_totals["lsio-read [objects]"] > 0  # read by the worker's engine


@pytest.fixture
def undecoded(tmp_path):
    """A sharded array whose chain dask-lsio does not decode (zarr-python 3.1 puts its
    default zstd after sharding_indexed when given serializer=ShardingCodec alone), with
    dimension names and values that encode their position."""
    import warnings

    from zarr.codecs import BytesCodec, ShardingCodec

    values = np.arange(16 * 8 * 8, dtype="float32").reshape(16, 8, 8)
    zarr.open_group(tmp_path / "g", mode="w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: sharding followed by a codec is slow
        z = zarr.create_array(tmp_path / "g" / "u", shape=values.shape, chunks=(4, 8, 8),
                              dtype="float32", dimension_names=["time", "y", "x"],
                              serializer=ShardingCodec(chunk_shape=(2, 8, 8),
                                                       codecs=[BytesCodec()]))
        z[...] = values
    return str(tmp_path / "g" / "u"), values


def test_crops_of_a_chain_we_do_not_decode_fall_back_to_zarr(undecoded):
    """Every front end reads what zarr-python reads: crops of such an array come from
    zarr-python, with a warning naming the array; lsio.strict refuses."""
    import dask

    path, values = undecoded
    xr = pytest.importorskip("xarray")
    with pytest.warns(UserWarning, match=r"sharding_indexed .*u'\): crops of source"):
        crops = RandomCrops(path, {"time": 3, "y": 5}, batch_size=6, seed=2, length=2,
                            outside="pad")
    for b, batch in enumerate(crops):
        for k, start in enumerate(crops.locations(0, b)["u"]):
            t, y, x = start.tolist()
            want = np.full((3, 5, 8), 0.0, "float32")  # zarr's fill_value pads
            part = values[max(t, 0):t + 3, max(y, 0):y + 5]
            want[max(-t, 0):max(-t, 0) + part.shape[0], max(-y, 0):max(-y, 0) + part.shape[1]] = part
            np.testing.assert_array_equal(batch["u"][k], want)
    with pytest.warns(UserWarning, match="through dask.array.from_zarr"):
        ds = dask_lsio.open_zarr(path.rsplit("/", 1)[0], consolidated=False)["u"].to_dataset()
    with pytest.warns(UserWarning, match="crops of source"):
        crops = RandomCrops(ds, {"time": 2}, batch_size=4, seed=3, length=1)
    (batch,) = list(crops)
    for k, start in enumerate(crops.locations(0, 0)["u"]):
        np.testing.assert_array_equal(batch["u"][k], values[start[0]:start[0] + 2])
    with pytest.warns(UserWarning, match="through dask.array.from_zarr"):
        np.testing.assert_array_equal(np.concatenate(list(iter_blocks(path))), values)
    with dask.config.set({"lsio.strict": True}):
        with pytest.raises(dask_lsio.UnsupportedCodecError, match="sharding_indexed"):
            RandomCrops(path, {"time": 3}, batch_size=2)
        with pytest.raises(dask_lsio.UnsupportedCodecError, match="sharding_indexed"):
            next(iter_blocks(path))
    del xr
