"""Sources of crops: whatever the user passes (paths, zarr arrays, dask_lsio arrays, xarray
objects opened with dask_lsio) as :class:`Source`: an ArraySpec, dimension names, index
coordinates and the crop size along each axis."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import zarr

from ..errors import LSIOError
from ..zarr.shard import IndexCache
from ..zarr.spec import ArraySpec, local_root, spec_from_array


@dataclass
class Source:
    """One array that crops are cut from.

    Attributes
    ----------
    name : str
        The key of its crops in a batch.
    spec : ArraySpec
    dims : tuple of str
        Dimension names (``dim_0``, ... when the array has none).
    coords : dict
        1-D coordinate values of the dimensions that have them (xarray indexes).
    crop : tuple of int
        Crop size along each axis (the whole axis where the user gave none).
    """

    name: str
    spec: ArraySpec
    dims: tuple[str, ...]
    coords: dict[str, np.ndarray]
    crop: tuple[int, ...] = ()
    indexes: IndexCache | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.indexes is None and self.spec.shard is not None:
            self.indexes = IndexCache(self.spec)

    def __getstate__(self) -> dict:  # shard indexes are rebuilt where the source goes
        return {k: v for k, v in self.__dict__.items() if k != "indexes"} | {"indexes": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()


def make_sources(sources: Any, crop: Any) -> list[Source]:
    """Sources from what the user passed: one object, a list, or a dict name -> object,
    where an object is a path, ``zarr.Array``, dask_lsio array, ``xarray.DataArray`` or
    ``xarray.Dataset`` (one source per data variable). ``crop`` gives sizes per dimension
    name (dict), per axis (tuple), or per source name (dict of those)."""
    named = _named(sources)
    out = []
    for name, obj in named:
        for sub, (spec, dims, coords) in _resolve(name, obj):
            out.append(Source(sub, spec, dims, coords))
    if not out:
        raise ValueError("RandomCrops needs at least one source")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be distinct, got {names}")
    for s in out:
        s.crop = _crop_of(s, crop)
    return out


def _named(sources: Any) -> list[tuple[str, Any]]:
    if isinstance(sources, Mapping):
        return [(str(k), v) for k, v in sources.items()]
    if isinstance(sources, (list, tuple)):
        return [(_default_name(v, i), v) for i, v in enumerate(sources)]
    return [(_default_name(sources, 0), sources)]


def _default_name(obj: Any, i: int) -> str:
    name = getattr(obj, "name", None)
    if isinstance(name, str) and name and not _is_zarr(obj):
        return name
    if isinstance(obj, (str, os.PathLike)):
        return os.path.basename(os.path.normpath(os.fspath(obj))) or str(i)
    return str(i) if i else "data"


def _is_zarr(obj: Any) -> bool:
    return isinstance(obj, zarr.Array)


def _resolve(name: str, obj: Any) -> list[tuple[str, tuple[ArraySpec, tuple, dict]]]:
    """(name, (spec, dims, coords)) for ``obj``; several for a Dataset."""
    kind = type(obj).__module__.split(".")[0] + "." + type(obj).__name__
    if kind == "xarray.Dataset":
        return [(f"{name}/{var}" if name != "data" else str(var), _from_xarray(obj[var]))
                for var in obj.data_vars]
    if kind == "xarray.DataArray":
        return [(name, _from_xarray(obj))]
    if kind == "dask.Array" or type(obj).__name__ == "Array" and hasattr(obj, "dask"):
        spec = _spec_of_dask(obj, name)
        return [(name, (spec, _dims_default(spec), {}))]
    root, arr = local_root(obj, None)
    spec = spec_from_array(root, arr)
    return [(name, (spec, _zarr_dims(arr), {}))]


def _from_xarray(da: Any) -> tuple[ArraySpec, tuple, dict]:
    spec = _spec_of_dask(da.data, str(da.name))
    coords = {d: np.asarray(da.indexes[d]) for d in da.dims if d in da.indexes}
    return spec, tuple(str(d) for d in da.dims), coords


def _spec_of_dask(arr: Any, name: str) -> ArraySpec:
    """The ArraySpec behind a dask_lsio.from_zarr array (unsliced)."""
    from ..graph.source import ZarrSource

    if not hasattr(arr, "__dask_graph__"):
        raise LSIOError(f"source {name!r}: its data is not a dask array; open it with "
                        "dask_lsio.open_zarr or pass its path")
    found = [v for v in arr.__dask_graph__().values() if isinstance(v, ZarrSource)]
    if len(found) != 1 or tuple(found[0].spec.shape) != tuple(arr.shape):
        raise LSIOError(
            f"source {name!r} is not a whole dask_lsio.from_zarr array (a slice, a computed "
            "result or another reader's); pass the array itself, or its path, and restrict "
            "where crops fall with `sampler`")
    return found[0].spec


def _zarr_dims(arr: zarr.Array) -> tuple[str, ...]:
    names = getattr(arr.metadata, "dimension_names", None)
    if not names:
        names = arr.attrs.get("_ARRAY_DIMENSIONS")
    if names and all(names) and len(names) == arr.ndim:
        return tuple(str(n) for n in names)
    return tuple(f"dim_{i}" for i in range(arr.ndim))


def _dims_default(spec: ArraySpec) -> tuple[str, ...]:
    return tuple(f"dim_{i}" for i in range(len(spec.shape)))


def _crop_of(source: Source, crop: Any) -> tuple[int, ...]:
    """The crop size along each axis of ``source``."""
    if isinstance(crop, Mapping) and source.name in crop:
        crop = crop[source.name]
    shape = source.spec.shape
    if isinstance(crop, Mapping):
        unknown = set(crop) - set(source.dims)
        sizes = tuple(int(crop.get(d, n)) for d, n in zip(source.dims, shape))
        if unknown and not (set(crop) & set(source.dims)):
            raise ValueError(f"crop dims {sorted(map(str, crop))} are not dims of source "
                             f"{source.name!r} {source.dims}")
    else:
        sizes = tuple(int(c) for c in crop)
        if len(sizes) != len(shape):
            raise ValueError(f"crop {sizes} has {len(sizes)} axes, source {source.name!r} has "
                             f"{len(shape)}")
    for d, c in zip(source.dims, sizes):
        if c < 1:
            raise ValueError(f"crop size along {d!r} of source {source.name!r} must be >= 1")
    return sizes
