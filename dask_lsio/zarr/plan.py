"""The planner: which objects or byte ranges some boxes of a Zarr array need, and where each
chunk's values go in the output, as numpy columns (no Python object per chunk but its key).

Every read is a read of boxes (a region is one box; a batch of crops, many), and every write
names its units the same way. :func:`box_cells` finds the (box, cell) pairs; a :class:`Plan`
says which reads fetch the cells and where each part goes. A plan is executed by the C kernel
as the store's read hook or by numcodecs on decode threads (:mod:`.execute`); both read the
same columns, so both place the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .shard import EMPTY, coalesce
from ..store import Store
from .spec import ArraySpec



@dataclass(frozen=True)
class Cells:
    """(box, cell) pairs, one row each ((n, ndim) int64 columns): the cell's grid position,
    the part of it placed (``start``, ``count``, within the cell) and where that part starts
    in the output (``dst``; boxes are stacked along the first axis)."""

    pos: np.ndarray
    start: np.ndarray
    count: np.ndarray
    dst: np.ndarray

    def __len__(self) -> int:
        return len(self.pos)

    def take(self, rows: np.ndarray) -> Cells:
        """The rows ``rows`` (indices or a mask) of every column."""
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return Cells(*(_rows(c, rows) for c in (self.pos, self.start, self.count, self.dst)))


def _rows(column: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``column[rows]`` for integer ``rows``: np.take along the first axis gathers whole
    rows, 4x faster than fancy indexing of an (n, 3) column (1.1 against 4 ms for 131,072)."""
    return np.take(column, rows, axis=0)


@dataclass(frozen=True)
class Plan:
    """The reads of some boxes, and per chunk part ("job") where it lies and where it goes.

    Jobs are grouped by read: read ``i`` of object ``keys[i]`` holds jobs ``job_at[i]`` to
    ``job_at[i+1] - 1``. ``src_off``/``src_len`` locate a job's bytes in its read's data
    (-1: all of it); ``start``/``count`` (jobs, ndim) are the part of the chunk placed and
    ``dst`` (jobs, ndim) where that part starts in the output. Jobs of one chunk (several
    boxes need it) are adjacent, so it is decoded once.
    """

    keys: list[str]
    offsets: np.ndarray
    lengths: np.ndarray  # -1: to the end of the object
    job_at: np.ndarray
    src_off: np.ndarray
    src_len: np.ndarray
    start: np.ndarray
    count: np.ndarray
    dst: np.ndarray
    hint: int = 0  # expected bytes of a read to the end of its object
    missing_is_fill: bool = True  # a read of an absent object means fill_value, not an error
    where: Callable[[str], str] | None = None  # key -> where it is, for messages (store.name)

    def name(self, read: int) -> str:
        """Where the object of a read is, for messages."""
        key = self.keys[read]
        return self.where(key) if self.where else key

    def job_key(self, job: int, read: int) -> str:
        """The name of a job's chunk in error messages: its object, and its byte range when
        it is part of one (an inner chunk of a shard)."""
        if self.src_len[job] < 0:
            return self.name(read)
        first = int(self.offsets[read] + self.src_off[job])
        return f"{self.name(read)} bytes {first}-{first + int(self.src_len[job])}"


@dataclass(frozen=True)
class Run:
    """A plan bound to where it runs: the array's spec, the output it places into, the
    store it reads from (the array's, or a reader of the versions held for it), and whether
    the kernel may decode blosc chunks in part (crops: ``lsio.partial-decode``)."""

    spec: ArraySpec
    plan: Plan
    out: np.ndarray
    store: Store
    partial: bool = False


