"""Memory measures and preparation inside a worker process."""

from __future__ import annotations

import resource

import numpy as np


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux clear_refs 5);
    False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_kib(field_name: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in KiB (ru_maxrss if there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib(exact: bool) -> int:
    """The peak since :func:`reset_peak_rss` (``exact``), else of the process's life."""
    return rss_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def touch_memory(nbytes: int) -> None:
    """Write ``nbytes`` of fresh memory and free it again, so that the next allocation of
    that size reuses memory the hypervisor still backs.

    This VM's balloon device reports freed guest memory to the host (free page reporting),
    which takes it back after a few seconds: the first write of 1 GiB then costs 1.2 to 2.6
    s (host page faults), against 0.13 s for memory freed a moment ago. A whole-array read
    writes a fresh 1 GiB output, so without this its time would depend on how long ago
    this process (or another) freed memory, not on the reader.
    """
    block = np.empty(nbytes, np.uint8)
    block.fill(0)
    del block
