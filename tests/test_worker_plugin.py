"""LSIOWorkerPlugin on real clusters on loopback: one engine per worker, metrics, lifecycle."""

from __future__ import annotations

import os
import pickle
import threading
import time

import distributed
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

import dask_lsio
from dask_lsio import LSIOWorkerPlugin
from dask_lsio.io import _select

@pytest.fixture
def data_path(tmp_path):
    values = np.random.default_rng(3).random((16, 128, 128)).astype("float32")
    z = zarr.create_array(tmp_path / "a", shape=values.shape, chunks=(1, 64, 64),
                          dtype="float32", compressors=BloscCodec(cname="lz4"))
    z[...] = values
    return tmp_path / "a", values


def engine_in_task():
    """What a task sees: its worker's address and the engine get_engine() gives it."""
    engine = dask_lsio.get_engine()
    worker = distributed.get_worker()
    return worker.address, id(engine), type(engine).__name__, engine.decode_threads


def plugin_engine(dask_worker):
    engine = dask_worker.plugins["dask-lsio"].engine(dask_worker)
    return None if engine is None else (id(engine), engine.closed)


def test_each_worker_gets_its_own_engine(data_path, monkeypatch, tmp_path, loopback_cluster):
    path, values = data_path

    def no_engine_here(*args, **kwargs):
        raise AssertionError("an engine was built in the client / scheduler process")

    monkeypatch.setattr(_select, "_engines", {})  # (the scheduler runs in this process)
    monkeypatch.setattr(_select, "_create", no_engine_here)
    with loopback_cluster(n_workers=2) as (_, client):
        client.register_plugin(LSIOWorkerPlugin(engine="threads", decode_threads=1))
        before = client.run(plugin_engine)
        client.register_plugin(LSIOWorkerPlugin(engine="threads"))  # idempotent: no-op
        assert client.run(plugin_engine) == before
        seen = {}
        for w in client.scheduler_info()["workers"]:
            addr, ident, kind, threads = client.submit(engine_in_task, workers=[w],
                                                       pure=False).result()
            seen[addr] = ident
            assert (kind, threads) == ("ThreadEngine", 1)
            assert before[addr] == (ident, False)
        assert len(set(seen.values())) == 2
        np.testing.assert_array_equal(dask_lsio.from_zarr(path).compute(), values)
        dask_lsio.to_zarr(dask_lsio.from_zarr(path), tmp_path / "copy", chunks=(2, 64, 64))
        np.testing.assert_array_equal(zarr.open_array(tmp_path / "copy")[...], values)


def test_the_plugin_travels_without_an_engine():
    plugin = LSIOWorkerPlugin(queue_depth=32)
    clone = pickle.loads(pickle.dumps(plugin))
    assert clone.options == plugin.options and clone._engines == {}
    assert len(pickle.dumps(plugin)) < 1000


def engine_threads() -> set:
    """Threads an engine owns (the thread engine's IO threads, io_uring's submitters)."""
    return {t for t in threading.enumerate() if t.name.startswith(("lsio-io", "lsio-uring"))}


def test_in_process_workers_do_not_share(data_path, loopback_cluster):
    path, values = data_path
    before = set(os.listdir("/proc/self/fd"))
    threads_before = engine_threads()
    with loopback_cluster(n_workers=2, processes=False) as (cluster, client):
        client.register_plugin(LSIOWorkerPlugin(engine="threads"))
        engines = client.run(plugin_engine)
        assert len({ident for ident, _ in engines.values()}) == 2
        np.testing.assert_array_equal(dask_lsio.from_zarr(path).compute(), values)
        plugins = [w.plugins["dask-lsio"] for w in cluster.workers.values()]
        kept = [p.engine(w) for p, w in zip(plugins, cluster.workers.values())]
        client.unregister_worker_plugin("dask-lsio")
        assert all(e.closed for e in kept)  # teardown closed them
    assert engine_threads() <= threads_before  # teardown stopped the engines' threads
    leaked = set(os.listdir("/proc/self/fd")) - before
    assert not [os.readlink(f"/proc/self/fd/{fd}") for fd in leaked
                if os.path.exists(f"/proc/self/fd/{fd}")
                and "io_uring" in os.readlink(f"/proc/self/fd/{fd}")]


