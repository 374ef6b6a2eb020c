"""dask-lsio: load and write large Zarr arrays as fast as the hardware allows, with Dask."""

from importlib.metadata import PackageNotFoundError, version

from . import config  # noqa: F401  (loads the lsio defaults into dask.config)
from .errors import BatchIOError, EngineUnavailableError, LSIOError
from .graph import from_zarr, open_zarr, to_zarr
from .io import ReadRequest, get_engine


def __getattr__(name: str):
    # the plugin imports distributed: only those who ask for it pay for that import
    if name == "LSIOWorkerPlugin":
        from .worker_plugin import LSIOWorkerPlugin

        return LSIOWorkerPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    __version__ = version("dask-lsio")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "BatchIOError",
    "EngineUnavailableError",
    "LSIOError",
    "LSIOWorkerPlugin",
    "ReadRequest",
    "__version__",
    "from_zarr",
    "get_engine",
    "open_zarr",
    "to_zarr",
]