def box_cells(cell: tuple[int, ...], limit: tuple[int, ...], starts: np.ndarray,
              shape: tuple[int, ...]) -> Cells | None:
    """The cells of the grid ``cell`` (over an array of shape ``limit``) that boxes of
    ``shape`` at ``starts`` (boxes, ndim) meet, box after box, in C order within a box;
    None when no box meets the array. Boxes may reach outside the array (those parts are
    not cells of it).

    All boxes at once: along each axis a box meets at most ``k`` cells; the (boxes, k_0,
    ..., k_n) candidates past a box's own last cell are dropped."""
    ndim = len(cell)
    if ndim == 0:  # a 0-d array: one cell
        zero = np.zeros((1, 0), np.int64)
        return Cells(zero, zero, zero, zero)
    grid = np.array(cell, np.int64)
    bound = np.array(limit, np.int64)
    starts = np.asarray(starts, np.int64).reshape(-1, ndim)
    lo = np.clip(starts, 0, bound)
    hi = np.clip(starts + np.array(shape, np.int64), 0, bound)
    meets = (hi > lo).all(axis=1)
    if not meets.any():
        return None
    boxes = np.flatnonzero(meets)
    lo, hi, starts = lo[boxes], hi[boxes], starts[boxes]
    first, last = lo // grid, (hi - 1) // grid
    if len(boxes) == 1:  # a region: every candidate is a cell
        return _one_box(grid, lo[0], hi[0], starts[0], first[0], last[0], int(boxes[0]) * shape[0])
    k = (last - first + 1).max(axis=0)
    columns = []  # per axis: (pos, start, count, dst, valid) of shape (boxes, k_axis)
    for a in range(ndim):
        pos = first[:, a, None] + np.arange(k[a])
        a_lo = np.maximum(pos * grid[a], lo[:, a, None])
        a_hi = np.minimum(pos * grid[a] + grid[a], hi[:, a, None])
        dst = a_lo - starts[:, a, None]
        if a == 0:
            dst = dst + boxes[:, None] * shape[0]
        columns.append((pos, a_lo - pos * grid[a], a_hi - a_lo, dst, pos <= last[:, a, None]))
    valid = np.ones((len(boxes),) + tuple(int(x) for x in k), bool)
    for a in range(ndim):
        view = [len(boxes)] + [1] * ndim
        view[a + 1] = int(k[a])
        valid &= columns[a][4].reshape(view)
    box, *at = np.nonzero(valid)  # the (box, cell along each axis) pairs kept
    return Cells(*(np.stack([columns[a][f][box, at[a]] for a in range(ndim)], axis=1)
                   for f in range(4)))


def _one_box(grid: np.ndarray, lo: np.ndarray, hi: np.ndarray, start: np.ndarray,
             first: np.ndarray, last: np.ndarray, offset: int) -> Cells:
    """:func:`box_cells` of one box meeting the array in ``[lo, hi)``: every cell from
    ``first`` to ``last`` along each axis, in C order, each column broadcast from its axis'
    values (gathering them through np.nonzero took 8 ms of a 131,072-cell region)."""
    ndim = len(grid)
    k = tuple(int(n) for n in last - first + 1)
    fields = [np.empty((int(np.prod(k)), ndim), np.int64) for _ in range(4)]
    for a in range(ndim):
        pos = first[a] + np.arange(k[a])
        a_lo = np.maximum(pos * grid[a], lo[a])
        a_hi = np.minimum(pos * grid[a] + grid[a], hi[a])
        dst = a_lo - start[a] + (offset if a == 0 else 0)
        view = [1] * ndim
        view[a] = k[a]
        for f, values in enumerate((pos, a_lo - pos * grid[a], a_hi - a_lo, dst)):
            fields[f].reshape(k + (ndim,))[..., a] = values.reshape(view)
    return Cells(*fields)


def region_cells(region: tuple[slice, ...], cell: tuple[int, ...]) -> Cells:
    """The cells of ``region`` (one box, inside the array): :func:`box_cells` of one box."""
    starts = np.array([[s.start for s in region]], np.int64)
    shape = tuple(s.stop - s.start for s in region)
    limit = tuple(s.stop for s in region)
    found = box_cells(cell, limit, starts, shape)
    if found is None:  # an empty region
        empty = np.zeros((0, len(region)), np.int64)
        return Cells(empty, empty, empty, empty)
    return found


