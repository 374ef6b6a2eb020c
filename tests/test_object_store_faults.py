"""Object stores when things go wrong, when writers meet, with secrets, and on a cluster:
S3 on a moto server (tests/s3_fixtures.py), faults injected by tests/fault_proxy.py.

- Faults: reads (and writes) through 5% injected 503s and some dropped connections equal
  zarr-python's reading, and the store's totals count the retries; more 503s than
  ``lsio.store.retries`` allows raise an OSError naming the store, the key and the status,
  after no more tries than allowed; a 403 is a PermissionError (never fill_value); a server
  that is down for a moment in mid-read (a restart) costs retries, not the read.
- Conditional writes: writers of disjoint regions sharing one shard (or one chunk), in
  threads of this process and in another process, never erase each other's values.
- Secrets: the secret in ``storage_options`` shows nowhere: not in reprs, array names, task
  keys, dask tokens, logs, error messages, ``dask-lsio info`` or the metrics.
- A LocalCluster of two worker processes (with LSIOWorkerPlugin) reads and writes a bucket.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import threading
import traceback

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

import dask_lsio
from s3_fixtures import ACCESS_KEY, SECRET

try:
    from dask_lsio.store import ObjectStore, open_store
except ImportError:
    pytest.skip("dask_lsio.store.ObjectStore cannot be imported (yet): these are the tests "
                "of the object-store backend", allow_module_level=True)

from dask_lsio.loader.sources import spec_of_dask  # noqa: E402

RETRIES = ("lsio-store-retries", "objects")


def write(s3, path: str, values: np.ndarray, **kwargs) -> None:
    """The array ``values`` at ``path``, written by zarr-python (straight to the server)."""
    options = dict(chunks=(1,) + values.shape[1:], dtype=values.dtype, fill_value=0,
                   compressors=ZstdCodec(level=1)) | kwargs
    zarr.create_array(s3.zarr_store(path), shape=values.shape, **options)[...] = values


def retries(x: da.Array) -> float:
    """The retries counted so far in the totals of the store the tasks of ``x`` read."""
    return spec_of_dask(x, "x").store.totals.snapshot().get(RETRIES, 0)


def text(exc: BaseException) -> str:
    """Everything an error shows: its traceback, notes, causes and grouped errors."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


VALUES = np.arange(1, 100 * 8 + 1, dtype="int32").reshape(100, 8)


# -- faults --------------------------------------------------------------------------------
def test_reads_and_writes_through_503s_and_resets(s3, faulty_s3):
    write(s3, "a", VALUES)  # 100 chunks: 100 GETs and more
    proxy, so = faulty_s3.proxy, faulty_s3.storage_options
    x = dask_lsio.from_zarr(f"{faulty_s3.url}/a", storage_options=so, chunks=(20, 8))
    assert isinstance(spec_of_dask(x, "x").store, ObjectStore)
    before = retries(x)
    proxy.error_rate, proxy.reset_rate = 0.05, 0.03
    np.testing.assert_array_equal(x.compute(), VALUES)
    assert proxy.errors > 0 and proxy.resets > 0  # (seeded: the same faults every run)
    assert retries(x) - before >= proxy.errors + proxy.resets - proxy.refused
    dask_lsio.to_zarr(x * 3, faulty_s3.url, component="b", storage_options=so,
                      chunks=(4, 8), shards=(20, 8))
    proxy.clear()
    np.testing.assert_array_equal(zarr.open_array(s3.zarr_store("b"), mode="r")[...],
                                  VALUES * 3)
    assert proxy.access_keys == {ACCESS_KEY}  # signed with the key given, not the env's


@pytest.mark.parametrize("status", [500, 503])
def test_a_few_server_errors_are_retried(s3, faulty_s3, status):
    write(s3, "a", VALUES[:4])
    x = dask_lsio.from_zarr(f"{faulty_s3.url}/a", storage_options=faulty_s3.storage_options)
    before = retries(x)
    faulty_s3.proxy.fail_next(3, status)
    np.testing.assert_array_equal(x.compute(), VALUES[:4])
    assert faulty_s3.proxy.statuses[status] == 3 and retries(x) - before >= 3


