"""The object-store backend at the store level, on a real S3 server (moto) on loopback.

What its options mean (fsspec's names mapped to obstore's, unknown ones refused, credentials
never shown); each Store method against the server; versions: held reads that see a rewrite
fail instead of mixing versions, conditional PUTs refuse to overwrite another writer's
object; kept shard indexes never serve another version (a rewritten shard, a shard created
after it was seen missing); faults: retries counted, errors naming store, key and status.
"""

from __future__ import annotations

import pickle

import dask
import numpy as np
import pytest
import zarr

pytest.importorskip("obstore")

from dask.base import tokenize  # noqa: E402

import dask_lsio  # noqa: E402
from dask_lsio.errors import BatchIOError, VersionConflictError  # noqa: E402
from dask_lsio.io import get_engine  # noqa: E402
from dask_lsio.store import ABSENT, ObjectStore, Version, open_store  # noqa: E402
from dask_lsio.store.object_options import Secret, parse  # noqa: E402
from s3_fixtures import SECRET  # noqa: E402


def _store(s3, prefix: str = "") -> ObjectStore:
    store = open_store(f"{s3.url}/{prefix}".rstrip("/"), s3.storage_options)
    assert isinstance(store, ObjectStore)
    return store


def _store_totals(store: ObjectStore) -> dict[str, float]:
    get_engine()  # the process's engine, where the store counts once there is one
    return {label: v for (label, unit), v in store.totals.snapshot().items()
            if label.startswith("lsio-store")}


# -- options -------------------------------------------------------------------------------
def test_fsspec_names_map_to_obstore():
    t = parse("s3://bkt/a/b", {"key": "K", "secret": "S", "endpoint_url": "http://h:1",
                               "client_kwargs": {"region_name": "eu-west-1"}})
    assert (t.backend, t.root, t.prefix) == ("s3", "bkt", "a/b")
    cfg = t.config()
    assert cfg["access_key_id"] == "K" and cfg["secret_access_key"] == "S"
    assert cfg["endpoint"] == "http://h:1" and cfg["region"] == "eu-west-1"
    assert parse("s3://bkt", {"anon": True}).config()["skip_signature"] is True
    assert parse("gs://b/p", {"token": "anon"}).config()["skip_signature"] is True
    az = parse("abfs://cont@acct.dfs.core.windows.net/x", {"account_key": "AK"})
    assert (az.backend, az.root, az.prefix) == ("azure", "cont", "x")
    assert az.config()["account_name"] == "acct"
    assert parse("https://example.org/data/x.zarr").url == "https://example.org/data/x.zarr"


def test_unknown_option_raises_naming_it_not_its_value():
    with pytest.raises(TypeError, match="secret_key") as info:
        open_store("s3://bkt/x", {"secret_key": "VALUE-NOT-SHOWN"})
    assert "VALUE-NOT-SHOWN" not in str(info.value)
    with pytest.raises(TypeError, match="account_key"):
        open_store("gs://bkt/x", {"account_key": "k"})


def test_credentials_never_shown():
    store = open_store("s3://bkt/x", {"key": "K", "secret": SECRET, "endpoint_url": "http://h:1"})
    for text in (repr(store), str(store.description), store.url, store.name("c/0"),
                 tokenize(store), repr(store.child("y"))):
        assert SECRET not in text
    assert repr(Secret(SECRET)) == "Secret(***)"
    # equal stores (same credentials) tokenize equal; other credentials do not
    other = open_store("s3://bkt/x", {"key": "K", "secret": "other", "endpoint_url": "http://h:1"})
    assert store == open_store("s3://bkt/x", {"key": "K", "secret": SECRET,
                                              "endpoint_url": "http://h:1"})
    assert store != other and tokenize(store) != tokenize(other)


def test_credentials_travel_only_when_allowed():
    store = open_store("s3://bkt/x", {"key": "K", "secret": SECRET})
    assert SECRET.encode() in pickle.dumps(store)
    assert pickle.loads(pickle.dumps(store)) == store
    with dask.config.set({"lsio.store.send-credentials": False}):
        data = pickle.dumps(store)
    assert SECRET.encode() not in data
    assert "secret_access_key" not in pickle.loads(data).target.config()  # the worker's own


