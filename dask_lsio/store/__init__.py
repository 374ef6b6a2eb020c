"""Level 1 of dask-lsio: stores of objects addressed by keys, read and written in batches.

>>> from dask_lsio.store import open_store
>>> store = open_store("weather.zarr/t2m")              # doctest: +SKIP
>>> dict(store.get(["zarr.json"]))[0][:20]              # doctest: +SKIP
"""

from .base import ABSENT, Held, KeysOf, Store, StoreDescription
from .local import LocalStore
from .memory import MemoryStore
from .object_store import ObjectStore, Version
from .resolve import cleanup, describe_store, open_store, zarr_view

__all__ = ["ABSENT", "Held", "KeysOf", "LocalStore", "MemoryStore", "ObjectStore", "Store", "StoreDescription", "Version",
           "cleanup", "describe_store", "open_store",
           "zarr_view"]
