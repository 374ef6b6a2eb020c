"""The command line every benchmark shares, and what follows from it.

Every ``bench_*.py`` takes ``--quick`` (small sizes, 2 repeats), ``--tiny`` (smaller still, 1
repeat: for the test suite, which checks what a benchmark reports, not its speed),
``--repeats``, ``--no-cold``, ``--data-dir``, ``--json`` and ``--baseline``; each adds its own
options (``--only``, ``--readers`` ...) to the parser :func:`parser` returns.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

from .cache import DROP_CACHES, can_drop_caches

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "benchmarks" / "data"
RESULTS_DIR = REPO / "bench-results"
REPEATS = {"full": 5, "quick": 2, "tiny": 1}  # default timed runs per size


def parser(doc: str, name: str, quick: str, tiny: str) -> argparse.ArgumentParser:
    """A benchmark's parser with the common options; defaults resolve against the
    repository, not the working directory.

    Parameters
    ----------
    doc : str
        The script's docstring; its first line is the description.
    name : str
        The benchmark ("io", "read" ...): the default JSON is ``bench-results/bench_NAME.json``.
    quick, tiny : str
        What ``--quick`` and ``--tiny`` run, for their help.
    """
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help="where the datasets are generated once and reused")
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--tiny", action="store_true",
                   help=f"{tiny}: smaller than --quick, for the test suite (it checks what the "
                        "benchmark reports; the numbers mean nothing)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs (default 5; quick 2; tiny 1)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / f"bench_{name}.json",
                   help="raw timings and medians (a PNG chart goes beside it)")
    p.add_argument("--baseline", type=Path, default=None, metavar="CHECKOUT_OR_PYTHON",
                   help="compare with another dask-lsio in the same run: a checkout (its C "
                        "extensions built in place) or the Python of a venv it is installed "
                        "in; its readers run as NAME@baseline, the table shows 'x baseline'")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: serve one reader
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; adds ``args.size`` ("full", "quick" or "tiny") and the default
    ``--repeats`` of that size."""
    args = p.parse_args(argv)
    args.size = "tiny" if args.tiny else "quick" if args.quick else "full"
    if args.repeats is None:
        args.repeats = REPEATS[args.size]
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def name_list(p: argparse.ArgumentParser, value: str, known: Iterable[str],
              option: str) -> list[str]:
    """The comma-separated names of ``value``, each one of ``known`` (else a usage error)."""
    known = list(known)
    names = [x.strip() for x in value.split(",") if x.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        p.error(f"{option}: unknown {unknown}; choose from {known}")
    return names


def cache_states(args: argparse.Namespace) -> list[str]:
    """The cache states to run ("warm", and "cold" when allowed), saying why cold is
    skipped when it is."""
    if args.no_cold:
        print("note: --no-cold given, cold-cache runs skipped")
        return ["warm"]
    if not can_drop_caches():
        print(f"note: cold-cache runs skipped (need root to write {DROP_CACHES})")
        return ["warm"]
    return ["warm", "cold"]
