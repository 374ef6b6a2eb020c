"""Level 1 of dask-lsio: engines that read and write many files and byte ranges per call.

>>> from dask_lsio.io import get_engine, ReadRequest
>>> engine = get_engine()                      # doctest: +SKIP
>>> bufs = engine.read([ReadRequest("a/c/0/0"), ReadRequest("a/c/0/1", 0, 4096)])  # +SKIP
"""

from .engine import Engine
from .requests import ReadRequest
from ._select import (UringStatus, engine_in_use, get_engine, new_engine, register_lookup,
                      uring_status)
from ._threads import ThreadEngine
from ._uring import IoUringEngine

__all__ = [
    "Engine",
    "IoUringEngine",
    "ReadRequest",
    "ThreadEngine",
    "UringStatus",
    "engine_in_use",
    "get_engine",
    "new_engine",
    "register_lookup",
    "uring_status",
]
