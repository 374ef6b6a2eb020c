"""Read many boxes of one Zarr array at once (the random crops of a training batch): one
engine batch for every chunk they need, each chunk decoded once however many boxes need it,
its parts placed straight into the boxes' output.

The output stacks the boxes: ``out[b]`` is ``array[starts[b] : starts[b] + shape]``. For the
read path (:mod:`.read`) it is one array whose first axis is ``len(starts) * shape[0]`` long,
so a plan (:class:`._plan.Jobs`) places into it as into a region. A chunk that several boxes
need is one read whose jobs are adjacent: the C kernel and the numcodecs path decode it once
and copy its parts into each box.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .. import config, metrics
from ..io import Engine, get_engine
from ..io.pin import PinnedFiles, max_pinned
from . import _plan
from .read import execute_many, fill_boxes, output_for
from .shard import EMPTY, IndexCache
from .spec import ArraySpec


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
    threads : int, optional
        Decode threads (default: the engine's).
    indexes : IndexCache, optional
        Shard indexes kept between calls (sharded arrays); a new one per call by default.

    Returns
    -------
    numpy.ndarray
    """
    return read_boxes_many([(spec, starts, shape, pad, indexes)], engine, threads, [out])[0]


def read_boxes_many(reads: list[tuple], engine: Engine | None = None,
                    threads: int | None = None, outs: list | None = None) -> list[np.ndarray]:
    """:func:`read_boxes` of several arrays at once, in ONE engine batch when the C kernel
    decodes them all (else one batch per array).

    ``reads`` holds ``(spec, starts, shape, pad, indexes)`` per array; ``outs`` optional
    output arrays (or None) in the same order.
    """
    engine = engine or get_engine()
    outs = outs or [None] * len(reads)
    results, plans = [], []
    # shard files stay open from their index check to their data read (one version each)
    with metrics.timed(engine.totals, "lsio-read"), contextlib.ExitStack() as pins:
        for (spec, starts, shape, pad, indexes), out in zip(reads, outs):
            out, stacked, jobs = _prepare(spec, starts, shape, out, pad, engine, indexes, pins)
            results.append(out)
            if jobs is not None:
                plans.append((spec, jobs, stacked))
        if plans:
            execute_many(plans, engine, threads or engine.decode_threads)
    return results


def _prepare(spec: ArraySpec, starts: Any, shape: tuple[int, ...], out: np.ndarray | None,
             pad: Any, engine: Engine, indexes: IndexCache | None, pins: contextlib.ExitStack):
    """The output (padded where boxes leave the array), its stacked view, and the plan
    (None: nothing to read)."""
    if not spec.shape:
        raise ValueError(f"boxes of a 0-d array ({spec.root}) are the array itself: read it")
    starts = np.asarray(starts, np.int64).reshape(-1, len(spec.shape))
    shape = tuple(int(n) for n in shape)
    full = (len(starts),) + shape
    # recycled memory: a batch a few ms long must not pay its page faults
    out = output_for(full, spec.dtype, engine, out)
    if out.size == 0:
        return out, out, None
    stacked = out.reshape((full[0] * shape[0],) + shape[1:])
    _pad_outside(spec, starts, shape, out, spec.fill_value if pad is None else pad)
    cells = _box_cells(spec, starts, shape)
    jobs = None if cells is None else _jobs(spec, cells, stacked, engine, indexes, pins)
    return out, stacked, jobs


def _pad_outside(spec: ArraySpec, starts: np.ndarray, shape: tuple[int, ...], out: np.ndarray,
                 pad: Any) -> None:
    """Set the boxes that reach outside the array to ``pad`` (their inside is read after)."""
    outside = (starts < 0).any(axis=1) | (starts + shape > np.array(spec.shape)).any(axis=1)
    for b in np.flatnonzero(outside).tolist():
        out[b] = pad


