"""Timed runs and their results: one ``Result`` per table row, with its medians and ratios.

A row is one (dataset, cache, workload, reader); a benchmark leaves out what it does not vary
(the IO benchmark has no workloads, the cluster benchmark one dataset). Ratios compare rows
of the same (dataset, cache, workload), by throughput.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from .cpu import MIN_SECONDS
from .sides import BASELINE, SEP, split_reader


@dataclass(frozen=True)
class Run:
    """One timed run.

    Parameters
    ----------
    seconds : float
    nbytes : int
        The bytes it delivered (read, decoded or written: each benchmark says which).
    count : int
        What else it counts: files, crops, examples (0: nothing).
    rss_peak, rss_before : int, optional
        The worker's peak RSS during the run and its RSS before, in bytes.
    cpu_busy, cpu_kernel : float, optional
        The machine's busy CPU seconds during the run, over all cores, and the kernel's part
        of them (:mod:`harness.cpu`).
    """

    seconds: float
    nbytes: int
    count: int = 0
    rss_peak: int | None = None
    rss_before: int | None = None
    cpu_busy: float | None = None
    cpu_kernel: float | None = None


@dataclass
class Result:
    """All timed runs of one row; ``error``: why it is not available.

    ``verified`` says what every run's result was checked against (empty: not checked yet);
    a run whose result is wrong sets ``error`` instead. ``value`` is the result itself (a
    sum) where rows are compared with each other or a reference (:func:`check_values`).
    """

    dataset: str = ""
    cache: str = ""
    workload: str = ""
    reader: str = ""
    runs: list[Run] = field(default_factory=list)
    note: str = ""
    error: str = ""
    verified: str = ""
    value: float | None = None

    @property
    def cell(self) -> tuple[str, str, str]:
        """The rows a ratio compares: same dataset, cache state and workload."""
        return self.dataset, self.cache, self.workload

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.runs)

    @property
    def median_s(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def gbps(self) -> float:
        """Decimal GB/s of the bytes a run delivered, at the median time."""
        return self.runs[0].nbytes / self.median_s / 1e9

    @property
    def per_s(self) -> float:
        """``count`` per second at the median time (files/s, crops/s ...)."""
        return self.runs[0].count / self.median_s

    @property
    def cores(self) -> tuple[float, float] | None:
        """Busy cores during the run of median time, and the kernel's part of them (None
        without counts, or for a run too short to count: :data:`harness.cpu.MIN_SECONDS`)."""
        runs = [r for r in self.runs if r.cpu_busy is not None and r.cpu_kernel is not None]
        if not runs:
            return None
        run = sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]
        if run.seconds < MIN_SECONDS:
            return None
        return run.cpu_busy / run.seconds, run.cpu_kernel / run.seconds

    @property
    def peak_rss(self) -> int | None:
        peaks = [r.rss_peak for r in self.runs if r.rss_peak is not None]
        return max(peaks) if peaks else None


def find(results: list[Result], like: Result, reader: str) -> Result | None:
    """The row of ``reader`` in ``like``'s cell, if it ran and succeeded."""
    for r in results:
        if r.reader == reader and r.cell == like.cell:
            return r if r.ok else None
    return None


def lookup(results: list[Result], reader: str, dataset: str = "", cache: str = "",
           workload: str = "") -> Result | None:
    """The row of ``reader`` in the cell (dataset, cache, workload), if it ran and succeeded."""
    return find(results, Result(dataset, cache, workload), reader)


def ratio(a: Result | None, b: Result | None) -> float | None:
    """Throughput of ``a`` over ``b``'s (None: one of them did not run)."""
    return a.gbps / b.gbps if a is not None and b is not None and a.ok else None


def versus(results: list[Result], r: Result, reader: str) -> float | None:
    """Throughput of ``r`` over ``reader``'s in the same cell."""
    return ratio(r, find(results, r, reader))


def versus_baseline(results: list[Result], r: Result) -> float | None:
    """Throughput of ``r`` over its baseline twin's (``NAME@baseline``) in the same cell;
    None for a baseline row itself, or a reader without a twin."""
    name, side = split_reader(r.reader)
    if side:
        return None
    return versus(results, r, f"{name}{SEP}{BASELINE}")


def check_values(results: list[Result], reference: float | None, rel_tol: float,
                 against: str) -> None:
    """Every row with a ``value`` must match ``reference`` (None: the first such row's, so
    the readers must agree with each other): a row that does gets ``verified`` (``against``
    says what it was compared with), one that does not an error "wrong result"."""
    values = [r.value for r in results if r.value is not None]
    want = reference if reference is not None else (values[0] if values else None)
    for r in results:
        if r.value is None or r.error:
            continue
        if math.isclose(r.value, want, rel_tol=rel_tol):
            r.verified = f"{against} (rel {rel_tol:g})"
        else:
            r.error = f"wrong result: sum {r.value:.8g}, expected {want:.8g}"
