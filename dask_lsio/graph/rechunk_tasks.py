"""The tasks of a rechunk: copy one block (read its region in batches decoded by the
kernel, regroup it in one buffer, encode and write its whole target units), within a
per-process memory budget; and what a rerun finds already done.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import BatchIOError
from ..io import malloc, readahead
from ..store import LocalStore, Store
from ..zarr.plan import region_cells
from ..zarr.read import pieces, read_region
from ..zarr.spec import ArraySpec
from ..zarr.write import write_region


@dataclass(frozen=True)
class CopyJob:
    """One pass of one array: every block of ``block`` shape of ``source`` copied into
    ``target`` (whose write units the block is made of).

    Attributes
    ----------
    source, target : ArraySpec
    block : tuple of int
        The region one task copies (whole target write units, clipped at the edge).
    read_cells : int
        Source read units per read batch (bounds the read buffers).
    write_cells : int
        Target write units encoded per write batch (bounds the encoded bytes held).
    memory : int
        Bytes one task holds at most (the block, read buffers, encoded units).
    gate : str
        Names the per-process budget the tasks of one rechunk share.
    max_mem : int
        That budget, in bytes.
    write_empty : bool
        Write units that hold only fill_value (intermediate arrays: presence means done).
    malloc : (int, int) or None
        glibc's mmap and trim thresholds for the processes the tasks run in
        (:func:`dask_lsio.io.malloc.keep_freed`); None leaves malloc alone.
    consume : bool
        ``source`` is an intermediate array read by its last pass: once a block's target
        units are written, the source units inside the block are deleted (no other block
        reads them). Their space is free again before the pass ends, and on our VM the
        target's writes then reuse the page cache they held instead of fresh memory (a
        1 GiB copy: 2.2-2.4 s instead of 2.9-4.1).
    readahead : bool
        Each task hints the source files of the blocks its thread copies next to the
        kernel (:mod:`dask_lsio.io.readahead`; local unsharded sources only), so that
        they are read from the disk while this block is regrouped and written.
    """

    source: ArraySpec
    target: ArraySpec
    block: tuple[int, ...]
    read_cells: int
    write_cells: int
    memory: int
    gate: str
    max_mem: int
    write_empty: bool
    malloc: tuple[int, int] | None = None
    consume: bool = False
    readahead: bool = False

    @property
    def counts(self) -> tuple[int, ...]:
        """Blocks along each axis."""
        return tuple(-(-n // b) for n, b in zip(self.target.shape, self.block))

    @property
    def count(self) -> int:
        """Blocks in all."""
        return math.prod(self.counts)

    def region(self, index: int) -> tuple[slice, ...]:
        """The region of block number ``index`` (C order over :attr:`counts`)."""
        at = np.unravel_index(index, self.counts) if self.counts else ()
        return tuple(slice(int(i) * b, min((int(i) + 1) * b, n))
                     for i, b, n in zip(at, self.block, self.target.shape))

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, self.source, self.target, self.block, self.read_cells,
                self.write_cells, self.memory, self.gate, self.max_mem, self.write_empty,
                self.malloc, self.consume, self.readahead)


logger = logging.getLogger("dask_lsio")


def copy_block(job: CopyJob, index: int, ahead: tuple[int, ...], *after: object) -> int:
    """Copy block ``index`` of ``job``; return the bytes written.

    Everything is read before anything is written: a block whose source cannot be read
    (a corrupt chunk, a failing store) writes no unit. Each unit is written atomically, so
    a block killed while writing leaves complete units and absent ones, never torn ones.
    ``ahead``: blocks whose source files are hinted to the kernel first where
    ``job.readahead`` (the block this thread copies next). ``after``: results of tasks
    this one must follow (ignored).
    """
    region = job.region(index)
    shape = tuple(s.stop - s.start for s in region)
    if job.malloc is not None:  # codecs' per-chunk temporaries: reused, not refaulted
        malloc.keep_freed(*job.malloc)
    with budget(job.gate, job.max_mem).held(job.memory):
        if job.readahead:
            for block in ahead:
                _read_ahead(job, block)
        values = _buffer(job, shape)
        read_grid = job.source.shard.inner if job.source.shard else job.source.grid
        for piece in pieces(region, read_grid, job.read_cells):
            view = values[_within(piece, region)]
            if view.flags.c_contiguous:
                read_region(job.source, piece, out=view)
            else:  # a piece across an inner axis: read whole, then placed
                view[...] = read_region(job.source, piece, out=np.empty(view.shape,
                                                                        view.dtype))
        written = 0
        for piece in pieces(region, job.target.grid, job.write_cells):
            written += write_region(job.target, piece, values[_within(piece, region)],
                                    write_empty_chunks=job.write_empty)
    if job.consume:  # after every write: a block killed before this is redone whole
        try:
            job.source.store.delete(consumed_keys(job, [index]))
        except (OSError, BatchIOError) as e:  # the copy is done; the end removes the rest
            logger.warning("dask-lsio rechunk: could not delete intermediate chunks of block "
                           "%d in %s (%s); they are removed at the end", index,
                           job.source.store.url, e)
    return written


def _read_ahead(job: CopyJob, index: int) -> None:
    """Hint the source files of block ``index`` to the kernel (local unsharded sources
    only: a shard file may hold much that the block does not read)."""
    store = job.source.store
    if isinstance(store, LocalStore) and job.source.shard is None:
        cells = region_cells(job.region(index), job.source.grid)
        readahead.hint(store.paths(job.source.keys(cells.pos)))


def _buffer(job: CopyJob, shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised array for a block, in memory recycled through the source store's
    pool: fresh memory costs a page fault per page (up to 2 s per GiB on our VM, more than
    the copy). Every block takes a slab of the whole block's size class (edge blocks too),
    so a process keeps at most one slab per block being copied."""
    dtype = job.source.dtype
    whole = math.prod(job.block) * dtype.itemsize
    nbytes = math.prod(shape) * dtype.itemsize
    return job.source.store.pool.slab(whole)[:nbytes].view(dtype).reshape(shape)


