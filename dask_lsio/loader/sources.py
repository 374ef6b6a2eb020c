"""Sources of crops: whatever the user passes (paths, zarr arrays, dask_lsio arrays, xarray
objects opened with dask_lsio) as :class:`Source`: an ArraySpec (or, for an array dask-lsio
does not decode itself, the zarr-python array read instead), dimension names, index
coordinates and the crop size along each axis."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import zarr

from .. import config
from ..errors import LSIOError, UnsupportedCodecError
from ..store import zarr_view
from ..zarr.shard import IndexCache
from ..zarr.spec import ArraySpec, open_array, spec_from_array


@dataclass
class Source:
    """One array that crops are cut from.

    Attributes
    ----------
    name : str
        The key of its crops in a batch.
    spec : ArraySpec or None
        The array as dask-lsio reads it; None when it is read through zarr-python instead
        (``array``): codecs, data types or stores dask-lsio does not handle itself.
    dims : tuple of str
        Dimension names (``dim_0``, ... when the array has none).
    coords : dict
        1-D coordinate values of the dimensions that have them (xarray indexes).
    crop : tuple of int
        Crop size along each axis (the whole axis where the user gave none).
    array : zarr.Array or None
        The zarr-python array read when ``spec`` is None.
    """

    name: str
    spec: ArraySpec | None
    dims: tuple[str, ...]
    coords: dict[str, np.ndarray]
    crop: tuple[int, ...] = ()
    indexes: IndexCache | None = field(default=None, repr=False)
    array: zarr.Array | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.indexes is None and self.spec is not None and self.spec.shard is not None:
            self.indexes = IndexCache(self.spec)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape if self.spec is not None else self.array.shape)

    def read_with_zarr(self, starts: np.ndarray, pad: Any = None) -> np.ndarray:
        """The crops at ``starts`` read through zarr-python, one selection each: the
        fallback for a source with no ``spec`` (padded as the engine's reads are)."""
        arr, crop = self.array, np.array(self.crop, np.int64)
        shape = np.array(self.shape, np.int64)
        fill = arr.fill_value if pad is None else pad
        out = np.empty((len(starts), *self.crop), dtype=arr.dtype)
        for b, start in enumerate(np.asarray(starts, np.int64).reshape(-1, len(crop))):
            lo, hi = np.clip(start, 0, shape), np.clip(start + crop, 0, shape)
            if (lo != start).any() or (hi != start + crop).any():
                out[b] = 0 if fill is None else fill
            if (hi > lo).all():
                out[b][tuple(slice(a - s, z - s) for a, z, s in zip(lo, hi, start))] = \
                    arr[tuple(slice(a, z) for a, z in zip(lo, hi))]
        return out

    def __getstate__(self) -> dict:  # shard indexes are rebuilt where the source goes
        return {k: v for k, v in self.__dict__.items() if k != "indexes"} | {"indexes": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()


def make_sources(sources: Any, crop: Any,
                 storage_options: Mapping[str, Any] | None = None) -> list[Source]:
    """Sources from what the user passed: one object, a list, or a dict name -> object,
    where an object is a path, ``zarr.Array``, dask_lsio array, ``xarray.DataArray`` or
    ``xarray.Dataset`` (one source per data variable). ``crop`` gives sizes per dimension
    name (dict), per axis (tuple), or per source name (dict of those). ``storage_options``
    apply to the sources given as object-store URLs."""
    named = _named(sources)
    out = []
    for name, obj in named:
        out.extend(_resolve(name, obj, storage_options))
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


def _resolve(name: str, obj: Any,
             storage_options: Mapping[str, Any] | None = None) -> list[Source]:
    """The source (crop size not set yet) of ``obj``; several for a Dataset."""
    kind = type(obj).__module__.split(".")[0] + "." + type(obj).__name__
    if kind == "xarray.Dataset":
        return [_from_xarray(f"{name}/{var}" if name != "data" else str(var), obj[var])
                for var in obj.data_vars]
    if kind == "xarray.DataArray":
        return [_from_xarray(name, obj)]
    if kind == "dask.Array" or type(obj).__name__ == "Array" and hasattr(obj, "dask"):
        spec, arr = _source_of_dask(obj, name)
        return [Source(name, spec, _dims_default(len(obj.shape)), {}, array=arr)]
    try:
        store, arr = open_array(obj, storage_options=_options_for(obj, storage_options))
        spec = spec_from_array(store, arr)
    except UnsupportedCodecError as e:  # codecs, dtypes or stores we do not read ourselves
        arr = obj if isinstance(obj, zarr.Array) else zarr.open_array(
            zarr_view(obj), mode="r", storage_options=_options_for(obj, storage_options))
        return [Source(name, None, _zarr_dims(arr), {}, array=_fallback(name, arr, e))]
    return [Source(name, spec, _zarr_dims(arr), {})]


def _options_for(obj: Any, storage_options: Mapping[str, Any] | None) -> Any:
    """``storage_options`` where ``obj`` is a URL (other sources carry their own)."""
    return storage_options if isinstance(obj, str) and "://" in obj else None


def _fallback(name: str, arr: zarr.Array, why: UnsupportedCodecError) -> zarr.Array:
    """``arr``, read through zarr-python (with a warning), unless ``lsio.strict``."""
    if config.get("strict"):
        raise why
    warnings.warn(f"{why}: crops of source {name!r} are read through zarr-python (correct, "
                  "slower)", stacklevel=5)
    return arr


def _from_xarray(name: str, da: Any) -> Source:
    spec, arr = _source_of_dask(da.data, str(da.name))
    coords = {d: np.asarray(da.indexes[d]) for d in da.dims if d in da.indexes}
    return Source(name, spec, tuple(str(d) for d in da.dims), coords, array=arr)


def _source_of_dask(arr: Any, name: str) -> tuple[ArraySpec | None, zarr.Array | None]:
    """What a from_zarr dask array reads: its ArraySpec, or the zarr-python array that
    dask_lsio.from_zarr fell back to (dask.array.from_zarr's graph holds it)."""
    try:
        return spec_of_dask(arr, name), None
    except LSIOError:
        if not hasattr(arr, "__dask_graph__"):  # in memory: the error says what to pass
            raise
        found = [v for v in arr.__dask_graph__().values() if isinstance(v, zarr.Array)]
        if len(found) != 1 or tuple(found[0].shape) != tuple(arr.shape):
            raise
        why = UnsupportedCodecError("this array", None, str(found[0].store_path))
        return None, _fallback(name, found[0], why)


def spec_of_dask(arr: Any, name: str) -> ArraySpec:
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


def _dims_default(ndim: int) -> tuple[str, ...]:
    return tuple(f"dim_{i}" for i in range(ndim))


def _crop_of(source: Source, crop: Any) -> tuple[int, ...]:
    """The crop size along each axis of ``source``."""
    if isinstance(crop, Mapping) and source.name in crop:
        crop = crop[source.name]
    shape = source.shape
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