def test_503s_beyond_the_retries_raise_naming_store_key_and_status(s3, faulty_s3):
    write(s3, "a", VALUES[:2])  # two chunks: c/0/0 and c/1/0
    proxy = faulty_s3.proxy
    with dask.config.set({"lsio.store.retries": 2}):
        x = dask_lsio.from_zarr(f"{faulty_s3.url}/a", storage_options=faulty_s3.storage_options)
        start = proxy.requests
        proxy.fail_next(1000, 503)
        with pytest.raises(OSError) as info:
            x.compute(scheduler="sync")
    message = str(info.value)
    assert f"{faulty_s3.url}/a" in message, message
    assert re.search(r"c/[01]/0", message) and "503" in message, message
    tries = proxy.requests - start
    assert 3 <= tries <= 2 * 3, f"{tries} requests: the retry budget is 2 per request"


def test_403_is_a_permission_error_never_fill(s3, faulty_s3):
    write(s3, "a", VALUES[:4])
    x = dask_lsio.from_zarr(f"{faulty_s3.url}/a", storage_options=faulty_s3.storage_options)
    faulty_s3.proxy.fail_next(1, 403)  # one chunk read, once
    with pytest.raises(PermissionError, match=re.escape(faulty_s3.url)):
        x.compute(scheduler="sync")
    assert faulty_s3.proxy.statuses[403] == 1
    np.testing.assert_array_equal(x.compute(), VALUES[:4])  # the next read: no 403


def test_a_server_restart_mid_read(s3, faulty_s3):
    write(s3, "a", VALUES[:40])
    x = dask_lsio.from_zarr(f"{faulty_s3.url}/a", storage_options=faulty_s3.storage_options)
    before = retries(x)
    faulty_s3.proxy.outage(after=5, seconds=0.5)  # down after 5 of the 40 reads
    np.testing.assert_array_equal(x.compute(), VALUES[:40])
    assert faulty_s3.proxy.refused > 0 and retries(x) > before


# -- writers meeting -------------------------------------------------------------------------
LAYOUTS = {"v3-one-shard": dict(chunks=(10, 16), shards=(40, 16)),
           "v2-chunks-of-two-regions": dict(chunks=(20, 16), zarr_format=2, compressors=None)}
SHARED = np.arange(1, 40 * 16 + 1, dtype="int32").reshape(40, 16)  # never 0 (the fill)
TRIALS = 3


def region(i: int) -> slice:
    return slice(10 * i, 10 * i + 10)


def write_region(url: str, so: dict, component: str, i: int) -> None:
    dask_lsio.to_zarr(da.from_array(SHARED[region(i)], chunks=(5, 16)), url,
                      component=component, storage_options=so, region=(region(i),))


