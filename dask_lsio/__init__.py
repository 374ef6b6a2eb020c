"""dask-lsio: load and write large Zarr arrays as fast as the hardware allows, with Dask."""

from importlib.metadata import PackageNotFoundError, version

from . import config  # noqa: F401  (loads the lsio defaults into dask.config)
from .errors import (ArrayNotFoundError, BatchIOError, ChunkDecodeError, EngineUnavailableError,
                     LSIOError, UnsupportedCodecError, UnsupportedStoreError,
                     VersionConflictError)
from .graph import Rechunked, RechunkStage, from_zarr, open_zarr, rechunk, to_zarr
from .io import ReadRequest, get_engine
from .loader import RandomCrops, iter_blocks, read_boxes
from . import pipeline  # noqa: F401  (registers LSIOCodecPipeline with zarr-python)
from .store import cleanup


def __getattr__(name: str):
    # the plugin imports distributed: only those who ask for it pay for that import
    if name == "LSIOWorkerPlugin":
        from .worker_plugin import LSIOWorkerPlugin

        return LSIOWorkerPlugin
    if name == "TorchCrops":  # imports torch
        from .loader import TorchCrops

        return TorchCrops
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    __version__ = version("dask-lsio")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "ArrayNotFoundError",
    "BatchIOError",
    "ChunkDecodeError",
    "EngineUnavailableError",
    "LSIOError",
    "LSIOWorkerPlugin",
    "RandomCrops",
    "ReadRequest",
    "RechunkStage",
    "Rechunked",
    "TorchCrops",
    "UnsupportedCodecError",
    "UnsupportedStoreError",
    "VersionConflictError",
    "__version__",
    "cleanup",
    "from_zarr",
    "get_engine",
    "iter_blocks",
    "open_zarr",
    "read_boxes",
    "rechunk",
    "to_zarr",
]
