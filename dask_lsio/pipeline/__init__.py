"""The zarr-python front end: LSIOCodecPipeline, a codec pipeline that reads and writes
through the same planner, store batches and decode kernel as ``from_zarr`` and ``to_zarr``.

Users name it ``dask_lsio.zarr.LSIOCodecPipeline`` (its registered name, also the
``zarr.codec_pipeline`` entry point), which stays valid wherever the class lives.
"""

import zarr.registry

from .codec_pipeline import LSIOCodecPipeline

zarr.registry.register_pipeline(LSIOCodecPipeline)  # also an entry point, for fresh processes

__all__ = ["LSIOCodecPipeline"]
