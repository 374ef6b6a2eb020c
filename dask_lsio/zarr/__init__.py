"""The format layer: Zarr metadata to chunk keys, byte ranges, codec chains, shard indexes."""

from .codecs import ChunkCodec
from .read import read_region
from .spec import ArraySpec, ShardLayout, local_root, spec_from_array

__all__ = ["ArraySpec", "ChunkCodec", "ShardLayout", "local_root", "read_region", "spec_from_array"]
