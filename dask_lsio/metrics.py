"""Per-task figures: bytes and objects moved, IO, decode and encode time.

Each figure goes two places: to ``distributed.metrics.context_meter``, so that inside a task on
a distributed worker it lands in the dashboard's Fine Performance Metrics (and the scheduler's
``cumulative_worker_metrics``), and into the engine's running totals (per worker when the
worker plugin gives each worker its own engine). Outside a worker both are cheap no-ops but
the totals.

Labels (units): ``lsio-read`` / ``lsio-write`` / ``lsio-delete`` (bytes, objects) per engine
batch; ``lsio-read`` (seconds) for a whole region read (IO, and decode when the C kernel
decodes inside the IO batch); ``lsio-decode`` (seconds) of numcodecs decoding within it;
``lsio-encode`` and ``lsio-write`` (seconds) of a region write. Object stores add
``lsio-store-requests``, ``lsio-store-retries``, ``lsio-store-errors`` (failed for good) and
``lsio-store-conflicts`` (conditional writes another writer beat), all in objects.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator


class Totals:
    """Running sums of ``(label, unit)`` figures, safe to add to from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: Counter = Counter()

    def add(self, label: str, value: float, unit: str) -> None:
        with self._lock:
            self._sums[(label, unit)] += value

    def snapshot(self) -> dict[tuple[str, str], float]:
        """A copy of the sums, keyed by ``(label, unit)``."""
        with self._lock:
            return dict(self._sums)


def record(totals: Totals, label: str, value: float, unit: str) -> None:
    """Add a figure to ``totals`` and to the running task's Fine Performance Metrics."""
    totals.add(label, value, unit)
    meter = _context_meter()
    if meter is not None:
        meter.digest_metric(label, value, unit)


@contextmanager
def timed(totals: Totals, label: str) -> Iterator[None]:
    """Record the seconds spent in the block under ``label``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record(totals, label, time.perf_counter() - t0, "seconds")


def _context_meter():
    # distributed is only ever imported by those who use it: a process without it has no
    # worker whose task could collect the figure
    mod = sys.modules.get("distributed.metrics")
    return None if mod is None else mod.context_meter
