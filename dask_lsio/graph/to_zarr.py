"""``dask_lsio.to_zarr``: ``dask.array.to_zarr`` with whole-unit, batched, atomic writes."""

from __future__ import annotations

import math
import warnings
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.array.core import to_zarr as dask_to_zarr
from dask.array.slicing import normalize_index

from .. import config
from ..errors import ArrayNotFoundError, UnsupportedCodecError, UnsupportedStoreError
from ..store import describe_store, open_store
from .clients import IN_MEMORY_ON_CLUSTER, out_of_reach
from ..zarr.spec import found_at, open_array, spec_from_array, spec_from_metadata
from .target import ZarrTarget, plain_region

_MODES = ("r+", "a", "w", "w-")


def to_zarr(
    arr: da.Array,
    url: Any,
    component: str | None = None,
    storage_options: dict | None = None,
    region: tuple | None = None,
    compute: bool = True,
    return_stored: bool = False,
    mode: str = "a",
    **kwargs: Any,
) -> Any:
    """Save a dask array as a Zarr array; each task encodes and writes whole shards or chunks
    in one batch, every object to a temporary name renamed into place.

    Same arguments and results as :func:`dask.array.to_zarr`.

    Parameters
    ----------
    arr : dask.array.Array
        The data. Blocks that do not hold whole write units (shards, or chunks when unsharded)
        are rechunked to blocks that do, so no two tasks ever write the same object.
    url : str, os.PathLike, zarr.storage.LocalStore or zarr.Array
        A path or ``file://`` URL (of the array, or of a group with ``component``), a
        ``LocalStore``, or an existing ``zarr.Array`` on one.
    component : str, optional
        The array's path inside the group at ``url``.
    storage_options : dict, optional
        Options of an object store given by URL (see :func:`dask_lsio.from_zarr`). Each
        object is one PUT; units shared with other writers are written back only if
        unchanged since read (conditional PUTs). For stores dask-lsio does not write itself
        the write goes through :func:`dask.array.to_zarr` (with a warning naming the store).
    region : tuple of slices, optional
        Where ``arr`` goes in an existing array. Blocks are cut on the write-unit grid, so a
        region whose edges split units has those units written by one task each, which reads
        them, updates its part and writes them whole (as zarr-python does) while it holds
        their write locks: writers of disjoint regions that share units (other tasks, other
        jobs, threads or processes) never erase each other's values.
    compute : bool
        Write now (True) or return a delayed object that writes when computed.
    return_stored : bool
        Return the stored array (a dask array that reads it back).
    mode : {"a", "r+", "w", "w-"}
        ``"a"`` writes into the array at ``url`` when one exists, else creates it; ``"r+"``
        requires it to exist; ``"w"`` replaces it; ``"w-"`` fails if it exists.
    **kwargs
        Creation options for :func:`zarr.create_array`: ``chunks`` (default: the dask
        blocks' shape), ``shards``, ``compressors``, ``filters``, ``serializer``,
        ``fill_value``, ``zarr_format``, ``dimension_names``, ``attributes``, ``overwrite``,
        ``config`` ... Metadata is written once, here, through zarr-python.

    Returns
    -------
    None, dask.delayed.Delayed or dask.array.Array
        As :func:`dask.array.store`: None when computed, a Delayed when ``compute=False``,
        the stored array when ``return_stored=True``.
    """
    if any(math.isnan(n) for n in arr.shape):
        raise ValueError("cannot write a dask array of unknown chunk sizes to Zarr; call "
                         "arr.compute_chunk_sizes() first")
    if mode == "r":  # dask's words and type
        raise ValueError("Cannot use mode `r` (read-only) when writing to zarr.")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES} to write; got {mode!r}")
    elsewhere = _not_ours(url, storage_options)
    if elsewhere is not None:
        return _through_dask(arr, url, component, storage_options, region, compute,
                             return_stored, mode, kwargs, elsewhere)
    component = component or kwargs.pop("name", None)
    z = url if isinstance(url, zarr.Array) else _open_or_create(arr, url, component, mode,
                                                                 kwargs, region,
                                                                 storage_options)
    region = _region(z, arr, region)
    try:
        spec = spec_from_array(*open_array(z))
    except UnsupportedCodecError as e:
        if config.get("strict"):
            raise
        warnings.warn(f"{e}: writing {z.store_path} through zarr-python (correct, slower)",
                      stacklevel=2)
        return _store(arr, z, _write_grid(z), region, compute, return_stored)
    if out_of_reach(spec.store):  # dask's error, as dask raises it
        raise RuntimeError(IN_MEMORY_ON_CLUSTER)
    spec.store.cleanup()  # what interrupted writers of this array left behind
    target = ZarrTarget(spec, _write_empty_chunks(z))
    return _store(arr, target, spec.grid, region, compute, return_stored)


def _store(arr: da.Array, target: Any, grid: tuple[int, ...], region: tuple[slice, ...],
           compute: bool, return_stored: bool) -> Any:
    """``da.store`` of blocks of whole write units (``grid``) into ``target``."""
    starts = tuple(s.start for s in region)
    arr = arr.rechunk(aligned_chunks(arr.chunks, grid, starts))
    whole = all(s.start == 0 and s.stop == n for s, n in zip(region, target.shape))
    return arr.store(target, lock=False, regions=None if whole else [region],
                     compute=compute, return_stored=return_stored)


