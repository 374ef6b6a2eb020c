"""Recycled read buffers.

Fresh memory is expensive (page faults cost up to ~2 s per GiB touched on our VM), so reads
land in slabs that are reused across batches. A slab is an anonymous mmap (page aligned, as
O_DIRECT needs) viewed as a numpy array; every buffer handed to a caller is a memoryview slice
of it, so the slab returns to the pool by itself once the last of those views is gone.
"""

from __future__ import annotations

import mmap
import threading
import weakref

import numpy as np

ALIGN = 4096
_MIN_SLAB = 1 << 20
_HUGE = 4 << 20  # numpy's threshold for transparent huge pages too


def _size_class(nbytes: int) -> int:
    """Slab sizes are powers of two (at least 1 MiB) so that slabs can be reused."""
    return max(_MIN_SLAB, 1 << (max(nbytes, 1) - 1).bit_length())


class BufferPool:
    """A pool of page-aligned slabs, safe to use from many threads.

    Parameters
    ----------
    max_bytes : int
        Idle slabs kept for reuse; slabs returned beyond that are unmapped.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._idle: dict[int, list[mmap.mmap]] = {}
        self._idle_bytes = 0
        self._lock = threading.Lock()
        self._closed = False

    def slab(self, nbytes: int) -> np.ndarray:
        """A uint8 array of at least ``nbytes`` bytes whose memory returns here when freed."""
        size = _size_class(nbytes)
        with self._lock:
            stack = self._idle.get(size)
            mm = stack.pop() if stack else None
            if mm is not None:
                self._idle_bytes -= size
        if mm is None:
            mm = mmap.mmap(-1, size)
            if size >= _HUGE:  # fewer faults and TLB misses where the kernel allows
                mm.madvise(mmap.MADV_HUGEPAGE)
        arr = np.frombuffer(mm, dtype=np.uint8)
        weakref.finalize(arr, self._give_back, mm)
        return arr

    def _give_back(self, mm: mmap.mmap) -> None:
        size = len(mm)
        with self._lock:
            if not self._closed and self._idle_bytes + size <= self.max_bytes:
                self._idle.setdefault(size, []).append(mm)
                self._idle_bytes += size
        # Otherwise drop it: the array that exported it is still being freed, so the map is
        # unmapped by its own deallocation right after this call, not by an explicit close.

    @property
    def idle_bytes(self) -> int:
        """Bytes of slabs waiting for reuse."""
        return self._idle_bytes

    def close(self) -> None:
        """Unmap the idle slabs; slabs still in use are unmapped when freed."""
        with self._lock:
            self._closed = True
            idle, self._idle, self._idle_bytes = self._idle, {}, 0
        for stack in idle.values():
            for mm in stack:
                try:
                    mm.close()
                except BufferError:  # a caller still holds a view: unmapped when freed
                    pass
