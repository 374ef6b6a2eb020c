"""Where a graph will run: whether a distributed client is the default scheduler here.

Objects in a memory store live in the client's process: workers of a cluster cannot reach
them, so the dask front ends treat such arrays as dask does (it refuses to write them with
the distributed scheduler, and ships the zarr array itself to read them).
"""

from __future__ import annotations

from ..store import MemoryStore, Store

IN_MEMORY_ON_CLUSTER = "Cannot store into in memory Zarr Array using the distributed scheduler."


def distributed_client() -> bool:
    """Whether computations here go to a distributed cluster (a default client exists)."""
    try:
        from distributed import default_client

        default_client()
    except (ImportError, ValueError):
        return False
    return True


def out_of_reach(store: Store) -> bool:
    """Whether the workers of the running scheduler cannot reach ``store``'s objects."""
    return isinstance(store, MemoryStore) and distributed_client()
