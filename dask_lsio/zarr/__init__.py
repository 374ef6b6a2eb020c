"""The format layer: Zarr metadata to chunk keys, byte ranges, codec chains, shard indexes,
the planner, the executor and the decode kernel."""

from typing import Any

from .codecs import ChunkCodec
from .read import read_region
from .spec import ArraySpec, ShardLayout, open_array, spec_from_array


def __getattr__(name: str) -> Any:
    # the name users configure (``codec_pipeline.path``) and the entry point load; the class
    # is a front end and lives in dask_lsio.pipeline
    if name == "LSIOCodecPipeline":
        from ..pipeline import LSIOCodecPipeline

        return LSIOCodecPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ArraySpec", "ChunkCodec", "LSIOCodecPipeline", "ShardLayout", "open_array",
           "read_region", "spec_from_array"]
