"""dask-lsio: load and write large Zarr arrays as fast as the hardware allows, with Dask."""

from importlib.metadata import PackageNotFoundError, version

from . import config  # noqa: F401  (loads the lsio defaults into dask.config)
from .errors import BatchIOError, EngineUnavailableError, LSIOError
from .graph import from_zarr, to_zarr
from .io import ReadRequest, get_engine

try:
    __version__ = version("dask-lsio")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "BatchIOError",
    "EngineUnavailableError",
    "LSIOError",
    "ReadRequest",
    "__version__",
    "from_zarr",
    "get_engine",
    "to_zarr",
]
