"""Many small selections of one array at once: :func:`read_boxes`, the batched read that
``RandomCrops`` makes of each batch, for locations the caller chooses."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np
import zarr

from .crops import read_batch
from .sources import Source, make_sources

# zarr.Array objects resolved by earlier calls (their spec, and a sharded array's indexes):
# a loop of one box per call then skips the metadata's conversion (~0.4 ms a call)
_KEPT: OrderedDict[tuple, tuple[weakref.ref, Source]] = OrderedDict()
_KEPT_MAX = 64
_KEPT_LOCK = threading.Lock()


def read_boxes(source: Any, starts: Any, shape: Any, *, pad: Any = None,
               threads: int | None = None,
               storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Boxes of ``shape`` at ``starts`` of one array, read in one engine batch.

    ``out[i]`` equals ``source[starts[i, 0]:starts[i, 0] + shape[0], ...]``: every chunk
    (or inner chunk of a shard) any box needs is read once, in one batch, and decoded once
    by the C kernel on ``threads`` threads (a blosc chunk a box needs part of only as far as
    it needs it, with ``lsio.partial-decode``). One call with many boxes costs one engine
    batch, where a loop of ``z[sel]`` or ``from_zarr(...)[sel].compute()`` costs a batch
    (and a graph) per box.

    Parameters
    ----------
    source : str, os.PathLike, zarr.Array, dask array or xarray.DataArray
        The array: as :class:`dask_lsio.RandomCrops` takes its sources (a path or URL is
        opened at each call: pass a ``zarr.Array`` to open it once).
    starts : array-like of int, shape (boxes, ndim)
        The first index of each box along each axis. A box may reach outside the array.
    shape : tuple of int or dict
        The shape of every box (per axis, or by dimension name: axes not named whole).
    pad : scalar, optional
        The value of the elements of a box outside the array (default: its fill_value).
    threads : int, optional
        Decode threads (default: every core).
    storage_options : dict, optional
        Options of the object store when ``source`` is a URL (``s3://...``).

    Returns
    -------
    numpy.ndarray
        Of shape ``(boxes, *shape)`` and the array's dtype.

    Raises
    ------
    ValueError
        ``starts`` is not (boxes, ndim) integers, or ``source`` holds several arrays.
    """
    src = _resolved(source, shape, storage_options)
    at = np.asarray(starts)
    if at.size == 0:
        at = at.reshape(0, len(src.shape))
    if at.ndim != 2 or at.shape[1] != len(src.shape) or \
            not np.issubdtype(at.dtype, np.integer):
        raise ValueError(f"starts must be integers of shape (boxes, {len(src.shape)}) for "
                         f"array {src.name!r} of shape {src.shape}; got {at.dtype} "
                         f"{at.shape}")
    return read_batch([src], {src.name: at.astype(np.int64, copy=False)}, pad,
                      threads)[src.name]


def _resolved(source: Any, shape: Any, storage_options: Mapping[str, Any] | None) -> Source:
    """``source`` as a :class:`Source` with boxes of ``shape``; a ``zarr.Array`` (of the
    same shape as then) resolved once."""
    key = None
    if isinstance(source, zarr.Array):
        box = tuple(sorted(shape.items())) if isinstance(shape, Mapping) else tuple(shape)
        key = (id(source), box)
        with _KEPT_LOCK:
            kept = _KEPT.get(key)
        # the same object (ids are reused), not resized since
        if kept is not None and kept[0]() is source and kept[1].shape == source.shape:
            return kept[1]
    sources = make_sources(source, shape, storage_options)
    if len(sources) != 1:
        raise ValueError(f"read_boxes reads one array; {type(source).__name__} holds "
                         f"{len(sources)}: {[s.name for s in sources]}")
    if key is not None:
        with _KEPT_LOCK:
            _KEPT[key] = (weakref.ref(source), sources[0])
            while len(_KEPT) > _KEPT_MAX:
                _KEPT.popitem(last=False)
    return sources[0]
