"""The Dask side: graphs of coarse blocks that read or write many chunks per task."""

from .from_zarr import from_zarr
from .open_zarr import open_zarr
from .rechunk import RechunkStage, Rechunked, rechunk
from .source import ZarrSource
from .target import ZarrTarget
from .to_zarr import to_zarr

__all__ = ["RechunkStage", "Rechunked", "ZarrSource", "ZarrTarget", "from_zarr", "open_zarr",
           "rechunk", "to_zarr"]
