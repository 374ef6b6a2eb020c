"""The machine's CPU time during a timed run (``/proc/stat``): how many cores it kept busy,
and how many of those in the kernel.

A reader's process time would miss work done for it elsewhere (interrupts, softirqs, kernel
threads completing its IO), and on this 2-core machine what matters is whether the cores were
all busy: a run that keeps both busy cannot go faster without less work per byte. The count
is machine-wide, so it includes whatever else runs (the benchmarks run nothing else at the
same time). The kernel counts in clock ticks (usually 1/100 s): a run needs a quarter of a
second (:data:`MIN_SECONDS`) before its count means something.
"""

from __future__ import annotations

import os
import time

MIN_SECONDS = 0.25  # shorter runs: busy cores not shown (ticks of 10 ms: 2% at 2 cores)


def cpu_ticks() -> tuple[int, int] | None:
    """The machine's busy clock ticks since boot, summed over all cores, and the kernel's
    part of them (None where ``/proc/stat`` cannot be read). Busy: user, nice, system, irq
    and softirq (iowait and steal are not work done here; guest time is already in user);
    the kernel's: system, irq and softirq."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 8 or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    kernel = system + irq + softirq
    return user + nice + kernel, kernel


class Stopwatch:
    """Wall-clock seconds and the machine's CPU time from its creation to :meth:`stop`."""

    def __init__(self) -> None:
        self.ticks0 = cpu_ticks()
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, float | None]:
        """``seconds``, and the busy CPU seconds of all cores ``cpu_busy`` and of the kernel
        ``cpu_kernel`` (None where not readable), so far."""
        seconds, ticks = time.perf_counter() - self.t0, cpu_ticks()
        if ticks is None or self.ticks0 is None:
            return {"seconds": seconds, "cpu_busy": None, "cpu_kernel": None}
        hz = os.sysconf("SC_CLK_TCK")
        return {"seconds": seconds, "cpu_busy": (ticks[0] - self.ticks0[0]) / hz,
                "cpu_kernel": (ticks[1] - self.ticks0[1]) / hz}