def test_metrics_reach_the_scheduler_and_the_plugin(data_path, tmp_path, loopback_cluster):
    path, values = data_path
    with loopback_cluster(n_workers=2) as (_, client):
        client.register_plugin(LSIOWorkerPlugin())
        dask_lsio.from_zarr(path).sum().compute()
        dask_lsio.to_zarr(dask_lsio.from_zarr(path), tmp_path / "copy", chunks=(1, 64, 64))

        def lsio_metrics(dask_scheduler):
            out = {}
            for key, value in dask_scheduler.cumulative_worker_metrics.items():
                if any(str(k).startswith("lsio-") for k in key):
                    label = next(k for k in key if str(k).startswith("lsio-"))
                    out[(label, key[-1])] = out.get((label, key[-1]), 0) + value
            return out

        deadline = time.monotonic() + 30  # workers send metrics with their heartbeats
        while (seen := client.run_on_scheduler(lsio_metrics)).get(
                ("lsio-write", "objects"), 0) < 64 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert seen[("lsio-read", "bytes")] > 0 and seen[("lsio-read", "objects")] >= 64
        assert seen[("lsio-read", "seconds")] > 0 and seen[("lsio-encode", "seconds")] > 0
        assert seen[("lsio-write", "objects")] >= 64
        totals = client.run(lambda dask_worker: dask_worker.plugins["dask-lsio"]
                            .totals(dask_worker))
        assert sum(t.get("lsio-read [objects]", 0) for t in totals.values()) >= 64
        np.testing.assert_array_equal(zarr.open_array(tmp_path / "copy")[...], values)


def test_without_plugin_or_cluster_a_process_engine():
    engine = dask_lsio.get_engine()
    assert engine is dask_lsio.get_engine() and not engine.closed


def kill_once(marker: str, delay: float) -> int:
    """Kill this worker process the first time (while its other thread works)."""
    time.sleep(delay)
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    return 0


@pytest.mark.parametrize("work", ["read", "write"])
def test_killed_worker_task_is_retried(tmp_path, work, loopback_cluster):
    import dask

    values = np.random.default_rng(4).random((64, 256, 256)).astype("float32")
    src = zarr.create_array(tmp_path / "src", shape=values.shape, chunks=(1, 64, 64),
                            dtype="float32", compressors=BloscCodec(cname="lz4"))
    src[...] = values
    marker = str(tmp_path / "killed")
    with loopback_cluster(n_workers=2, threads_per_worker=2) as (_, client):
        client.register_plugin(LSIOWorkerPlugin())
        x = dask_lsio.from_zarr(tmp_path / "src", chunks=(4, 256, 256))
        if work == "read":
            job = x.sum(dtype="float64")
        else:
            job = dask_lsio.to_zarr(x * 2, tmp_path / "dst", chunks=(1, 64, 64),
                                    shards=(4, 256, 256), compute=False)
        total, _ = dask.compute(job, dask.delayed(kill_once)(marker, 0.05))
        assert os.path.exists(marker)  # a worker did die
        if work == "read":
            assert np.isclose(total, values.sum(dtype="float64"))
        else:
            np.testing.assert_array_equal(zarr.open_array(tmp_path / "dst")[...], values * 2)
        client.restart()  # new worker processes: the plugin sets each up again
        client.wait_for_workers(2, timeout=60)
        engines = client.run(plugin_engine)
        assert len(engines) == 2 and all(e is not None and not e[1] for e in engines.values())


def test_totals_on_the_workers_metrics_page(data_path, loopback_cluster):
    pytest.importorskip("prometheus_client")
    from urllib.request import urlopen

    path, _ = data_path
    with loopback_cluster(n_workers=1) as (_, client):
        client.register_plugin(LSIOWorkerPlugin())
        dask_lsio.from_zarr(path).sum().compute()
        (addr, port), = client.run(lambda dask_worker: dask_worker.http_server.port).items()
        page = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    lines = [ln for ln in page.splitlines() if ln.startswith("dask_lsio_objects_total")]
    read = [ln for ln in lines if 'kind="read"' in ln and addr in ln]
    assert read and float(read[0].split()[-1]) >= 64, lines
    assert "dask_lsio_seconds_total" in page


def test_keep_freed_on_glibc():
    """Rechunk tasks' malloc thresholds: set once per process, then freed memory is reused
    (a 2 MiB block freed and taken again faults no page), and malloc_trim gives it back."""
    import subprocess
    import sys

    code = (
        "import ctypes, resource\n"
        "from dask_lsio.io import malloc\n"
        "assert malloc.keep_freed(None, 1 << 28) is False\n"
        "assert malloc.keep_freed(32 << 20, 256 << 20) is True\n"
        "assert malloc.keep_freed(32 << 20, 256 << 20) is True\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "def touch():\n"
        "    p = libc.malloc(2 << 20)\n"
        "    ctypes.memset(p, 1, 2 << 20)\n"
        "    libc.free(p)\n"
        "touch()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20): touch()\n"
        "faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
        "assert faults < 100, faults\n"
        "assert malloc.trim() is True\n"
        "print('ok')\n"
    )
    if not (os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") or
            os.path.exists("/lib64/libc.so.6")):
        pytest.skip("not glibc")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_mmap_threshold_is_set_on_glibc():
    from dask_lsio.io.malloc import set_mmap_threshold

    assert set_mmap_threshold(None) is False
    if os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") or os.path.exists("/lib64/libc.so.6"):
        assert set_mmap_threshold(4 << 20) is True
