"""``python -m dask_lsio``: the ``dask-lsio`` command (see :mod:`dask_lsio.cli`)."""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
