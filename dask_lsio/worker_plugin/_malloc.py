"""glibc's mmap threshold on distributed workers.

A distributed nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_`` set (so that freed
memory goes back to the OS). Setting any malloc tunable turns off glibc's dynamic mmap
threshold, which otherwise rises to fit a program's allocations: c-blosc then gets each
decompression's ~200 KiB of temporaries from a fresh mmap and pays a page fault per page of
it, per chunk. Measured on a 1 GiB scan of 16,384 blosc chunks: 2.34 GB/s without the
variable, 0.81 with it, 2.37 with it and a 4 MiB mmap threshold. Allocations below the
threshold come from the heap, which the worker's trim threshold still returns to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger("dask_lsio")
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def set_mmap_threshold(nbytes: int | None) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, nbytes)`` on glibc; False where it does not apply."""
    if not nbytes:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    if not ok:
        logger.warning("dask-lsio could not set the malloc mmap threshold to %d", nbytes)
    return ok
