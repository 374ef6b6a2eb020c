"""The format layer: Zarr metadata to chunk keys, byte ranges, codec chains, shard indexes."""

import zarr.registry

from .codecs import ChunkCodec
from .pipeline import LSIOCodecPipeline
from .read import read_region
from .spec import ArraySpec, ShardLayout, local_root, spec_from_array

zarr.registry.register_pipeline(LSIOCodecPipeline)  # also an entry point, for fresh processes

__all__ = ["ArraySpec", "ChunkCodec", "LSIOCodecPipeline", "ShardLayout", "local_root",
           "read_region", "spec_from_array"]