# -- the store's methods on a server ---------------------------------------------------------
def test_put_get_ranges_has_sizes_list_delete(s3):
    store = _store(s3, "p")
    assert store.put([("a", b"0123456789"), ("d/b", b"xyz")]) == [10, 3]
    got = dict(store.get(["a", "a", "a", "a", "d/b"], np.array([0, 2, -3, 4]).tolist() + [0],
                         [-1, 3, -1, -1, -1]))
    assert [bytes(got[i]) for i in range(5)] == [b"0123456789", b"234", b"789", b"456789",
                                                 b"xyz"]
    assert store.has(["a", "nope", "d/b"]) == [True, False, True]
    assert store.sizes(["a", "nope"]) == [10, None]
    assert store.list() == ["a", "d/b"] and store.list("d/") == ["d/b"]
    assert store.child("d").list() == ["b"]
    missing = dict(store.get(["nope"]))[0]
    assert isinstance(missing, FileNotFoundError) and "p/nope" in str(missing)
    with pytest.raises(BatchIOError) as info:
        list(store.get(["a", "nope"], errors="raise"))
    assert isinstance(info.value.exceptions[0], FileNotFoundError)
    store.delete(["a", "never-was"])
    assert store.has(["a"]) == [False]
    # zarr-python sees the same objects
    assert zarr.storage.ObjectStore is type(store.zarr_target.store)


def test_held_reads_see_one_version(s3):
    store = _store(s3)
    store.put([("shard", b"version-one")])
    with store.hold(["shard", "gone"]) as held:
        assert held.identity(0) is None and held.present(0) is None  # known once read
        assert bytes(dict(held.reader.get(["shard"], [-3], [-1]))[0]) == b"one"
        first = held.identity(0)
        assert isinstance(first, Version) and first.size == len(b"version-one")
        assert held.reader.sizes(["shard"]) == [first.size]  # no request needed
        assert isinstance(dict(held.reader.get(["gone"]))[0], FileNotFoundError)
        assert held.identity(1) == ABSENT and held.present(1) is False
        store.put([("shard", b"version-two!")])  # another writer, meanwhile
        res = dict(held.reader.get(["shard"], [0], [7]))[0]
        assert isinstance(res, VersionConflictError)  # never bytes of another version
    assert bytes(dict(store.get(["shard"]))[0]) == b"version-two!"


def test_conditional_put_refuses_to_overwrite_another_writer(s3):
    store = _store(s3)
    store.put([("k", b"one")])
    with store.hold(["k", "new"]) as held:
        list(held.reader.get(["k", "new"]))
        seen = {"k": held.identity(0), "new": held.identity(1)}
    store.put([("k", b"two"), ("new", b"first")])  # another writer was quicker
    before = _store_totals(store).get("lsio-store-conflicts", 0)
    with pytest.raises(BatchIOError) as info:
        store.put([("k", b"mine"), ("new", b"mine")], expect=seen)
    assert all(isinstance(e, VersionConflictError) for e in info.value.exceptions)
    assert len(info.value.exceptions) == 2
    assert _store_totals(store)["lsio-store-conflicts"] - before == 2
    assert [bytes(dict(store.get([k]))[0]) for k in ("k", "new")] == [b"two", b"first"]
    # at the version it holds, the write goes through
    with store.hold(["k"]) as held:
        list(held.reader.get(["k"]))
        ok = {"k": held.identity(0)}
    store.put([("k", b"mine")], expect=ok)
    assert bytes(dict(store.get(["k"]))[0]) == b"mine"


# -- kept shard indexes ------------------------------------------------------------------------
def _sharded(s3, name: str, fill: float = 0.0):
    root = zarr.open_group(store=s3.zarr_store(), mode="a")
    return root.create_array(name, shape=(8, 8), chunks=(2, 2), shards=(4, 4), dtype="f4",
                             fill_value=fill)


def test_a_rewritten_shard_is_read_again(s3):
    z = _sharded(s3, "a")
    z[...] = np.arange(64, dtype="f4").reshape(8, 8)
    url, so = f"{s3.url}/a", s3.storage_options
    assert np.array_equal(dask_lsio.from_zarr(url, storage_options=so).compute(), z[...])
    z[0:4, 0:4] = -1  # another writer rewrites a shard whose index this process keeps
    assert np.array_equal(dask_lsio.from_zarr(url, storage_options=so).compute(), z[...])


def test_a_shard_seen_missing_is_looked_for_again(s3):
    z = _sharded(s3, "b", fill=7)
    url, so = f"{s3.url}/b", s3.storage_options
    assert (dask_lsio.from_zarr(url, storage_options=so).compute() == 7).all()
    z[4:8, 4:8] = 1  # the shard appears after it was seen missing
    assert np.array_equal(dask_lsio.from_zarr(url, storage_options=so).compute(), z[...])


