"""``dask_lsio.from_zarr``: ``dask.array.from_zarr`` with coarse, batched blocks."""

from __future__ import annotations

import math
import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.core import from_zarr as dask_from_zarr, normalize_chunks
from dask.base import tokenize
from dask.utils import parse_bytes

from .. import config
from ..errors import UnsupportedCodecError, UnsupportedStoreError
from ..store import describe_store, zarr_view
from .clients import active_client, out_of_reach, queue_slots, task_threads, worker_threads
from ..zarr.spec import ArraySpec, open_array, spec_from_array
from .source import ZarrSource


def from_zarr(
    url: Any,
    component: str | None = None,
    storage_options: dict | None = None,
    chunks: Any = None,
    name: str | None = None,
    inline_array: bool = False,
    **kwargs: Any,
) -> da.Array:
    """Load a Zarr array as a dask array whose tasks each read many chunks in one batch.

    Same arguments and result as :func:`dask.array.from_zarr`.

    Parameters
    ----------
    url : str, os.PathLike, zarr.storage.LocalStore or zarr.Array
        A path or ``file://`` URL of an array (or of a group, with ``component``), a
        ``LocalStore``, or a ``zarr.Array`` on one. Other stores and URLs are read through
        :func:`dask.array.from_zarr` (with a warning naming the store).
    component : str, optional
        The array's path inside the group at ``url``.
    storage_options : dict, optional
        Options of an object store given by URL (``s3://``, ``gs://``, ``az://``/``abfs://``,
        ``http(s)://``): fsspec's names (``key``, ``secret``, ``token``, ``anon``,
        ``endpoint_url``, ``region``, ``client_kwargs``) or obstore's configuration keys;
        one that does not apply raises TypeError. Credentials never appear in names, keys
        or messages. For stores dask-lsio does not read itself, passed to zarr-python.
    chunks : optional
        Block shape. Default: whole multiples of the shard (or chunk) shape of about
        ``array.chunk-size`` bytes, and at least two blocks per thread where the array
        allows (one on object stores; threads: the cluster's with a distributed client,
        else this machine's cores). On a cluster, blocks of up to twice
        ``array.chunk-size`` where that makes them few enough for the scheduler to send
        all at once (two per one-thread worker) rather than queue them. Blocks that split
        a shard or chunk work, but read it more than once (a PerformanceWarning says so).
    name : str, optional
        Name of the dask array (default: from a token of the array and blocks).
    inline_array : bool
        As in :func:`dask.array.from_array`.

    Returns
    -------
    dask.array.Array
    """
    try:
        store, zarr_array = open_array(url, component, storage_options)
        if out_of_reach(store):  # dask ships the zarr array itself to the workers
            raise UnsupportedStoreError(f"{describe_store(zarr_view(url))} on a distributed "
                                        "cluster (its objects live in this process)")
        spec = spec_from_array(store, zarr_array)
    except UnsupportedCodecError as e:
        if config.get("strict"):
            raise
        warnings.warn(f"{e}: reading {url!r} through dask.array.from_zarr and zarr-python "
                      "(correct, slower)", stacklevel=2)
        # dask's own function as imported, also where dask.array.from_zarr is routed here
        return dask_from_zarr(zarr_view(url), component=component, storage_options=storage_options,
                              chunks=chunks, name=name, inline_array=inline_array, **kwargs)
    blocks = block_chunks(spec, chunks)
    meta = np.empty((0,) * len(spec.shape), dtype=spec.dtype)
    return da.from_array(
        ZarrSource(spec), chunks=blocks, name=name or "from-zarr-lsio-" + tokenize(spec, blocks),
        inline_array=inline_array, meta=meta, asarray=False,
    )


def block_chunks(spec: ArraySpec, chunks: Any = None) -> tuple[tuple[int, ...], ...]:
    """dask chunks for ``spec``: the caller's, or whole grid cells of about chunk-size."""
    if chunks is None:
        return default_blocks(spec)
    out = normalize_chunks(chunks, spec.shape, dtype=spec.dtype, previous_chunks=spec.grid)
    for axis, (sizes, g) in enumerate(zip(out, spec.grid)):
        if any(s % g for s in sizes[:-1]):
            warnings.warn(
                f"chunks {sizes[:4]}... along axis {axis} split the stored {'shards' if spec.shard else 'chunks'} "
                f"of {g}: each is read by several tasks. Use multiples of {spec.grid}.",
                da.PerformanceWarning, stacklevel=3,
            )
            break
    return out


# On a cluster, blocks may grow to this many times array.chunk-size to be sent at once
CLUSTER_GROWTH = 2


def default_blocks(spec: ArraySpec) -> tuple[tuple[int, ...], ...]:
    """The default blocks: whole grid cells of about ``array.chunk-size`` bytes, small enough
    for two blocks per thread (the store says: object stores one), since a task decodes on
    its own thread and an array of fewer blocks than threads leaves threads idle. Threads
    are the cluster's with a distributed client, else this machine's.

    On a cluster, blocks may grow up to ``CLUSTER_GROWTH`` x chunk-size so that they number
    no more than the tasks the scheduler hands its workers at once (:func:`queue_slots`:
    two per one-thread worker by default). dask marks ``from_array``'s tasks as data
    producers, which distributed queues on the scheduler and sends out a few per worker at a
    time; a reduction's partial sums then take a worker's place while it still reads, and
    one worker reads a block more than the others (5 and 3 of 8 blocks on two one-thread
    workers, the last block alone). Blocks that fit the first round are all sent at once,
    evenly (bench_cluster: 0.83x -> 0.93x the threaded scheduler, same run).
    """
    total = int(np.prod(spec.shape)) * spec.dtype.itemsize
    workers = worker_threads(active_client())
    threads = task_threads(workers)
    chunk_size = parse_bytes(dask.config.get("array.chunk-size"))
    limit = min(chunk_size, max(total // (spec.store.blocks_per_core * threads), 1))
    blocks = normalize_chunks(default_block(spec, limit), spec.shape, dtype=spec.dtype)
    slots = queue_slots(workers) if workers else None
    if slots is None or math.prod(map(len, blocks)) <= slots:
        return blocks
    grown = max(limit, -(-total // slots))
    while grown <= CLUSTER_GROWTH * chunk_size:
        fewer = normalize_chunks(default_block(spec, grown), spec.shape, dtype=spec.dtype)
        count = math.prod(map(len, fewer))
        if count <= slots:
            return fewer
        # whole grid cells: a block a little larger may bring the count within the slots
        grown = grown * count // slots + 1
    return blocks


def default_block(spec: ArraySpec, limit: int) -> tuple[int, ...]:
    """Whole grid cells, growing the last axes first (contiguous blocks) up to ``limit`` bytes."""
    unit = [min(g, n) or 1 for g, n in zip(spec.grid, spec.shape)]
    block = list(unit)
    for ax in reversed(range(len(unit))):
        cells = math.ceil(spec.shape[ax] / unit[ax]) if spec.shape[ax] else 1
        per = int(np.prod(block)) * spec.dtype.itemsize
        k = max(1, min(cells, limit // max(per, 1)))
        block[ax] = unit[ax] * k
        if k < cells:
            break
    return tuple(min(b, n) for b, n in zip(block, spec.shape))
