"""distributed: one IO engine per worker, set up and torn down by a WorkerPlugin."""

from .plugin import LSIOWorkerPlugin

__all__ = ["LSIOWorkerPlugin"]
