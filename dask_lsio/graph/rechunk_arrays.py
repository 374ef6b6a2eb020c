"""What a rechunk copies: the source arrays (an array, a group's arrays, a dataset's
variables), the target chunks each one gets, and the target arrays created for them, with
their metadata, through zarr-python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import zarr

from ..errors import ArrayNotFoundError
from ..store import Store, open_store
from ..zarr.spec import found_at

# compressors by name (the command line's --compressor), per Zarr format
_NAMES = ("zstd", "lz4", "blosc-zstd", "gzip", "none")


@dataclass(frozen=True)
class Source:
    """The arrays to copy: ``arrays`` by path inside ``group`` ('' for a lone array)."""

    store: Store
    group: zarr.Group | None
    arrays: dict[str, zarr.Array]


def open_source(source: Any, storage_options: Mapping[str, Any] | None) -> Source:
    """The arrays of ``source``: a path/URL (of an array or a group), a zarr.Array, a
    zarr.Group, or an xarray.Dataset opened with :func:`dask_lsio.open_zarr` (its
    variables that are arrays of the group it was opened from)."""
    if isinstance(source, zarr.Array):
        return Source(open_store(source), None, {"": source})
    if isinstance(source, zarr.Group):
        return Source(open_store(source.store).child(source.path) if source.path
                      else open_store(source.store), source, _members(source))
    names = None
    if type(source).__name__ == "Dataset" and hasattr(source, "encoding"):
        where = source.encoding.get("source")
        if where is None:
            raise ValueError("this xarray.Dataset does not say where it was read from: open "
                             "it with dask_lsio.open_zarr (or pass the store's path)")
        names = {str(n) for n in source.variables}
        group = source.encoding.get("group")
        source = f"{str(where).rstrip('/')}/{group.strip('/')}" if group else where
    store = opened(source, storage_options)
    node = _node(store)
    if node is None:
        raise ArrayNotFoundError(f"no Zarr array or group at {store.url!r}")
    if isinstance(node, zarr.Array):
        return Source(store, None, {"": node})
    group = node
    arrays = _members(group)
    if names is not None:
        arrays = {p: a for p, a in arrays.items() if p in names}
    return Source(store, group, arrays)


def _members(group: zarr.Group) -> dict[str, zarr.Array]:
    return {path: a for path, a in sorted(group.members(max_depth=None))
            if isinstance(a, zarr.Array)}


def dims_of(arr: zarr.Array) -> tuple[str | None, ...]:
    """The dimension names of an array (v3 metadata, or xarray's v2 attribute)."""
    names = getattr(arr.metadata, "dimension_names", None)
    if names is None:
        names = arr.attrs.get("_ARRAY_DIMENSIONS")
    return tuple(names) if names is not None else (None,) * arr.ndim


def read_chunks(arr: zarr.Array) -> tuple[int, ...]:
    """The chunks an array is decoded in (inner chunks of shards)."""
    return tuple(arr.chunks)


def shape_for(arr: zarr.Array, path: str, given: Any, what: str,
              default: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The shape ``given`` (target_chunks or shards) says for ``arr``: a tuple (-1 or None
    for a whole axis), an int for every axis, a ``{dim: size}`` dict, or for groups a dict
    by array path of those; axes not named keep ``default``. None where nothing is asked
    and ``default`` is None."""
    if isinstance(given, Mapping) and path in given:
        given = given[path]
    elif isinstance(given, Mapping) and not path and arr.basename in given:
        given = given[arr.basename]
    if given is None:
        return default
    n = arr.ndim
    if isinstance(given, Mapping):
        dims = dims_of(arr)
        by_dim = {k: v for k, v in given.items() if k in dims}
        if default is None and not by_dim:
            return None
        out = list(default if default is not None else arr.shape)
        for d, v in by_dim.items():
            out[dims.index(d)] = v
    elif isinstance(given, int):
        out = [given] * n
    else:
        out = list(given)
        if len(out) != n:
            raise ValueError(f"{what} {tuple(given)} has {len(out)} entries for "
                             f"{_name(arr, path)}, of {n} dimensions {arr.shape}")
    shape = []
    for size, extent in zip(out, arr.shape):
        if size is None or size == -1:
            size = max(1, extent)
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"{what} of {_name(arr, path)} must be positive integers (-1 or "
                             f"None: the whole axis); got {tuple(out)}")
        shape.append(int(size))
    return tuple(shape)


def check_names(given: Any, source: Source, what: str) -> None:
    """ValueError for keys of a ``given`` dict that name neither an array nor a dimension."""
    if not isinstance(given, Mapping):
        return
    dims = {d for a in source.arrays.values() for d in dims_of(a)}
    paths = set(source.arrays) | {a.basename for a in source.arrays.values()}
    unknown = [k for k in given if k not in dims and k not in paths]
    if unknown:
        raise ValueError(f"{what} names {unknown}, which are neither arrays nor dimensions of "
                         f"{source.store.url!r} (dimensions: {sorted(d for d in dims if d)})")


def create_options(arr: zarr.Array, chunks: tuple[int, ...], shards: tuple[int, ...] | None,
                   compressors: Any, filters: Any, serializer: Any, zarr_format: int | None,
                   target_options: Mapping[str, Any] | None) -> dict:
    """Arguments of :func:`zarr.create_array` for the target of ``arr``: its shape, dtype,
    fill_value and attributes; codecs as the source's unless given (zarr's defaults when the
    format changes)."""
    fmt = zarr_format or arr.metadata.zarr_format
    same = fmt == arr.metadata.zarr_format
    attrs = dict(arr.attrs)
    dims = dims_of(arr)
    opts: dict[str, Any] = {"shape": arr.shape, "dtype": arr.dtype, "chunks": chunks,
                            "fill_value": arr.metadata.fill_value, "zarr_format": fmt}
    if fmt == 3:
        attrs.pop("_ARRAY_DIMENSIONS", None)
        if any(d is not None for d in dims):
            opts["dimension_names"] = dims
        opts["shards"] = shards
    elif shards is not None:
        raise ValueError("shards need zarr_format=3")
    elif any(d is not None for d in dims):
        attrs["_ARRAY_DIMENSIONS"] = list(dims)
    opts["attributes"] = attrs
    if compressors is None:
        opts["compressors"] = arr.compressors if same else "auto"
    else:
        opts["compressors"] = named_compressor(compressors, fmt)
    opts["filters"] = (arr.filters if same else "auto") if filters is None else filters
    if fmt == 3:
        opts["serializer"] = ((arr.serializer if same else "auto") if serializer is None
                              else serializer)
    opts.update(target_options or {})
    return opts


def named_compressor(value: Any, zarr_format: int) -> Any:
    """A compressor given by name ("zstd", "lz4", "blosc-zstd", "gzip", "none") as
    zarr.create_array takes it for ``zarr_format``; anything else as it is."""
    if not isinstance(value, str) or value == "auto":
        return value
    if value not in _NAMES:
        raise ValueError(f"unknown compressor {value!r}: one of {_NAMES}, or what "
                         "zarr.create_array takes")
    if value == "none":
        return None
    if zarr_format == 2:
        import numcodecs

        return {"zstd": numcodecs.Zstd(level=3), "gzip": numcodecs.GZip(level=5),
                "lz4": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE),
                "blosc-zstd": numcodecs.Blosc("zstd", 3, numcodecs.Blosc.SHUFFLE)}[value]
    from zarr import codecs

    return {"zstd": codecs.ZstdCodec(level=3), "gzip": codecs.GzipCodec(level=5),
            "lz4": codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            "blosc-zstd": codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")}[value]


def create_target(store: Store, path: str, options: dict, overwrite: bool
                  ) -> tuple[zarr.Array, bool]:
    """The target array at ``path`` under ``store``: created, or (an array with the same
    metadata already there: a rerun) opened to resume; second: whether it was there.

    Raises zarr's ContainsArrayError (ContainsGroupError) when something else is there
    and ``overwrite`` is False.
    """
    place = store.child(path) if path else store
    node = None if overwrite else _node(place)
    if isinstance(node, zarr.Array):
        probe = zarr.create_array(store=zarr.storage.MemoryStore(), **options)
        if _comparable(node.metadata) == _comparable(probe.metadata):
            return zarr.open_array(store=place.zarr_target, mode="r+"), True
        raise zarr.errors.ContainsArrayError(
            f"an array with other metadata is at {place.url!r}: pass overwrite=True to "
            "replace it (a rerun with the same arguments resumes instead)")
    if node is not None:
        raise zarr.errors.ContainsGroupError(
            f"a group is at {place.url!r}, where the target array would go: pass "
            "overwrite=True to replace it")
    arr = zarr.create_array(store=store.zarr_target, name=path or None, overwrite=True,
                            **options)
    return arr, False


def create_groups(store: Store, source: Source, zarr_format: int | None,
                  overwrite: bool) -> None:
    """The target's groups (the source group and those inside it) with their attributes."""
    groups = [("", source.group)] + [(p, g) for p, g in sorted(
        source.group.members(max_depth=None)) if isinstance(g, zarr.Group)]
    fmt = zarr_format or source.group.metadata.zarr_format
    for path, g in groups:
        place = store.child(path) if path else store
        node = None if overwrite else _node(place)
        if isinstance(node, zarr.Group):
            continue  # a rerun: the arrays inside say whether they match
        if node is not None:
            raise zarr.errors.ContainsArrayError(
                f"an array is at {place.url!r}, where the target group would go: pass "
                "overwrite=True to replace it")
        zarr.create_group(store=store.zarr_target, path=path or None, overwrite=overwrite,
                          attributes=dict(g.attrs), zarr_format=fmt)


def _node(store: Store) -> zarr.Array | zarr.Group | None:
    """The array or group at the store's root, None where there is nothing."""
    if found_at(store) == "nothing":
        return None
    return zarr.open(store=store.zarr_target, mode="r")


def _comparable(metadata: Any) -> dict:
    d = metadata.to_dict()
    d.pop("attributes", None)  # attributes may be edited later; the layout may not
    return d


def _name(arr: zarr.Array, path: str) -> str:
    return f"array {path!r}" if path else f"the array {arr.name!r}"


def sibling(target: Any, store: Store, suffix: str, storage_options: Any) -> Store:
    """A store next to the target for its intermediate arrays (a new MemoryStore for a
    memory target)."""
    if isinstance(target, str | os.PathLike):
        return opened(f"{os.fspath(target).rstrip('/')}{suffix}", storage_options)
    if store.description.kind == "memory":
        return open_store(zarr.storage.MemoryStore())
    return opened(f"{store.url.rstrip('/')}{suffix}", storage_options)


def opened(url: Any, storage_options: Mapping[str, Any] | None) -> Store:
    """The store of ``url``; ``storage_options`` (one set for the source, target and temp)
    go to those given by an object-store URL only."""
    remote = isinstance(url, str) and "://" in url and not url.startswith("file://")
    return open_store(url, storage_options if remote else None)