def distinct_units(cells: Cells, counts: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct cells (grid positions, C order) and, per row of ``cells``, which one it
    is. ``counts``: cells per axis. (np.unique of rows compares bytes: 10x slower than of
    flat indices.)"""
    return distinct_rows(cells.pos, counts)


def distinct_rows(pos: np.ndarray, counts: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`distinct_units` of grid positions ``pos`` (one row each)."""
    if not counts:
        return pos[:1], np.zeros(len(pos), np.int64)
    flat = np.ravel_multi_index(tuple(pos.T), counts)
    if len(flat) > 1 and (flat[1:] >= flat[:-1]).all():  # sorted (a region's shards, in C
        step = flat[1:] != flat[:-1]                     # order): no sort needed
        ids = flat[np.concatenate([[0], np.flatnonzero(step) + 1])]
        which = np.concatenate([[0], np.cumsum(step)])
    else:
        ids, which = np.unique(flat, return_inverse=True)
    return np.stack(np.unravel_index(ids, counts), axis=1), which.reshape(-1)


def chunk_plan(spec: ArraySpec, cells: Cells, distinct: bool = False) -> Plan:
    """Unsharded arrays: one read of a whole chunk object per distinct chunk. ``distinct``:
    every row of ``cells`` is another chunk (the cells of one box), in the order to read."""
    if distinct:
        units, which = cells.pos, np.arange(len(cells))
        order = which
    else:
        counts = tuple(-(-n // c) for n, c in zip(spec.shape, spec.grid))
        units, which = distinct_units(cells, counts)
        order = np.argsort(which, kind="stable")
    n, m = len(units), len(order)
    return Plan(
        spec.keys(units), np.zeros(n, np.int64), np.full(n, -1, np.int64),
        np.concatenate([[0], np.cumsum(np.bincount(which, minlength=n))]),
        np.zeros(m, np.int64), np.full(m, -1, np.int64),
        _rows(cells.start, order), _rows(cells.count, order), _rows(cells.dst, order),
        hint=spec.codec.nbytes + 4096,  # compressors rarely expand more than their header
        where=spec.store.name,
    )


IndexLookup = Callable[[np.ndarray, list[str]], list]  # (shards, keys) -> index or None each


def shard_plan(spec: ArraySpec, cells: Cells, lookup: IndexLookup, gap: int,
               limit: int, distinct: bool = False) -> tuple[Plan | None, Cells]:
    """Sharded arrays: the distinct inner chunks ``cells`` need, found in their shards'
    indexes (``lookup(shards, keys)``: each shard's index, None for an absent shard), read
    as coalesced byte ranges (see :func:`coalesce`). ``distinct``: every row of ``cells`` is
    another inner chunk (the cells of one box).

    Returns the plan (None when every chunk is absent) and the cells of the absent chunks,
    which hold fill_value.
    """
    inner = spec.shard.inner
    per_shard = np.array(spec.shard.per_shard(spec.grid), np.int64)
    if distinct:
        units, which = cells.pos, None
    else:
        units, which = distinct_units(cells, tuple(-(-n // c) for n, c in zip(spec.shape, inner)))
    shards, shard_no = distinct_rows(units // per_shard,
                                     tuple(-(-n // g) for n, g in zip(spec.shape, spec.grid)))
    keys = spec.keys(shards)
    table = np.full((len(shards), int(np.prod(per_shard)), 2), EMPTY, np.uint64)
    for s, index in enumerate(lookup(shards, keys)):
        if index is not None:
            table[s] = index.reshape(-1, 2)
    at = np.ravel_multi_index(tuple((units % per_shard).T), tuple(per_shard))
    entry = _rows(table.reshape(-1, 2), shard_no * table.shape[1] + at)
    if which is not None:  # per row of cells
        entry, shard_no = _rows(entry, which), shard_no[which]
    absent = entry[:, 0] == EMPTY
    if absent.all():
        return None, cells
    keep = np.flatnonzero(~absent) if absent.any() else None
    return _ranged(keys, shard_no, entry, cells, keep, gap, limit,
                   spec.store.name), cells.take(absent)


def _ranged(keys: list[str], shard_no: np.ndarray, entry: np.ndarray, cells: Cells,
            keep: np.ndarray | None, gap: int, limit: int, where: Callable[[str], str]) -> Plan:
    """A plan placing the rows ``keep`` (None: all) of ``cells``, inner chunks found at
    ``entry`` (offset, nbytes per row) in the shards ``keys[shard_no]``, read as coalesced
    byte ranges. Rows of one chunk become adjacent jobs of one read."""
    offsets, lengths = entry[:, 0].astype(np.int64), entry[:, 1].astype(np.int64)
    if keep is not None:
        shard_no, offsets, lengths = shard_no[keep], offsets[keep], lengths[keep]
    ranges = coalesce(shard_no, offsets, lengths, gap, limit)
    sizes, starts = ranges.sizes, ranges.start
    # the cells' rows, read after read: one gather of their columns (none for a region's
    # chunks already in order and all present)
    rows = keep
    if not ranges.in_order:
        offsets, lengths = offsets[ranges.order], lengths[ranges.order]
        rows = ranges.order if keep is None else keep[ranges.order]
    columns = (cells.start, cells.count, cells.dst)
    start, count, dst = columns if rows is None else (_rows(c, rows) for c in columns)
    ends = np.maximum.reduceat(offsets + lengths, np.cumsum(sizes) - sizes)
    return Plan(
        [keys[s] for s in ranges.shard.tolist()], starts, ends - starts,
        np.concatenate([[0], np.cumsum(sizes)]), offsets - np.repeat(starts, sizes),
        lengths, start, count, dst,
        missing_is_fill=False,  # the shard was there for its index: now gone is an error
        where=where,
    )
