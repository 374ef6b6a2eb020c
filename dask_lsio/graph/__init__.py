"""The Dask side: graphs of coarse blocks that read many chunks per task."""

from .from_zarr import from_zarr
from .source import ZarrSource

__all__ = ["ZarrSource", "from_zarr"]