def _process_writer(url, so, components, barrier, errors) -> None:
    """The writer of region 3 in another process, one write per trial."""
    try:
        for component in components:
            barrier.wait(120)
            write_region(url, so, component, 3)
    except BaseException:  # noqa: BLE001  (reported by the test)
        errors.put(traceback.format_exc())
        barrier.abort()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_writers_of_one_shard_in_threads_and_a_process_lose_nothing(s3, layout):
    components = [f"t{k}" for k in range(TRIALS)]
    for c in components:
        write(s3, c, np.zeros_like(SHARED), **LAYOUTS[layout])
    url, so = s3.url, s3.storage_options
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(4), ctx.Queue()
    proc = ctx.Process(target=_process_writer, args=(url, so, components, barrier, errors))
    proc.start()
    failures: list[str] = []

    def thread_writer(i: int) -> None:
        try:
            for component in components:
                barrier.wait(120)
                write_region(url, so, component, i)
        except BaseException:  # noqa: BLE001
            failures.append(traceback.format_exc())
            barrier.abort()

    threads = [threading.Thread(target=thread_writer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    proc.join(300)
    if proc.is_alive():
        proc.kill()
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures)
    assert proc.exitcode == 0 and not any(t.is_alive() for t in threads)
    for c in components:
        got = zarr.open_array(s3.zarr_store(c), mode="r")[...]
        lost = [i for i in range(4) if not np.array_equal(got[region(i)], SHARED[region(i)])]
        assert not lost, f"{c}: the rows of writers {lost} were lost"


# -- secrets ---------------------------------------------------------------------------------
def test_the_secret_shows_nowhere(s3, faulty_s3, caplog, capsys):
    prometheus = pytest.importorskip("prometheus_client")
    from dask.base import normalize_token, tokenize

    from dask_lsio.cli import main as cli
    from dask_lsio.worker_plugin import prometheus as lsio_prometheus

    write(s3, "a", VALUES[:6])
    url, so, proxy = f"{faulty_s3.url}/a", faulty_s3.storage_options, faulty_s3.proxy
    assert so["secret"] == SECRET
    shown: dict[str, str] = {}
    with caplog.at_level(logging.DEBUG):
        store = open_store(url, storage_options=so)
        shown |= {"store repr": repr(store), "store str": str(store),
                  "description": repr(store.description), "store token":
                  repr(normalize_token(store)), "child": repr(store.child("c"))}
        x = dask_lsio.from_zarr(url, storage_options=so)
        keys = list(dict(x.__dask_graph__()))
        shown |= {"array repr": repr(x), "array str": str(x), "name": x.name,
                  "keys": repr(keys), "array token": repr(normalize_token(x)),
                  "tokenize": tokenize(x, store), "html": x._repr_html_()}
        np.testing.assert_array_equal(x.compute(), VALUES[:6])
        dask_lsio.to_zarr(x + 1, faulty_s3.url, component="b", storage_options=so)
        with pytest.raises(FileNotFoundError) as missing:
            dask_lsio.from_zarr(f"{faulty_s3.url}/nothing-here", storage_options=so)
        proxy.fail_next(1, 403)
        with pytest.raises(PermissionError) as denied:
            x.compute(scheduler="sync")
        with dask.config.set({"lsio.store.retries": 1}):
            proxy.fail_next(1000, 503)
            with pytest.raises(OSError) as unavailable:
                x.compute(scheduler="sync")
            proxy.clear()
        shown |= {"missing array": text(missing.value), "403": text(denied.value),
                  "503": text(unavailable.value)}
        assert cli(["info"]) == 0
        shown["totals"] = repr(store.totals.snapshot())
        lsio_prometheus.publish("tcp://secret-test:1", store.totals.snapshot)
        try:
            shown["prometheus"] = prometheus.generate_latest().decode()
        finally:
            lsio_prometheus.withdraw("tcp://secret-test:1")
    shown["info"] = capsys.readouterr().out
    shown["log"] = caplog.text + repr([r.args for r in caplog.records])
    assert "lsio-store-requests" in shown["totals"] and "secret-test" in shown["prometheus"]
    assert proxy.access_keys == {ACCESS_KEY}  # the storage_options were used to sign
    leaks = [where for where, what in shown.items() if SECRET in what]
    assert not leaks, f"the secret shows in: {leaks}"


# -- a cluster -------------------------------------------------------------------------------
def test_two_worker_processes_read_and_write_a_bucket(s3, loopback_cluster):
    distributed = pytest.importorskip("distributed")
    values = np.random.default_rng(8).random((16, 24, 24)).astype("float32")
    write(s3, "src", values, chunks=(2, 12, 12), shards=(4, 24, 24))
    so = s3.storage_options
    with loopback_cluster(n_workers=2) as (_, client):
        client.register_plugin(dask_lsio.LSIOWorkerPlugin())
        x = dask_lsio.from_zarr(s3.url, component="src", storage_options=so, chunks=(4, 24, 24))
        with distributed.get_task_stream(client) as stream:
            np.testing.assert_array_equal(x.compute(), values)
            dask_lsio.to_zarr(x * 2, s3.url, component="dst", storage_options=so,
                              chunks=(1, 24, 24), shards=(2, 24, 24))
        assert len({t["worker"] for t in stream.data}) == 2  # both workers took part
        totals = client.run(lambda dask_worker: dask_worker.plugins["dask-lsio"]
                            .totals(dask_worker))
        requests = [t.get("lsio-store-requests [objects]", 0) for t in totals.values()]
        assert len(requests) == 2 and min(requests) > 0, totals  # each worker's own store
    np.testing.assert_array_equal(zarr.open_array(s3.zarr_store("dst"), mode="r")[...],
                                  values * 2)
