"""Read boxes of Zarr arrays: a region (one box), the crops of a training batch (many boxes,
of one or several arrays). One path for all: the planner (:mod:`.plan`) names the objects
or shard byte ranges the boxes need, ONE store batch fetches them, the executor
(:mod:`.execute`) decodes each as it completes and places it once.

The output of boxes stacks them: ``out[b]`` is ``array[starts[b] : starts[b] + shape]``; a
plan places into it as one array whose first axis is ``len(starts) * shape[0]`` long. A chunk
that several boxes need is one read whose jobs are adjacent: decoded once, copied into each.
Shards are held (:meth:`~dask_lsio.store.Store.hold`) from the read of their index to the
read of their data, so both come from one version; their indexes are kept between reads
(:class:`~.shard.IndexCache`), used only for the very version they were read from.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .. import config, metrics
from ..errors import VersionConflictError
from ..io import Engine
from ..store import Store
from . import plan as planner
from .execute import execute_many, fill_boxes, output_for, store_of
from .shard import IndexCache, read_indexes, shared_cache
from .spec import ArraySpec


@dataclass(frozen=True)
class BoxRead:
    """Boxes of one array to read (see :func:`read_boxes`, whose arguments these are)."""

    spec: ArraySpec
    starts: Any
    shape: tuple[int, ...]
    pad: Any = None
    indexes: IndexCache | None = None


def read_region(spec: ArraySpec, region: tuple[slice, ...], engine: Engine | None = None,
                out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """The values of ``spec``'s array in ``region`` (slices with step 1, within bounds),
    in ``out`` when given (C-contiguous, the region's shape and the array's dtype), decoded
    on ``threads`` threads (default: the store's ``decode_threads``; a caller that is the
    only reader, not one of several dask tasks, can use every core). ``engine``: the engine
    of a local store (default the process's)."""
    store = store_of(spec, engine)
    shape = tuple(s.stop - s.start for s in region)
    out = output_for(shape, spec.dtype, store, out)
    if out.size == 0:
        return out
    if not spec.shape:  # 0-d: one box of shape () over the array's one object
        _read_boxes([BoxRead(spec, np.zeros((1, 0), np.int64), ())], engine, threads,
                    [out.reshape(1)], partial=False)
        return out
    indexes = shared_cache(spec) if spec.shard else None
    # a bounded number of shards held at once: large sharded regions are read in pieces
    limit = store.max_held() if spec.shard else math.inf
    for piece in pieces(region, spec.grid, limit):
        target = out[tuple(slice(p.start - r.start, p.stop - r.start)
                           for p, r in zip(piece, region))]
        contiguous = target.flags.c_contiguous  # pieces split along the first axes: views
        box = target if contiguous else np.empty_like(target)
        starts = np.array([[p.start for p in piece]], np.int64)
        # a region's chunks are decoded whole: refused exactly where zarr-python refuses
        _read_boxes([BoxRead(spec, starts, box.shape, None, indexes)], engine, threads,
                    [box.reshape((1,) + box.shape)], partial=False)
        if not contiguous:
            target[...] = box
    return out


def pieces(region: tuple[slice, ...], grid: tuple[int, ...],
            limit: float) -> Iterator[tuple[slice, ...]]:
    """``region`` cut on the grid into pieces of at most ``limit`` cells, along the first
    axes first (so that most pieces are contiguous parts of a C-order output)."""
    counts = [(s.stop - 1) // g - s.start // g + 1 for s, g in zip(region, grid)]
    if math.prod(counts) <= limit:
        yield region
        return
    axis = next(a for a, c in enumerate(counts) if c > 1)
    step = max(1, limit // math.prod(counts[axis + 1:])) * grid[axis]
    s = region[axis]
    start = s.start
    while start < s.stop:
        stop = min(s.stop, (start // step + 1) * step)
        yield from pieces(region[:axis] + (slice(start, stop),) + region[axis + 1:], grid,
                           limit)
        start = stop


def read_boxes(spec: ArraySpec, starts: Any, shape: tuple[int, ...], out: np.ndarray | None = None,
               pad: Any = None, engine: Engine | None = None, threads: int | None = None,
               indexes: IndexCache | None = None) -> np.ndarray:
    """Boxes of ``shape`` at ``starts`` of ``spec``'s array, as one array (boxes, *shape).

    Parameters
    ----------
    spec : ArraySpec
    starts : array-like of int, (boxes, ndim)
        First index of each box; a box may reach outside the array.
    shape : tuple of int
        The shape of every box.
    out : numpy.ndarray, optional
        C-contiguous (boxes, *shape) array of the array's dtype to read into.
    pad : scalar, optional
        The value of box elements outside the array (default: the array's fill_value).
    engine : Engine, optional
        The engine of a local store (default the process's).
    threads : int, optional
        Decode threads (default: the store's).
    indexes : IndexCache, optional
        Shard indexes kept between calls (sharded arrays); by default the process's cache
        of the array.

    Returns
    -------
    numpy.ndarray
    """
    return read_boxes_many([BoxRead(spec, starts, shape, pad, indexes)], engine, threads,
                           [out])[0]


def read_boxes_many(reads: list[BoxRead], engine: Engine | None = None,
                    threads: int | None = None, outs: list | None = None) -> list[np.ndarray]:
    """:func:`read_boxes` of several arrays at once, in ONE batch per group of stores that
    join (local stores on one engine) when the C kernel decodes them all; ``outs``: optional
    output arrays (or None) in the same order."""
    for r in reads:
        if not r.spec.shape:
            raise ValueError(f"boxes of a 0-d array ({r.spec.root}) are the array itself: "
                             "read it")
    return _read_boxes(reads, engine, threads, outs or [None] * len(reads),
                       bool(config.get("partial-decode")))


def _read_boxes(reads: list[BoxRead], engine: Engine | None, threads: int | None,
                outs: list, partial: bool) -> list[np.ndarray]:
    """Read the boxes; started over (with no kept index) when an object store reports a
    shard rewritten between the read of its index and of its data."""
    fixed = any(store_of(r.spec, engine).versions_fixed for r in reads)
    tries = 1 if fixed else 1 + max(0, int(config.get("store.retries")))
    for attempt in range(tries):
        try:
            return _read_boxes_once(reads, engine, threads, outs, partial)
        except VersionConflictError:
            if attempt + 1 == tries:
                raise
            for r in reads:
                if r.spec.shard is not None:
                    (r.indexes if r.indexes is not None else shared_cache(r.spec)).forget()
    raise AssertionError("unreachable")


def _read_boxes_once(reads: list[BoxRead], engine: Engine | None, threads: int | None,
                     outs: list, partial: bool) -> list[np.ndarray]:
    if not reads:
        return []
    results, plans = [], []
    stores = [store_of(r.spec, engine) for r in reads]
    # shards stay held from their index check to their data read (one version each)
    with metrics.timed(stores[0].totals, "lsio-read"), contextlib.ExitStack() as holds:
        for r, out, store in zip(reads, outs, stores):
            out, plan = _prepare(r.spec, r.starts, tuple(int(n) for n in r.shape), out, r.pad,
                                 store, r.indexes, holds, partial)
            results.append(out)
            if plan is not None:
                plans.append(plan)
        if plans:
            execute_many(plans, threads or stores[0].decode_threads)
    return results


def _prepare(spec: ArraySpec, starts: Any, shape: tuple[int, ...], out: np.ndarray | None,
             pad: Any, store: Store, indexes: IndexCache | None,
             holds: contextlib.ExitStack, partial: bool) -> tuple[np.ndarray, planner.Run | None]:
    """The output (padded where boxes leave the array) and what the executor runs (None:
    nothing to read)."""
    starts = np.asarray(starts, np.int64)
    # (rows of starts; a 0-d array's one box has no columns, so -1 cannot tell the rows)
    starts = starts.reshape(len(starts) if starts.ndim == 2 else -1, len(spec.shape))
    full = (len(starts),) + shape
    # recycled memory: a batch a few ms long must not pay its page faults
    out = output_for(full, spec.dtype, store, out)
    if out.size == 0:
        return out, None
    stacked = out.reshape((full[0] * shape[0],) + shape[1:]) if shape else out.reshape(())
    _pad_outside(spec, starts, shape, out, spec.fill_value if pad is None else pad)
    cell = spec.shard.inner if spec.shard else spec.grid
    cells = planner.box_cells(cell, spec.shape, starts, shape)
    if cells is None:
        return out, None
    if spec.shard is None:
        # one box's cells are distinct chunks
        plan = planner.chunk_plan(spec, cells, distinct=len(starts) == 1)
        return out, planner.Run(spec, plan, stacked, store, partial)
    reader = [store]

    def lookup(shards: np.ndarray, keys: list[str]) -> list:
        if len(keys) > store.max_held():  # more shards than one caller may hold: read
            return read_indexes(spec, keys, store)  # them as they are, and keep nothing
        held = holds.enter_context(store.hold(keys))
        reader[0] = held.reader
        cache = indexes if indexes is not None else shared_cache(spec)
        return cache.get(shards, store, held, keys)

    gap, most = store.coalescing()
    plan, absent = planner.shard_plan(spec, cells, lookup, gap, most, distinct=len(starts) == 1)
    fill_boxes(spec, stacked, absent.dst, absent.count)
    return out, None if plan is None else planner.Run(spec, plan, stacked, reader[0], partial)


def _pad_outside(spec: ArraySpec, starts: np.ndarray, shape: tuple[int, ...], out: np.ndarray,
                 pad: Any) -> None:
    """Set the boxes that reach outside the array to ``pad`` (their inside is read after)."""
    outside = (starts < 0).any(axis=1) | (starts + shape > np.array(spec.shape)).any(axis=1)
    for b in np.flatnonzero(outside).tolist():
        out[b] = pad