# -- faults ------------------------------------------------------------------------------------
def test_retries_are_counted_and_errors_name_store_key_status(faulty_s3):
    store = _store(faulty_s3, "f")
    store.put([("a", b"data")])
    before = _store_totals(store).get("lsio-store-retries", 0)
    faulty_s3.proxy.fail_next(3, 503)
    with dask.config.set({"lsio.store.backoff": "1 ms"}):
        assert bytes(dict(store.get(["a"]))[0]) == b"data"
    assert _store_totals(store)["lsio-store-retries"] - before == 3
    faulty_s3.proxy.fail_next(50, 503)
    with dask.config.set({"lsio.store.retries": 2, "lsio.store.backoff": "1 ms"}):
        err = dict(store.get(["a"]))[0]
    faulty_s3.proxy.clear()
    assert isinstance(err, OSError) and not isinstance(err, FileNotFoundError)
    text = str(err)
    assert "503" in text and f"{faulty_s3.url}/f/a" in text and "3 tries" in text
    assert SECRET not in text


def test_forbidden_is_an_error_never_fill(faulty_s3):
    z = _sharded(faulty_s3, "c")
    z[...] = 1
    arr = dask_lsio.from_zarr(f"{faulty_s3.url}/c", storage_options=faulty_s3.storage_options)
    faulty_s3.proxy.fail_next(1000, 403)
    try:
        with pytest.raises(PermissionError, match="403"):
            arr.compute()
    finally:
        faulty_s3.proxy.clear()