def aligned_chunks(chunks: tuple[tuple[int, ...], ...], grid: tuple[int, ...],
                   starts: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """dask chunks whose inner boundaries lie on ``grid`` (offset by the region's start).

    Axes already aligned keep their blocks; others get blocks of the dask block size rounded
    up to whole units (dask chunks of 30 into shards of 120 become blocks of 120).
    """
    out = []
    for sizes, g, start in zip(chunks, grid, starts):
        inner = np.cumsum(sizes)[:-1] + start
        if not np.any(inner % g):
            out.append(tuple(sizes))
            continue
        total = int(sum(sizes))
        step = max(g, -(-max(sizes) // g) * g)
        first = min(total, step - start % step if start % step else step)
        rest = [step] * ((total - first) // step)
        tail = total - first - sum(rest)
        out.append(tuple(s for s in [first, *rest, tail] if s) or (0,))
    return tuple(out)


def _region(z: zarr.Array, arr: da.Array, region: tuple | None) -> tuple[slice, ...]:
    """The target region as slices; its shape must be ``arr``'s."""
    if region is None:
        region = tuple(slice(0, n) for n in z.shape)
    region = plain_region(normalize_index(region, z.shape), z.shape)
    shape = tuple(s.stop - s.start for s in region)
    if shape != tuple(arr.shape):
        raise ValueError(f"array of shape {arr.shape} does not fit region {region} "
                         f"(shape {shape}) of the Zarr array {z.store_path}")
    return region


def _open_or_create(arr: da.Array, url: Any, component: str | None, mode: str,
                    kwargs: dict, region: tuple | None,
                    storage_options: dict | None = None) -> zarr.Array:
    """The array at ``url``/``component``: opened (modes a, r+) or created (a, w, w-).

    Whatever fails is found before anything is written: a missing array for a region or
    ``r+``, and (with ``lsio.strict``) an array dask-lsio would not write itself."""
    base = open_store(url, storage_options)
    target = base.child(component) if component else base
    # a zarr store object keeps its own settings (read_only)
    store = url if isinstance(url, zarr.abc.store.Store) else base.zarr_target
    path = target.url
    exists = found_at(target) == "an array"
    if not exists and (mode == "r+" or region is not None):
        why = "mode='r+'" if mode == "r+" else f"region={region}"
        raise ArrayNotFoundError(f"no Zarr array at {path!r} to write into ({why}): create "
                                 "it first, e.g. with to_zarr without a region")
    if mode == "r+" or (mode == "a" and exists and not kwargs.get("overwrite")):
        if kwargs:
            raise ValueError(f"an array exists at {path!r}: creation options {sorted(kwargs)} "
                             "apply only when creating one (mode='w' replaces it)")
        return zarr.open_array(store=store, path=component or "", mode="r+")
    kwargs.setdefault("shape", arr.shape)
    kwargs.setdefault("chunks", tuple(max(c[0], 1) if c else 1 for c in arr.chunks))
    kwargs.setdefault("dtype", arr.dtype)
    if mode == "w":
        kwargs["overwrite"] = True
    if mode == "w-" and exists:
        raise FileExistsError(f"an array exists at {path!r} (mode='w-')")
    if config.get("strict"):  # refuse before any metadata is written (or replaced)
        probe = zarr.create_array(store=zarr.storage.MemoryStore(), **kwargs)
        spec_from_metadata(target, probe.metadata)
    return zarr.create_array(store=store, name=component, **kwargs)


def _not_ours(url: Any, storage_options: dict | None) -> str | None:
    """What ``url`` is, when dask-lsio does not write it itself; None when it does."""
    try:
        open_store(url, storage_options)
    except UnsupportedStoreError as e:
        return e.what
    except TypeError:  # options for a store that takes none: dask's (fsspec's) to judge
        return f"{describe_store(url)} with storage_options"
    return None


def _through_dask(arr, url, component, storage_options, region, compute, return_stored, mode,
                  kwargs, why) -> Any:
    """dask's own to_zarr, for stores dask-lsio does not write itself."""
    if config.get("strict"):
        raise UnsupportedStoreError(why)
    warnings.warn(f"dask-lsio does not write {why} itself: writing through "
                  "dask.array.to_zarr (correct, slower)", stacklevel=3)
    # dask's own function as imported, also where dask.array.to_zarr is routed here
    if isinstance(url, zarr.Array):  # dask rechunks to the array's write units itself
        return dask_to_zarr(arr, url, region=region, compute=compute,
                            return_stored=return_stored)
    unit = kwargs.get("shards") or kwargs.get("chunks")
    if isinstance(unit, tuple | list) and len(unit) == arr.ndim:  # dask does not: whole
        # units per block, or two of its tasks would write the same shard (and lose data)
        arr = arr.rechunk(aligned_chunks(arr.chunks, tuple(unit), (0,) * arr.ndim))
    return dask_to_zarr(arr, url, component=component, storage_options=storage_options,
                        region=region, compute=compute, return_stored=return_stored, mode=mode,
                        **kwargs)


def _write_empty_chunks(z: zarr.Array) -> bool:
    return bool(z._async_array.config.write_empty_chunks)


def _write_grid(z: zarr.Array) -> tuple[int, ...]:
    """The write unit of an array written through zarr-python: its shards, else chunks."""
    shards = getattr(z, "shards", None)
    return tuple(shards or z.chunks)


__all__ = ["aligned_chunks", "to_zarr"]
