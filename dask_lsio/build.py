"""How this installation of dask-lsio was built: its two C extensions (the io_uring engine and
the decode kernel), against which libraries, and when one is missing, why and how to fix it.

setup.py records this in ``dask_lsio/_build_info.py`` at build time. Without an extension
dask-lsio still works (the thread engine; numcodecs decoding) but several times slower, so the
first use of the slow path says so once, loudly (a log warning), and ``dask-lsio info`` says
it every time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger("dask_lsio")
NAMES = {"uring": "io_uring engine", "kernel": "C decode kernel"}
SLOWER = {"uring": "the thread engine reads and writes instead (slower, most of all on many "
                   "small chunks)",
          "kernel": "numcodecs decodes chunks instead (several times slower)"}
_warned: set[str] = set()
_lock = threading.Lock()


def build_info() -> dict[str, Any] | None:
    """setup.py's record of the build, or None (a tree that setup.py never built)."""
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        return None
    return BUILD_INFO


def describe(name: str) -> str:
    """One sentence on extension ``name`` ("uring" or "kernel"): built against what, or why
    not and how to fix it."""
    entry = ((build_info() or {}).get("extensions") or {}).get(name)
    if entry is None:
        return (f"no build record (a source tree not built by setup.py): build it with "
                f"pip install -e . to get the {NAMES[name]}")
    libs = ", ".join(f"{k} {v}" for k, v in (entry.get("libraries") or {}).items())
    if entry.get("status") == "built":
        where = "the bundled sources" if entry.get("source") == "bundled" else "system libraries"
        return f"built against {where} ({libs})" if libs else f"built against {where}"
    text = f"not built: {entry.get('reason') or entry.get('status')}"
    return f"{text}; to fix: {entry['fix']}" if entry.get("fix") else text


def missing_reason(name: str) -> str:
    """Why extension ``name`` cannot be imported: not built (the build record's reason and
    fix), or built but no longer loadable (e.g. its system library was removed since)."""
    entry = ((build_info() or {}).get("extensions") or {}).get(name)
    if entry is not None and entry.get("status") == "built":
        return (f"dask-lsio's {NAMES[name]} was built but cannot be loaded (a library it was "
                "built against is gone?): reinstall it with LSIO_BUNDLED=1 pip install "
                "--force-reinstall --no-deps --no-cache-dir dask-lsio")
    return f"dask-lsio was built without its {NAMES[name]} ({describe(name)})"


def warn_missing(name: str) -> None:
    """Log once per process that extension ``name`` is missing, why, and what runs instead."""
    with _lock:
        if name in _warned:
            return
        _warned.add(name)
    logger.warning("%s; %s", missing_reason(name), SLOWER[name])
