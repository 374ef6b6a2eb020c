"""Where a graph will run: whether a distributed client is the default scheduler here.

Objects in a memory store live in the client's process: workers of a cluster cannot reach
them, so the dask front ends treat such arrays as dask does (it refuses to write them with
the distributed scheduler, and ships the zarr array itself to read them).
"""

from __future__ import annotations

import sys
from typing import Any

from ..store import MemoryStore, Store

IN_MEMORY_ON_CLUSTER = "Cannot store into in memory Zarr Array using the distributed scheduler."


def active_client() -> Any | None:
    """The default distributed client, or None (distributed not imported: no client can
    exist, and importing it here would cost a second)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client
        return None


def distributed_client() -> bool:
    """Whether computations here go to a distributed cluster (a default client exists)."""
    return active_client() is not None


def out_of_reach(store: Store) -> bool:
    """Whether the workers of the running scheduler cannot reach ``store``'s objects."""
    return isinstance(store, MemoryStore) and distributed_client()