def consumed_keys(job: CopyJob, blocks: list[int]) -> list[str]:
    """The keys of the source units that lie wholly inside the blocks ``blocks`` of
    ``job`` (read by those blocks only): what a consuming job deletes once they are done."""
    keys: list[str] = []
    grid = np.array(job.source.grid, np.int64)
    shape = np.array(job.source.shape, np.int64)
    for index in blocks:
        cells = region_cells(job.region(int(index)), job.source.grid)
        whole = (cells.count == np.minimum(grid, shape - cells.pos * grid)).all(axis=1)
        keys += job.source.keys(cells.pos[whole])
    return keys


def remove_array(store: Store, made: Store | None, *after: object) -> None:
    """Delete an intermediate array (every object under ``store``) once it has served, and
    ``made``, the directory made to hold such arrays, once it is empty."""
    if isinstance(store, LocalStore):
        shutil.rmtree(store.root, ignore_errors=True)
        if isinstance(made, LocalStore):
            with contextlib.suppress(OSError):  # other arrays' are still there
                os.rmdir(made.root)
    else:
        store.delete(store.list())


def done_blocks(job: CopyJob, keys: list[str]) -> np.ndarray:
    """Which blocks of ``job`` have every target unit among ``keys`` (the objects found in
    the target's store): flat block numbers. Units of only fill_value are never written,
    so a block that holds some counts as not done (it is copied again)."""
    spec = job.target
    units = tuple(-(-n // g) for n, g in zip(spec.shape, spec.grid))
    present = np.zeros(units, bool)
    found = _positions(spec, keys)
    if len(found):
        found = found[(found >= 0).all(axis=1) & (found < np.array(units)).all(axis=1)]
        present[tuple(found.T)] = True
    if not spec.shape:
        return np.flatnonzero(present.reshape(1))
    # units per block along each axis; blocks at the edge hold fewer
    per = tuple(-(-b // g) for b, g in zip(job.block, spec.grid))
    padded = tuple(c * p for c, p in zip(job.counts, per))
    grid = np.ones(padded, bool)  # units beyond the array's edge: nothing to write
    grid[tuple(slice(0, u) for u in units)] = present
    shaped = grid.reshape([x for c, p in zip(job.counts, per) for x in (c, p)])
    whole = shaped.all(axis=tuple(range(1, 2 * len(per), 2)))
    return np.flatnonzero(whole.reshape(-1))


def _positions(spec: ArraySpec, keys: list[str]) -> np.ndarray:
    """Grid positions (rows) of the chunk keys among ``keys``; other keys are left out."""
    head = spec.key_prefix + spec.separator if spec.key_prefix else ""
    rows = []
    for k in keys:
        if not k.startswith(head):
            continue
        parts = k[len(head):].split(spec.separator)
        if len(parts) == spec.ndim and all(p.isdigit() for p in parts):
            rows.append([int(p) for p in parts])
    return np.array(rows, np.int64).reshape(-1, spec.ndim)


def _within(piece: tuple[slice, ...], region: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(p.start - r.start, p.stop - r.start) for p, r in zip(piece, region))


class Budget:
    """Bytes that the rechunk tasks of one process may hold at once.

    Tasks are sized so that the scheduler's threads fit; this makes sure of it when a
    scheduler runs more tasks at once than planned (``num_workers=``, more worker threads).
    """

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.used = 0
        self._cond = threading.Condition()

    def held(self, nbytes: int) -> _Held:
        return _Held(self, min(nbytes, self.nbytes))


class _Held:
    def __init__(self, budget: Budget, nbytes: int) -> None:
        self.budget, self.nbytes = budget, nbytes

    def __enter__(self) -> None:
        b = self.budget
        with b._cond:
            # each holder releases when its block is done: every wait ends
            while b.used + self.nbytes > b.nbytes:
                b._cond.wait(1.0)
            b.used += self.nbytes

    def __exit__(self, *exc: object) -> None:
        b = self.budget
        with b._cond:
            b.used -= self.nbytes
            b._cond.notify_all()


_BUDGETS: dict[str, Budget] = {}
_BUDGETS_LOCK = threading.Lock()


def budget(name: str, nbytes: int) -> Budget:
    """The budget ``name`` of this process (one per rechunk)."""
    with _BUDGETS_LOCK:
        b = _BUDGETS.get(name)
        if b is None:
            b = _BUDGETS[name] = Budget(nbytes)
        return b


def cells_within(nbytes: int, unit: tuple[int, ...], itemsize: int) -> int:
    """How many units of ``unit`` shape fit in ``nbytes`` (at least one)."""
    return max(1, nbytes // max(1, math.prod(unit) * itemsize))

