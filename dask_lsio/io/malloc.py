"""glibc's malloc thresholds, where fresh memory costs more than reused memory.

Each page of memory a process gets from the OS costs a page fault on its first write (on our
VM up to ~2 s per GiB, more than the copy that fills it). glibc returns memory to the OS
early: large blocks are mmap'ed and unmapped one by one, and the top of a heap is trimmed
once more than the trim threshold of it is free. Codecs allocate their temporaries and
outputs per chunk (c-blosc: ~1 MiB of both per 1 MiB chunk), so each chunk can pay for
fresh pages.

- Distributed workers: a nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_`` set (so that
  freed memory goes back to the OS). Setting any tunable turns off glibc's dynamic mmap
  threshold, which otherwise rises to fit a program's allocations: c-blosc then gets each
  decompression's ~200 KiB of temporaries from a fresh mmap. Measured on a 1 GiB scan of
  16,384 blosc chunks: 2.34 GB/s without the variable, 0.81 with it, 2.37 with it and a
  4 MiB mmap threshold (:func:`set_mmap_threshold`, by the worker plugin).
- Rechunk tasks encode and decode whole arrays (:func:`keep_freed`): see
  ``lsio.rechunk.mmap-threshold`` for the measurements.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from typing import Any

logger = logging.getLogger("dask_lsio")
_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_kept: tuple[int, int] | None = None  # what keep_freed set in this process
_lock = threading.Lock()


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc: both are there)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return None
    return libc


def set_mmap_threshold(nbytes: int | None) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, nbytes)`` on glibc; False where it does not apply."""
    if not nbytes:
        return False
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    if not ok:
        logger.warning("dask-lsio could not set the malloc mmap threshold to %d", nbytes)
    return ok


def keep_freed(mmap_threshold: int | None, trim_threshold: int | None) -> bool:
    """Keep freed memory for reuse in this process: blocks up to ``mmap_threshold`` come
    from the heap, whose top is returned to the OS only when more than ``trim_threshold``
    of it is free. Once per process (later calls with the same values do nothing); None
    (either) leaves malloc alone. False where it does not apply (not glibc)."""
    global _kept
    if not mmap_threshold or not trim_threshold:
        return False
    want = (int(mmap_threshold), int(trim_threshold))
    with _lock:
        if _kept == want:
            return True
        libc = _libc()
        if libc is None:
            return False
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, want[0])) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, want[1]))
        if ok:
            _kept = want
        else:
            logger.warning("dask-lsio could not set the malloc thresholds to %s", want)
        return ok


def trim() -> bool:
    """Return the free memory of every heap to the OS (``malloc_trim(0)``); False where it
    does not apply. For the end of work that :func:`keep_freed` made keep memory."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0) >= 0)
