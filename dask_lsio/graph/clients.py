"""Where a graph will run: whether a distributed client is the default scheduler here.

Objects in a memory store live in the client's process: workers of a cluster cannot reach
them, so the dask front ends treat such arrays as dask does (it refuses to write them with
the distributed scheduler, and ships the zarr array itself to read them).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import dask

from ..store import MemoryStore, Store

IN_MEMORY_ON_CLUSTER = "Cannot store into in memory Zarr Array using the distributed scheduler."


# dask.config "scheduler" names that run graphs in this process, whatever client exists
LOCAL_SCHEDULERS = {"sync", "synchronous", "single-threaded", "threads", "threading",
                    "processes", "multiprocessing"}


def active_client() -> Any | None:
    """The default distributed client, or None: distributed not imported (no client can
    exist, and importing it here would cost a second), or dask's ``scheduler`` set to a
    local one (``dask.config.set(scheduler="threads")``: graphs run here even beside a
    client)."""
    if "distributed" not in sys.modules:
        return None
    if dask.config.get("scheduler", None) in LOCAL_SCHEDULERS:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client
        return None


def worker_threads(client: Any | None) -> list[int] | None:
    """The threads of each worker of ``client``'s cluster (one call to the scheduler); None
    without a client, for an asynchronous client (whose calls cannot be waited for here),
    or while the cluster has no workers."""
    if client is None or getattr(client, "asynchronous", False):
        return None
    return [int(n) for n in client.nthreads().values()] or None


def task_threads(workers: list[int] | None) -> int:
    """Threads that run tasks at once where a graph built here runs: those of the
    cluster's ``workers`` (:func:`worker_threads`), else dask's ``num_workers`` or this
    machine's cores."""
    if workers:
        return sum(workers)
    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


def queue_slots(workers: list[int]) -> int | None:
    """How many root tasks a scheduler hands its ``workers`` (threads of each) at once
    before it queues the rest: ``ceil(worker-saturation x threads)`` per worker (at least
    one), as distributed counts them, with this process's
    ``distributed.scheduler.worker-saturation`` (the scheduler's, unless it was started
    with another). None where nothing is queued (``inf``) or the setting is not a number."""
    saturation = dask.config.get("distributed.scheduler.worker-saturation", 1.1)
    try:
        saturation = math.inf if saturation == "inf" else float(saturation)
    except (TypeError, ValueError):
        return None
    if math.isinf(saturation) or not saturation > 0:
        return None
    return sum(max(math.ceil(saturation * n), 1) for n in workers) or None


def distributed_client() -> bool:
    """Whether computations here go to a distributed cluster (a default client exists)."""
    return active_client() is not None


def out_of_reach(store: Store) -> bool:
    """Whether the workers of the running scheduler cannot reach ``store``'s objects."""
    return isinstance(store, MemoryStore) and distributed_client()
