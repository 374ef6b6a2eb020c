"""LSIOWorkerPlugin: each distributed worker runs its own engine, created in ``setup``.

The plugin object travels from the client to every worker pickled, holding only its options:
an engine (rings, buffers, threads) must never be built on the client or the scheduler, nor
travel. Engines are kept per worker (by address), so that several workers in one process
(``LocalCluster(processes=False)``) each get their own even if they share a plugin object.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from distributed import WorkerPlugin

from .. import config
from ..io import Engine
from ..io import new_engine, register_lookup
from . import prometheus
from ..io.malloc import set_mmap_threshold


PLUGIN_NAME = "dask-lsio"  # the plugin's name in ``worker.plugins``


class LSIOWorkerPlugin(WorkerPlugin):
    """Give every worker of a cluster its own dask-lsio engine.

    Register once: ``client.register_plugin(LSIOWorkerPlugin())``; workers that join later get
    it too, registering again changes nothing (``idempotent``). Tasks find the engine through
    :func:`dask_lsio.get_engine`. Each worker's totals are available from :meth:`totals` and,
    with prometheus_client installed, on the worker's ``/metrics`` page.

    Parameters
    ----------
    engine : {"auto", "io_uring", "threads"}, optional
        Engine kind (default: the worker's ``lsio.engine``).
    queue_depth : int, optional
        io_uring entries per ring (default ``lsio.queue-depth``).
    decode_threads : int, optional
        Threads decoding one task's chunks (default ``lsio.decode-threads``).
    direct_io : bool, optional
        Read with O_DIRECT (default ``lsio.direct-io``).
    threads : int, optional
        Thread engine workers (default ``lsio.threads``).
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, engine: str | None = None, queue_depth: int | None = None,
                 decode_threads: int | None = None, direct_io: bool | None = None,
                 threads: int | None = None) -> None:
        self.options = {"kind": engine, "queue_depth": queue_depth,
                        "decode_threads": decode_threads, "direct_io": direct_io,
                        "threads": threads}  # new_engine's keywords
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"options": self.options}  # never an engine, nor a lock

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.options = state["options"]

    def setup(self, worker: Any) -> None:
        """Create this worker's engine (the worker's dask.config supplies the defaults) and
        set glibc's mmap threshold (``lsio.worker-mmap-threshold``)."""
        threshold = config.get("worker-mmap-threshold")
        set_mmap_threshold(config.get_bytes("worker-mmap-threshold") if threshold else None)
        with self._lock:
            engine = self._engines.get(worker.address)
            if engine is None or engine.closed:
                engine = self._engines[worker.address] = new_engine(**self.options)
        prometheus.publish(worker.address, engine.totals.snapshot)

    def teardown(self, worker: Any) -> None:
        """Close this worker's engine: rings, threads and idle buffers."""
        with self._lock:
            engine = self._engines.pop(worker.address, None)
        prometheus.withdraw(worker.address)
        if engine is not None:
            engine.close()

    def engine(self, worker: Any) -> Engine | None:
        """The engine of ``worker``, or None before ``setup`` / after ``teardown``."""
        return self._engines.get(worker.address)

    def totals(self, worker: Any) -> dict[str, float]:
        """This worker's running totals: ``"<label> [<unit>]"`` -> value, and the engine's
        batch counts (see :mod:`dask_lsio.metrics`)."""
        engine = self.engine(worker)
        if engine is None:
            return {}
        out = {f"{label} [{unit}]": v for (label, unit), v in engine.totals.snapshot().items()}
        out.update({f"engine {k}": v for k, v in engine.stats.items()})
        return out


def worker_engine() -> Engine | None:
    """The plugin engine of the distributed worker running this task, if any (registered
    with :func:`dask_lsio.io.register_lookup`, so :func:`dask_lsio.get_engine` finds it)."""
    worker_mod = sys.modules.get("distributed.worker")  # not imported: no worker here
    # (another thread may be importing it right now: no worker runs in this process yet)
    get_worker = getattr(worker_mod, "get_worker", None)
    if get_worker is None:
        return None
    try:
        worker = get_worker()
    except ValueError:  # not inside a task on a worker
        return None
    plugin = worker.plugins.get(PLUGIN_NAME)
    engine = plugin.engine(worker) if plugin is not None else None
    return engine if engine is not None and not engine.closed else None


register_lookup(worker_engine)