def _box_cells(spec: ArraySpec, starts: np.ndarray, shape: tuple[int, ...]):
    """Per (box, cell) pair: the cell's grid position, the part of it placed (start, count)
    and where that part goes in the stacked output (dst); None when no box meets the array.

    Cells are chunks, or inner chunks of a sharded array. All boxes at once: along each axis
    a box meets at most ``k`` cells; the (boxes, k_0, ..., k_n) candidates past a box's own
    last cell are dropped."""
    cell = np.array(spec.shard.inner if spec.shard else spec.grid, np.int64)
    limit = np.array(spec.shape, np.int64)
    lo = np.clip(starts, 0, limit)
    hi = np.clip(starts + np.array(shape, np.int64), 0, limit)
    meets = (hi > lo).all(axis=1)
    if not meets.any():
        return None
    boxes = np.flatnonzero(meets)
    lo, hi, starts = lo[boxes], hi[boxes], starts[boxes]
    first, last = lo // cell, (hi - 1) // cell
    k = (last - first + 1).max(axis=0)
    ndim = len(cell)
    columns = []  # per axis: (pos, start, count, dst) of shape (boxes, k_axis)
    for a in range(ndim):
        pos = first[:, a, None] + np.arange(k[a])
        a_lo = np.maximum(pos * cell[a], lo[:, a, None])
        a_hi = np.minimum(pos * cell[a] + cell[a], hi[:, a, None])
        dst = a_lo - starts[:, a, None]
        if a == 0:
            dst = dst + boxes[:, None] * shape[0]
        columns.append((pos, a_lo - pos * cell[a], a_hi - a_lo, dst, pos <= last[:, a, None]))
    valid = np.ones((len(boxes),) + tuple(int(x) for x in k), bool)
    for a in range(ndim):
        view = [len(boxes)] + [1] * ndim
        view[a + 1] = int(k[a])
        valid &= columns[a][4].reshape(view)
    box, *at = np.nonzero(valid)  # the (box, cell along each axis) pairs kept
    return tuple(np.stack([columns[a][f][box, at[a]] for a in range(ndim)], axis=1)
                 for f in range(4))


def _jobs(spec: ArraySpec, cells, out: np.ndarray, engine: Engine,
          indexes: IndexCache | None, pins: contextlib.ExitStack) -> _plan.Jobs | None:
    """The plan: one read per distinct chunk (or coalesced shard range), its boxes' jobs
    adjacent."""
    pos, start, count, dst = cells
    # distinct cells by their flat index (np.unique of rows compares bytes: 10x slower)
    counts = tuple(-(-n // c) for n, c in zip(spec.shape, spec.shard.inner if spec.shard
                                              else spec.grid))
    ids, which = np.unique(np.ravel_multi_index(tuple(pos.T), counts), return_inverse=True)
    units = np.stack(np.unravel_index(ids, counts), axis=1)
    which = which.reshape(-1)
    if spec.shard is None:
        order = np.argsort(which, kind="stable")
        job_at = np.concatenate([[0], np.cumsum(np.bincount(which, minlength=len(units)))])
        n = len(units)
        return _plan.Jobs(
            spec.paths(units), np.zeros(n, np.int64),
            np.full(n, -1, np.int64), job_at, np.zeros(len(order), np.int64),
            np.full(len(order), -1, np.int64), start[order], count[order], dst[order],
            hint=spec.codec.nbytes + 4096,
        )
    return _shard_jobs(spec, units, which, (start, count, dst), out, engine,
                       indexes if indexes is not None else IndexCache(spec), pins)


def _shard_jobs(spec: ArraySpec, units: np.ndarray, which: np.ndarray, boxes, out: np.ndarray,
                engine: Engine, indexes: IndexCache,
                pins: contextlib.ExitStack) -> _plan.Jobs | None:
    """Sharded arrays: the distinct inner chunks found in their shards' indexes, read as
    coalesced byte ranges; absent ones fill their boxes with fill_value. Each shard is held
    open (in ``pins``) from the check of its index to the read of its data."""
    per_shard = np.array(spec.shard.per_shard(spec.grid), np.int64)
    shards, shard_no = np.unique(units // per_shard, axis=0, return_inverse=True)
    shard_no = shard_no.reshape(-1)
    names = spec.paths(shards)
    # (a batch of more shards than this process may hold open reads them by name)
    files = pins.enter_context(PinnedFiles(names)) if len(names) <= max_pinned() else None
    table = np.full((len(shards), int(np.prod(per_shard)), 2), EMPTY, np.uint64)
    for s, idx in enumerate(indexes.get(shards, engine, files)):
        if idx is not None:
            table[s] = idx.reshape(-1, 2)
    inner = np.ravel_multi_index(tuple((units % per_shard).T), tuple(per_shard))
    entry = table[shard_no, inner]  # per distinct chunk; the boxes' rows pick theirs
    jobs, (dst, count) = _plan.ranged_jobs(
        names if files is None else files.read_paths, shard_no[which], entry[which], boxes,
        config.get_bytes("coalesce-gap"), config.get_bytes("coalesce-max"), names)
    fill_boxes(spec, out, dst, count)
    return jobs
