"""ArraySpec: what a task needs to read a Zarr array, as small picklable plain data.

Built once on the client from the array's metadata (parsed by zarr-python); tasks use it to
name chunk objects (keys in the array's store) and decode them without touching zarr-python.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import zarr

from ..errors import ArrayNotFoundError, LSIOError, UnsupportedCodecError
from ..store import LocalStore, Store, open_store
from .codecs import ChunkCodec, v2_chain, v3_chain
from .shard import ShardLayout


@dataclass(frozen=True)
class ArraySpec:
    """A Zarr array as dask-lsio tasks read and write it: plain data, small and picklable.

    Attributes
    ----------
    store : Store
        The objects of the array: a store rooted at the array (it pickles as its
        description). Chunk keys (``c/0/1``) are relative to it.
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

    store: Store
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

    @property
    def root(self) -> str:
        """Where the array is, for messages (its directory or URL)."""
        return self.store.url

    def key(self, coords: tuple[int, ...]) -> str:
        """The key of the object at grid position ``coords``."""
        parts = [str(c) for c in coords]
        if self.key_prefix:
            return self.separator.join([self.key_prefix, *parts])
        return self.separator.join(parts) if parts else "0"

    def keys(self, cells: np.ndarray) -> list[str]:
        """The keys of many grid positions (the rows of ``cells``), as :meth:`key` names
        them, built by numpy from cached index names (a plan of a batch names hundreds)."""
        if not self.shape:
            return [self.key(())] * len(cells)
        sep = self.separator
        cells = np.asarray(cells, np.int64).reshape(-1, self.ndim)
        out = np.full(len(cells), self.key_prefix + sep if self.key_prefix else "", dtype=object)
        for a, (n, g) in enumerate(zip(self.shape, self.grid)):
            end = "" if a == self.ndim - 1 else sep
            count = -(-n // g)
            if count <= _MAX_NAMES:
                out += _index_names(count, end)[cells[:, a]]
            else:
                out += np.array([f"{i}{end}" for i in cells[:, a].tolist()], dtype=object)
        return out.tolist()

    def __dask_tokenize__(self) -> Any:
        return (type(self).__name__, self.store.description, self.shape, str(self.dtype),
                self.grid)


_MAX_NAMES = 1 << 16  # longer axes format their names per call


@functools.lru_cache(maxsize=64)
def _index_names(count: int, end: str) -> np.ndarray:
    """``f"{i}{end}"`` for every grid index ``i < count``, an object array to take from."""
    return np.array([f"{i}{end}" for i in range(count)], dtype=object)


def open_array(url: Any, component: str | None = None,
               storage_options: Mapping[str, Any] | None = None) -> tuple[Store, zarr.Array]:
    """The store of the array at ``url``/``component`` (rooted at the array) and the array
    opened there by zarr-python.

    ``url`` may be anything :func:`dask_lsio.store.open_store` takes. Stores without a
    backend raise :class:`UnsupportedStoreError` (read through zarr-python instead); where
    there is no array, :class:`ArrayNotFoundError` says what is there.
    """
    if isinstance(url, zarr.Array):
        return open_store(url), url
    store = open_store(url, storage_options)
    if component:
        store = store.child(component.strip("/"))
    try:
        arr = zarr.open_array(store=store.zarr_target, mode="r")
    except zarr.errors.NodeTypeValidationError as e:  # a v3 group's zarr.json
        raise ArrayNotFoundError(f"no Zarr array at {store.url!r} (found a group there)") from e
    except Exception as e:  # zarr raises several types; what is there tells them apart
        # (asked only now: on an object store each question costs a round trip)
        what = found_at(store)
        if what != "an array":
            raise ArrayNotFoundError(f"no Zarr array at {store.url!r} (found {what} there)"
                                     ) from None
        raise LSIOError(f"unreadable Zarr metadata at {store.url!r}: {type(e).__name__}: {e}"
                        ) from e
    return store, arr


def found_at(store: Store) -> str:
    """What the metadata at the store's root says is there: "an array" (or a v3 group's
    ``zarr.json``: zarr-python tells them apart when it opens it), "a group" or "nothing"."""
    found = {key for key, there in zip(_METADATA, store.has(_METADATA)) if there}
    if found & {"zarr.json", ".zarray"}:
        return "an array"
    return "a group" if ".zgroup" in found else "nothing"


_METADATA = ["zarr.json", ".zarray", ".zgroup"]


def spec_from_array(store: Store | str, arr: zarr.Array) -> ArraySpec:
    """Build the spec from an opened array's metadata; ``store`` holds its objects (a
    :class:`~dask_lsio.store.Store` rooted at the array, or its local directory)."""
    return spec_from_metadata(store, arr.metadata)


def spec_from_metadata(store: Store | str, metadata: Any) -> ArraySpec:
    """Build the spec from zarr-python's ``ArrayV2Metadata`` / ``ArrayV3Metadata``.

    Raises :class:`UnsupportedCodecError` naming the array for what dask-lsio does not
    decode itself."""
    store = store if isinstance(store, Store) else LocalStore(store)
    try:
        return _spec(store, metadata)
    except UnsupportedCodecError as e:
        e.name_array(store.url)
        raise


def _spec(root: Store, metadata: Any) -> ArraySpec:
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
