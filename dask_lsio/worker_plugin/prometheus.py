"""The plugin's per-worker totals on each worker's ``/metrics`` page (prometheus_client).

distributed's worker serves ``prometheus_client``'s default registry at ``/metrics``; one
collector per process, registered on first use, reports every worker of the process that has
a plugin engine (several with ``processes=False``), labelled by worker address:

- ``dask_lsio_bytes_total{worker, kind}``: bytes read or written (kind ``read`` / ``write``),
  and decoded by the codecs (``decoded``)
- ``dask_lsio_objects_total{worker, kind}``: objects read, written or deleted
- ``dask_lsio_seconds_total{worker, activity}``: time in region reads, decode, encode, writes
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

_lock = threading.Lock()
_collector: "TotalsCollector | None" = None


class TotalsCollector:
    """A prometheus_client collector over ``{worker address: totals getter}``."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], dict[tuple[str, str], float]]] = {}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        fams = {
            "bytes": CounterMetricFamily("dask_lsio_bytes", "Bytes moved by the dask-lsio "
                                         "engine or decoded", labels=["worker", "kind"]),
            "objects": CounterMetricFamily("dask_lsio_objects", "Objects read, written or "
                                           "deleted", labels=["worker", "kind"]),
            "seconds": CounterMetricFamily("dask_lsio_seconds", "Seconds spent per activity",
                                           labels=["worker", "activity"]),
        }
        for worker, totals in list(self.sources.items()):
            for (label, unit), value in totals().items():
                if unit in fams:
                    fams[unit].add_metric([worker, label.removeprefix("lsio-")], value)
        yield from fams.values()


def publish(address: str, totals: Callable[[], dict[tuple[str, str], float]]) -> bool:
    """Report ``totals()`` under ``address``; False when prometheus_client is missing."""
    global _collector
    try:
        import prometheus_client
    except ImportError:
        return False
    with _lock:
        if _collector is None:
            _collector = TotalsCollector()
            prometheus_client.REGISTRY.register(_collector)
        _collector.sources[address] = totals
    return True


def withdraw(address: str) -> None:
    """Stop reporting ``address`` (its engine is closed)."""
    with _lock:
        if _collector is not None:
            _collector.sources.pop(address, None)
