"""iter_blocks: stream an array's blocks along one axis, strictly in order, read ahead."""

from __future__ import annotations

import os
from typing import Any, Iterator

import dask
import numpy as np
from dask.utils import parse_bytes

from ..errors import LSIOError, UnsupportedCodecError
from ..graph.from_zarr import from_zarr
from ..zarr.read import read_region
from ..zarr.spec import ArraySpec, open_array, spec_from_array
from .prefetch import prefetched
from .sources import spec_of_dask


def iter_blocks(array: Any, axis: int = 0, ordered: bool = True, prefetch: int = 4,
                threads: int | None = None,
                storage_options: dict | None = None) -> Iterator[np.ndarray]:
    """Yield consecutive blocks of ``array`` along ``axis`` (whole along the other axes).

    Blocks are read ahead, several at once and completing in any order, while the caller
    works on the current one; with ``ordered`` they are yielded strictly in order (a block
    that completes early waits for the ones before it), else as they complete. At most
    ``prefetch`` blocks are in flight besides the one the caller holds.

    Parameters
    ----------
    array : dask_lsio.from_zarr array, xarray.DataArray, zarr.Array, path, or dask array
        What to stream. Its blocks: a dask array's chunks along ``axis``; for a Zarr array,
        whole chunks (shards) along ``axis`` adding up to about a quarter of dask's
        ``array.chunk-size`` (small enough that a few in flight stay in recycled memory).
        Other dask arrays are computed block by block.
    axis : int
    ordered : bool
    prefetch : int
        Blocks read ahead (at least one per core keeps every core busy).
    threads : int, optional
        Threads reading blocks at once (default: every core).
    storage_options : dict, optional
        Options of the object store when ``array`` is a URL (see :func:`dask_lsio.from_zarr`).

    Yields
    ------
    numpy.ndarray
    """
    data = getattr(array, "data", None) if type(array).__name__ == "DataArray" else array
    data, spec, bounds = _blocks(data, axis, storage_options)
    workers = max(1, threads or os.cpu_count() or 1)
    if spec is None:
        thunks = (lambda s=s: np.asarray(data[_index(data.ndim, axis, s)].compute())
                  for s in bounds)
    else:
        full = tuple(slice(0, n) for n in spec.shape)
        thunks = (lambda s=s: read_region(spec, _index(len(full), axis, s, full), threads=1)
                  for s in bounds)
    return prefetched(thunks, max(prefetch, 1), workers, ordered)


def _blocks(array: Any, axis: int, storage_options: dict | None = None
            ) -> tuple[Any, ArraySpec | None, list[slice]]:
    """What to read (``array``, or a dask array for it), the array's spec (None: a dask
    array dask-lsio does not read) and the block slices along ``axis``."""
    if hasattr(array, "__dask_graph__"):
        ndim = array.ndim
        axis = _axis(axis, ndim)
        try:
            spec = spec_of_dask(array, "array")
        except LSIOError:  # any other dask array: computed by dask
            spec = None
        return array, spec, _slices(array.chunks[axis])
    try:
        store, arr = open_array(array, storage_options=storage_options)
        spec = spec_from_array(store, arr)
    except UnsupportedCodecError:  # what we do not read ourselves: from_zarr's fallback
        # (with its warning; lsio.strict raises)
        return _blocks(from_zarr(array, storage_options=storage_options), axis)
    axis = _axis(axis, len(spec.shape))
    return array, spec, _slices(_steps(spec, axis))


def _steps(spec: ArraySpec, axis: int) -> tuple[int, ...]:
    """Block lengths along ``axis``: whole grid cells, about a quarter of array.chunk-size."""
    cell = spec.grid[axis]
    per_cell = spec.dtype.itemsize * int(np.prod(spec.shape)) // max(spec.shape[axis], 1) * cell
    target = parse_bytes(dask.config.get("array.chunk-size")) // 4
    step = cell * max(1, target // max(per_cell, 1))
    n = spec.shape[axis]
    return tuple(min(step, n - a) for a in range(0, n, step)) or (0,)


def _axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for an array of {ndim} dimensions")
    return axis % ndim


def _slices(sizes: tuple[int, ...]) -> list[slice]:
    edges = np.cumsum((0,) + tuple(sizes)).tolist()
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _index(ndim: int, axis: int, s: slice, full: tuple[slice, ...] | None = None) -> tuple:
    axis %= ndim
    base = full or (slice(None),) * ndim
    return base[:axis] + (s,) + base[axis + 1 :]