def test_building_a_graph_starts_no_engine(s3):
    """A client that only opens metadata and builds the graph starts no IO engine (what it
    counts goes to the process's object-store totals)."""
    import subprocess
    import sys
    import textwrap

    z = _sharded(s3, "g")
    z[...] = 3
    code = textwrap.dedent(f"""
        import dask_lsio, dask_lsio.io as io, dask_lsio.store
        from dask_lsio.store import object_client
        x = dask_lsio.from_zarr({s3.url + '/g'!r}, storage_options={s3.storage_options!r})
        assert x.shape == (8, 8), x.shape
        assert io.engine_in_use() is None, "an engine was started"
        store = dask_lsio.store.open_store({s3.url + '/g'!r}, {s3.storage_options!r})
        assert store.has(["zarr.json"]) == [True]
        assert store.totals is object_client.TOTALS and io.engine_in_use() is None
        assert object_client.TOTALS.snapshot()[("lsio-store-requests", "objects")] == 1
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_killed_worker_mid_copy_loses_nothing(faulty_s3, loopback_cluster):
    """SIGKILL of a worker while a bucket-to-bucket copy runs (reads and PUTs in flight, each
    response delayed): distributed reruns its tasks on the other worker, and the copy reads
    back equal; every object is one PUT, so nothing torn is left behind."""
    import os
    import signal
    import threading

    rng = np.random.default_rng(5)
    values = rng.random((32, 16, 16)).astype("f4")
    src = zarr.create_array(faulty_s3.zarr_store("src"), shape=values.shape, dtype="f4",
                            chunks=(1, 16, 16), shards=(2, 16, 16))
    src[...] = values
    so = faulty_s3.storage_options
    faulty_s3.proxy.delay = 0.02  # every response 20 ms late: the copy takes a while
    with loopback_cluster(n_workers=2) as (_, client):
        client.register_plugin(dask_lsio.LSIOWorkerPlugin())
        pids = list(client.run(os.getpid).values())
        x = dask_lsio.from_zarr(f"{faulty_s3.url}/src", storage_options=so, chunks=(2, 16, 16))
        stored = dask_lsio.to_zarr(x * 2, f"{faulty_s3.url}/dst", storage_options=so,
                                   chunks=(1, 16, 16), shards=(2, 16, 16), compute=False)
        killed = threading.Event()

        def kill() -> None:
            os.kill(pids[0], signal.SIGKILL)
            killed.set()

        killer = threading.Timer(0.4, kill)
        killer.start()
        try:
            client.compute(stored).result(timeout=120)
        finally:
            killer.cancel()
        assert killed.is_set(), "the copy ended before the worker was killed: test nothing"
    faulty_s3.proxy.delay = 0
    got = zarr.open_array(faulty_s3.zarr_store("dst"), mode="r")[...]
    np.testing.assert_array_equal(got, values * 2)


def test_a_public_http_dataset_needs_no_credentials(tmp_path):
    """An array served by a plain HTTP server (no credentials, no listing) reads as
    zarr-python reads it from disk, missing chunks as fill_value."""
    import functools
    import http.server
    import threading

    values = np.arange(12 * 10, dtype="i4").reshape(12, 10)
    z = zarr.create_array(str(tmp_path / "pub.zarr"), shape=values.shape, dtype="i4",
                          chunks=(5, 4), fill_value=-1)
    z[:10] = values[:10]  # the last row of chunks never written: fill_value
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pub.zarr"
        store = open_store(url)
        assert isinstance(store, ObjectStore) and store.url == url
        got = dask_lsio.from_zarr(url).compute()
        np.testing.assert_array_equal(got, zarr.open_array(str(tmp_path / "pub.zarr"))[...])
        assert (got[10:] == -1).all()
    finally:
        server.shutdown()
        server.server_close()


def test_a_hung_server_ends_in_a_timeout_not_a_hang(faulty_s3):
    """A server that accepts a request and never answers (within the request's own limit):
    the batch gives up after ``lsio.io-stall-timeout`` without progress, naming the store."""
    import time

    store = _store(faulty_s3, "h")
    store.put([("a", b"x")])
    faulty_s3.proxy.delay = 30
    try:
        with dask.config.set({"lsio.io-stall-timeout": "2 s"}):
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match="io-stall-timeout") as info:
                list(store.get(["a"]))
            assert time.monotonic() - t0 < 15
        assert faulty_s3.url in str(info.value)
    finally:
        faulty_s3.proxy.delay = 0


def test_memory_stays_bounded_under_a_slow_server(faulty_s3):
    """A read through a server that holds every answer: the requests in flight are bounded
    by ``lsio.store.concurrency`` and each response is decoded as it arrives, so the peak
    memory of the reading process grows by the output and little more (measured in a
    subprocess: its peak RSS against the output's size)."""
    import subprocess
    import sys
    import textwrap

    values = np.random.default_rng(9).random((64, 256, 256)).astype("f4")  # 16 MiB
    z = zarr.create_array(faulty_s3.zarr_store("slow"), shape=values.shape, dtype="f4",
                          chunks=(1, 256, 256), compressors=None)
    z[...] = values
    faulty_s3.proxy.delay = 0.05
    code = textwrap.dedent(f"""
        import os, threading, time, dask, numpy as np, dask_lsio
        dask.config.set({{"scheduler": "synchronous", "lsio.store.concurrency": 8}})
        so = {faulty_s3.storage_options!r}
        url = {faulty_s3.url + '/slow'!r}
        x = dask_lsio.from_zarr(url, storage_options=so, chunks=(64, 256, 256))
        x[:1].compute()  # the engine, the client and their pools exist before we measure
        page = os.sysconf("SC_PAGE_SIZE")
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page
        peak, done = [rss()], threading.Event()
        def sample():  # the resident set every 2 ms while the read runs
            while not done.is_set():
                peak.append(rss())
                time.sleep(0.002)
        before = rss()
        t = threading.Thread(target=sample)
        t.start()
        total = float(x.sum(dtype="f8").compute())
        done.set()
        t.join()
        print(total, max(peak) - before)
    """)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300)
    finally:
        faulty_s3.proxy.delay = 0
    assert out.returncode == 0, out.stderr[-2000:]
    total, grown = out.stdout.split()
    assert np.isclose(float(total), values.sum(dtype="f8"))
    # the 16 MiB output, and at most a few MiB of responses in flight besides it
    # the 16 MiB output and a few MiB besides (measured ~4.6): every response held until
    # the end would add its 16 MiB
    assert int(grown) < values.nbytes + (10 << 20), f"peak RSS grew {int(grown) >> 20} MiB"


def test_large_reads_are_decoded_on_decode_threads(s3):
    """Reads over 256 KiB (here coalesced shard ranges of 4 MiB) are handed to decode
    threads, small ones decoded on the event loop: both equal zarr-python's reading."""
    values = np.random.default_rng(4).random((8, 512, 256)).astype("f4")
    root = zarr.open_group(store=s3.zarr_store(), mode="a")
    big = root.create_array("big", shape=values.shape, dtype="f4", chunks=(1, 256, 256),
                            shards=(8, 512, 256), compressors=None)
    big[...] = values
    small = root.create_array("small", shape=values.shape, dtype="f4", chunks=(1, 64, 64))
    small[...] = values
    for name in ("big", "small"):
        got = dask_lsio.from_zarr(f"{s3.url}/{name}", storage_options=s3.storage_options)
        np.testing.assert_array_equal(got.compute(), values)
