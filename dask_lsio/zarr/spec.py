"""ArraySpec: what a task needs to read a Zarr array, as small picklable plain data.

Built once on the client from the array's metadata (parsed by zarr-python); tasks use it to
name chunk objects and decode them without touching zarr-python.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
import zarr

from ..errors import ArrayNotFoundError, LSIOError, UnsupportedCodecError, UnsupportedStoreError
from .codecs import ChunkCodec, v2_chain, v3_chain


@dataclass(frozen=True)
class ShardLayout:
    """The inner chunking of a ``sharding_indexed`` array."""

    inner: tuple[int, ...]  # inner chunk shape
    index_at_end: bool
    index_crc32c: bool

    def per_shard(self, shard: tuple[int, ...]) -> tuple[int, ...]:
        """Inner chunks per shard along each dimension."""
        return tuple(s // i for s, i in zip(shard, self.inner))

    def index_nbytes(self, shard: tuple[int, ...]) -> int:
        """Bytes of the index: (offset, nbytes) uint64 pairs, and a crc32c if any."""
        return 16 * int(np.prod(self.per_shard(shard))) + (4 if self.index_crc32c else 0)


@dataclass(frozen=True)
class ArraySpec:
    """A Zarr array on a local file system, as dask-lsio tasks read it.

    Attributes
    ----------
    root : str
        Directory of the array (holding ``zarr.json`` or ``.zarray``).
    shape, dtype, fill_value
        As zarr-python reports them; ``dtype`` is the dtype of arrays we return.
    grid : tuple of int
        Shape of one stored object: the shard shape, or the chunk shape when unsharded.
    codec : ChunkCodec
        Decodes one stored chunk (an inner chunk when sharded).
    key_prefix, separator : str
        Chunk key encoding: ``c/0/1`` is prefix ``"c"`` and separator ``"/"``.
    shard : ShardLayout or None
    """

    root: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    grid: tuple[int, ...]
    codec: ChunkCodec
    key_prefix: str
    separator: str
    shard: ShardLayout | None
    zarr_format: int

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def key(self, coords: tuple[int, ...]) -> str:
        """The chunk key of grid position ``coords``."""
        parts = [str(c) for c in coords]
        if self.key_prefix:
            return self.separator.join([self.key_prefix, *parts])
        return self.separator.join(parts) if parts else "0"

    def path(self, coords: tuple[int, ...]) -> str:
        """The file of grid position ``coords``."""
        return os.path.join(self.root, self.key(coords))

    def paths(self, cells: np.ndarray) -> list[str]:
        """The files of many grid positions (the rows of ``cells``), as :meth:`path` names
        them, built by numpy from cached index names (a plan of a batch names hundreds)."""
        if not self.shape:
            return [self.path(())] * len(cells)
        sep = self.separator
        head = os.path.join(self.root, self.key_prefix + sep if self.key_prefix else "")
        cells = np.asarray(cells, np.int64).reshape(-1, self.ndim)
        out = np.full(len(cells), head, dtype=object)
        for a, (n, g) in enumerate(zip(self.shape, self.grid)):
            end = "" if a == self.ndim - 1 else sep
            count = -(-n // g)
            if count <= _MAX_NAMES:
                out += _index_names(count, end)[cells[:, a]]
            else:
                out += np.array([f"{i}{end}" for i in cells[:, a].tolist()], dtype=object)
        return out.tolist()

    def __dask_tokenize__(self) -> Any:
        return (type(self).__name__, self.root, self.shape, str(self.dtype), self.grid)


_MAX_NAMES = 1 << 16  # longer axes format their names per call


@functools.lru_cache(maxsize=64)
def _index_names(count: int, end: str) -> np.ndarray:
    """``f"{i}{end}"`` for every grid index ``i < count``, an object array to take from."""
    return np.array([f"{i}{end}" for i in range(count)], dtype=object)


def local_path(url: Any) -> str:
    """The local directory of a path, a ``file://`` URL, a ``zarr.storage.LocalStore`` (or a
    ``StorePath`` on one) or a ``zarr.Array`` on a LocalStore; :class:`UnsupportedStoreError`
    naming what it is for anything else (s3:// URLs, a MemoryStore ...)."""
    if isinstance(url, zarr.Array):
        return local_path(url.store_path)
    if isinstance(url, zarr.storage.StorePath):
        return os.path.join(local_path(url.store), url.path)
    if isinstance(url, zarr.storage.LocalStore):
        return str(url.root)
    if not isinstance(url, (str, os.PathLike)):
        raise UnsupportedStoreError(describe_store(url))
    path = os.fspath(url)
    if "://" not in path:  # a plain path (which may hold a colon)
        return path
    parsed = urlparse(path)
    if parsed.scheme != "file":
        raise UnsupportedStoreError(describe_store(path))
    return parsed.path


def describe_store(store: Any) -> str:
    """What a store is, for messages: ``"a zarr.storage.MemoryStore"``, ``"s3:// URLs"``."""
    if isinstance(store, zarr.Array):
        return f"arrays in {describe_store(store.store_path.store)}"
    if isinstance(store, (str, os.PathLike)):
        scheme = urlparse(os.fspath(store)).scheme
        return f"{scheme}:// URLs" if scheme and scheme != "file" else "local paths"
    kind = type(store)
    module = "zarr.storage" if kind.__module__.startswith("zarr.storage") else kind.__module__
    return f"a {module}.{kind.__name__}"


def local_root(url: Any, component: str | None) -> tuple[str, zarr.Array]:
    """The directory of the array at ``url``/``component`` and the array opened there.

    ``url`` may be a path, a ``file://`` URL, a ``zarr.storage.LocalStore`` or a
    ``zarr.Array`` on one. Other stores raise :class:`UnsupportedStoreError` (read through
    zarr-python instead).
    """
    if isinstance(url, zarr.Array):
        return local_path(url), url
    root = os.path.abspath(os.path.join(local_path(url), component or ""))
    if not any(os.path.isfile(os.path.join(root, m)) for m in ("zarr.json", ".zarray")):
        what = "a group" if os.path.isfile(os.path.join(root, ".zgroup")) else "nothing"
        raise ArrayNotFoundError(f"no Zarr array at {root!r} (found {what} there)")
    try:
        arr = zarr.open_array(store=root, mode="r")
    except zarr.errors.NodeTypeValidationError as e:  # a v3 group's zarr.json
        raise ArrayNotFoundError(f"no Zarr array at {root!r} (found a group there)") from e
    except Exception as e:  # zarr raises several types for broken metadata
        raise LSIOError(f"unreadable Zarr metadata at {root!r}: {type(e).__name__}: {e}") from e
    return root, arr


def spec_from_array(root: str, arr: zarr.Array) -> ArraySpec:
    """Build the spec from an opened array's metadata."""
    return spec_from_metadata(root, arr.metadata)


def spec_from_metadata(root: str, metadata: Any) -> ArraySpec:
    """Build the spec from zarr-python's ``ArrayV2Metadata`` / ``ArrayV3Metadata``.

    Raises :class:`UnsupportedCodecError` naming the array (``root``) for what dask-lsio
    does not decode itself."""
    try:
        return _spec(root, metadata)
    except UnsupportedCodecError as e:
        if root:
            e.name_array(root)
        raise


def _spec(root: str, metadata: Any) -> ArraySpec:
    meta = metadata.to_dict()
    shape = tuple(int(s) for s in metadata.shape)
    dtype = np.dtype(metadata.dtype.to_native_dtype())
    # v2 allows no fill value: zarr-python then reads missing chunks as zeros
    fill = np.zeros((), dtype)[()] if metadata.fill_value is None else metadata.fill_value
    if meta["zarr_format"] == 2:
        grid = tuple(int(c) for c in meta["chunks"])
        codec = v2_chain(meta, grid)
        sep = meta.get("dimension_separator") or "."
        return ArraySpec(root, shape, dtype, fill, grid, codec, "", sep, None, 2)
    grid_meta = meta["chunk_grid"]
    if grid_meta.get("name") != "regular":
        raise UnsupportedCodecError(f"chunk grid {grid_meta.get('name')!r}", None)
    grid = tuple(int(c) for c in grid_meta["configuration"]["chunk_shape"])
    codecs, shard = meta["codecs"], None
    inner_shape = grid
    if codecs and codecs[0]["name"] == "sharding_indexed":
        if len(codecs) > 1:
            raise UnsupportedCodecError("codecs after sharding_indexed", "sharding_indexed")
        shard, codecs, inner_shape = _shard_layout(codecs[0]["configuration"])
    codec = v3_chain(codecs, inner_shape, meta["data_type"])
    enc = meta["chunk_key_encoding"]
    sep = (enc.get("configuration") or {}).get("separator")
    if enc["name"] == "default":
        prefix, sep = "c", sep or "/"
    elif enc["name"] == "v2":
        prefix, sep = "", sep or "."
    else:
        raise UnsupportedCodecError(f"chunk key encoding {enc['name']!r}", None)
    return ArraySpec(root, shape, dtype, fill, grid, codec, prefix, sep, shard, 3)


def _shard_layout(conf: dict) -> tuple[ShardLayout, list[dict], tuple[int, ...]]:
    inner = tuple(int(c) for c in conf["chunk_shape"])
    index_names = [c["name"] for c in conf.get("index_codecs", [])]
    if index_names not in (["bytes"], ["bytes", "crc32c"]):
        raise UnsupportedCodecError(f"shard index codecs {index_names}", "sharding_indexed")
    endian = (conf["index_codecs"][0].get("configuration") or {}).get("endian", "little")
    if endian != "little":
        raise UnsupportedCodecError("a big-endian shard index", "sharding_indexed")
    inner_codecs = conf["codecs"]
    if any(c["name"] == "sharding_indexed" for c in inner_codecs):
        raise UnsupportedCodecError("nested sharding", "sharding_indexed")
    at_end = conf.get("index_location", "end") == "end"
    return ShardLayout(inner, at_end, "crc32c" in index_names), inner_codecs, inner
