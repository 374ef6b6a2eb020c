"""What a benchmark reports: its table, its "done when" checks, and its JSON file.

Every benchmark ends the same way (:func:`finish`): the JSON file (how it was measured, one
row per result, the checks) with a bar chart beside it, where they are, and the checks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .chart import save_chart


@dataclass(frozen=True)
class Check:
    """One of the issue's "done when" lines: ``value`` (None: not measured) >= ``target``."""

    text: str
    value: float | None
    target: float
    detail: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "SKIP"
        return "PASS" if self.value >= self.target else "FAIL"

    def line(self) -> str:
        value = "not measured" if self.value is None else f"{self.value:,.2f}"
        detail = f" ({self.detail})" if self.detail else ""
        return f"[{self.status}] {self.text}: {value} (target >= {self.target:,g}){detail}"


def rel(a: float | None, b: float | None) -> float | None:
    """``a / b`` where both were measured, for a check's value."""
    return a / b if a and b else None


def fmt(x: float | None, spec: str = ".2f") -> str:
    """A ratio (or any number) for a table; "-" where there is nothing to show."""
    return "-" if x is None else format(x, spec)


@dataclass(frozen=True)
class Column:
    """A table column: its title, width and alignment ("<" or ">")."""

    title: str
    width: int
    align: str = ">"


@dataclass(frozen=True)
class Unavailable:
    """A row whose reader did not run: its leading cells, then why."""

    lead: list[str]
    why: str


BASELINE_COLUMN = Column("x baseline", 10)
BASELINE_LEGEND = ("x baseline: GB/s over the same reader's with the baseline's dask_lsio "
                   "(its NAME@baseline row, same row group)")
CORES_COLUMN = Column("cores (kernel)", 14)
CORES_LEGEND = ("cores: the machine's busy cores in the run of median time (CPU seconds of "
                "all cores / seconds), and in brackets the kernel's part (system, irq, "
                "softirq; harness.cpu)")


def fmt_cores(cores: tuple[float, float] | None) -> str:
    """A row's :attr:`~harness.results.Result.cores` for :data:`CORES_COLUMN`."""
    return "-" if cores is None else f"{cores[0]:.2f} ({cores[1]:.2f})"


def print_table(columns: list[Column], rows: list[list[str] | Unavailable], legend: str) -> None:
    """A header, a rule, the rows and the legend (what the units and ratios mean)."""

    def line(cells: list[str]) -> str:
        return " ".join(f"{c:{col.align}{col.width}}" for col, c in zip(columns, cells))

    head = line([c.title for c in columns])
    print(head)
    print("-" * len(head))
    for r in rows:
        if isinstance(r, Unavailable):
            print(f"{line(r.lead)} not available: {r.why}")
        else:
            print(line(r))
    print(legend)


def run_meta(args: argparse.Namespace, skipped: dict[str, str] | None = None) -> dict:
    """Where and how a benchmark ran (date, machine, Python, its arguments, the peers it
    skipped), for its JSON."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "python": sys.version.split()[0], "numpy": np.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "skipped": dict(skipped or {}),
    }


def save_json(path: Path, meta: dict, rows: list[dict], checks: list[Check]) -> None:
    """A benchmark's JSON file (how it was measured, its result rows, its checks) and the
    bar chart beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checks_out = [
        {"check": c.text, "status": c.status, "value": c.value, "target": c.target,
         "detail": c.detail}
        for c in checks
    ]
    path.write_text(json.dumps({"meta": meta, "results": rows, "checks": checks_out}, indent=1))
    save_chart(path.with_suffix(".png"), rows, f"{path.stem} ({meta.get('date', '')[:10]}, "
               f"{meta.get('cpus', '?')} cores)")


def finish(args: argparse.Namespace, meta: dict, rows: list[dict], checks: list[Check],
           started: float) -> None:
    """A benchmark's last lines: save the JSON file and the chart, say where, print the
    "done when" checks. ``started``: ``time.perf_counter()`` at its start."""
    meta["wall_s"] = time.perf_counter() - started
    save_json(args.json, meta, rows, checks)
    print(f"\nraw timings: {args.json}   (total {meta['wall_s']:.1f} s)")
    if args.size != "full":
        print(f"note: --{args.size} uses small datasets; the targets are meant for the full run")
    print("\ndone when:")
    for c in checks:
        print(c.line())
