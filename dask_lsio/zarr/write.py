"""Write a region of a Zarr array: encode every chunk (or whole shard) it covers, then write
them all in one store batch, each object atomically (locally: a temporary name renamed into
place).

The format layer of ``to_zarr`` and the codec pipeline: :func:`write_region` takes regions
made of whole write units (shards, or chunks when unsharded), except where they end at the
array's edge; edge units are padded with fill_value to their full shape, as zarr-python stores
them. :func:`update_region` takes any region: the units it covers in part are read, merged and
written back whole under their write locks. Units that hold only fill_value are not written,
and a stale object left by an earlier write is deleted (zarr-python's
``write_empty_chunks=False``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
from typing import Any, Mapping

import numpy as np

from .. import config, metrics
from ..errors import BatchIOError, VersionConflictError
from ..io import Engine
from . import _decode, _kernel, shard, shard_encode
from .execute import store_of
from .plan import region_cells
from .read import read_boxes
from .spec import ArraySpec

# Whole units the kernel encodes per call (encode_blosc_units): bytes of input per group.
# Large enough that a call's fixed cost is nothing; small enough that the output buffer,
# which a thread keeps for stores that write in start_put, stays a few MiB.
ENCODE_GROUP_BYTES = 2 << 20
_arenas = threading.local()


def check_aligned(spec: ArraySpec, region: tuple[slice, ...]) -> None:
    """Raise ValueError unless ``region`` is made of whole write units (or ends at the edge)."""
    for axis, (s, g, n) in enumerate(zip(region, spec.grid, spec.shape)):
        if s.start % g or (s.stop % g and s.stop != n):
            raise ValueError(
                f"region {s.start}:{s.stop} along axis {axis} of {spec.root!r} does not align "
                f"with its {'shards' if spec.shard else 'chunks'} of {g}: a partial write "
                "unit would lose the values already stored around it"
            )


def write_region(spec: ArraySpec, region: tuple[slice, ...], values: np.ndarray,
                 engine: Engine | None = None, write_empty_chunks: bool = False,
                 threads: int = 1, expect: Mapping[str, Any] | None = None) -> int:
    """Store ``values`` (shaped like ``region``) into the array; return the bytes written.

    Units are encoded on ``threads`` threads (1: on the caller's, as a dask task does; a
    caller that is the only writer can use every core). Raises ValueError for a misaligned
    region, and BatchIOError (OSErrors naming each object) when objects could not be written;
    objects are complete or absent, never torn. ``engine``: the engine of a local store
    (default the process's). ``expect``: key -> the version an object must still be at
    when it is written (object stores' conditional PUTs; see :func:`update_region`).
    """
    check_aligned(spec, region)
    store = store_of(spec, engine)
    cells = region_cells(region, spec.grid)
    pos, count, dst = cells.pos, cells.count, cells.dst
    units = list(zip(map(tuple, pos.tolist()), count.tolist(), dst.tolist()))
    encoded: list = [None] * len(units)

    def encode(i: int) -> None:
        _, c, d = units[i]
        unit = _padded(spec, values[tuple(slice(a, a + k) for a, k in zip(d, c))])
        encoded[i] = _encode_unit(spec, unit, write_empty_chunks)

    # in groups where the store says so: a group's writes are in flight (object stores)
    # while the next is encoded
    group = store.write_group or max(1, len(units))
    batched = threads == 1 and _batch_encodable(spec, values, write_empty_chunks)
    if batched:  # (more threads: the caller wants units encoded in parallel, unit by unit)
        group = min(group, max(1, ENCODE_GROUP_BYTES // spec.codec.nbytes))
    started, deletes = [], []
    for lo in range(0, len(units), group):
        hi = min(lo + group, len(units))
        with metrics.timed(store.totals, "lsio-encode"):
            # a store whose write_group is 0 writes in start_put: the group's buffer is
            # free again when the next group is encoded
            rest = (_encode_batch(spec, values, units, lo, hi, encoded, write_empty_chunks,
                                  store.write_group == 0) if batched else range(lo, hi))
            _decode.run(((i,) for i in rest), encode, threads, store.decode_pool)
        writes = []
        for (p, _, _), data in zip(units[lo:hi], encoded[lo:hi]):
            if data is None:  # all fill_value: no object, and none left from an earlier one
                deletes.append(spec.key(p))
            else:
                writes.append((spec.key(p), data))
        for i in range(lo, hi):
            encoded[i] = None  # (the started write holds what it needs)
        if writes:
            started.append(store.start_put(writes, expect))
    with metrics.timed(store.totals, "lsio-write"):
        written, failed = 0, []
        for s in started:  # every write ends before anything is raised
            try:
                written += sum(s.result())
            except BatchIOError as e:
                failed.extend(e.exceptions)
        if failed:
            raise BatchIOError(f"{len(failed)} writes failed", failed)
        if deletes:
            store.delete(deletes)
    return written


def update_region(spec: ArraySpec, region: tuple[slice, ...], values: np.ndarray,
                  engine: Engine | None = None, write_empty_chunks: bool = False,
                  threads: int = 1, fresh: np.ndarray | None = None) -> int:
    """:func:`write_region` for any region: units it covers only in part are read, updated
    and written back whole.

    Each such unit is read and written back under its write lock (:meth:`Store.lock`),
    so writers of disjoint regions that share a unit (tasks of one ``to_zarr``, independent
    jobs, zarr-python writers through the codec pipeline) never erase each other's values.
    On object stores, whose writers in other processes take no lock of ours, each unit is
    written back only if it is still the version read (a conditional PUT); else the read,
    merge and write start over, up to ``lsio.store.retries`` times.

    Parameters
    ----------
    fresh : numpy.ndarray, optional
        Grid positions (rows) of units covered in part that start from fill_value instead
        of their stored values (zarr-python's rule for an edge chunk whose part inside the
        array is selected whole).
    """
    outer = covering_region(spec, region)
    if outer == region:
        return write_region(spec, region, values, engine, write_empty_chunks, threads)
    store = store_of(spec, engine)
    grid = np.array(spec.grid, np.int64)
    cells = region_cells(outer, spec.grid)
    pos, count, dst = cells.pos, cells.count, cells.dst
    lo = pos * grid
    hi = np.minimum(lo + grid, np.array(spec.shape, np.int64))
    start = np.array([s.start for s in region], np.int64)
    stop = np.array([s.stop for s in region], np.int64)
    partial = ~((lo >= start) & (hi <= stop)).all(axis=1)
    merge = partial.copy()
    if fresh is not None and len(fresh):
        merge &= ~_rows_in(pos, np.asarray(fresh, np.int64))
    shape = tuple(s.stop - s.start for s in outer)
    # the parts of fresh units outside the region are fill_value; all else is overwritten
    fill = bool((partial & ~merge).any())
    merged = np.full(shape, spec.fill_value, spec.dtype) if fill else np.empty(shape, spec.dtype)
    inside = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(region, outer))
    keys = spec.keys(pos[merge])
    # object stores: writers elsewhere take no lock of ours; a conditional PUT keeps them apart
    conditional = getattr(store, "conditional", None)
    if conditional is False and merge.any():
        raise NotImplementedError(
            f"{store.url} cannot be written conditionally (plain HTTP): a write covering "
            f"{', '.join(keys[:3])} in part could erase another writer's values; write whole "
            f"{'shards' if spec.shard else 'chunks'}")
    conditional = bool(conditional) and merge.any()
    tries = 1 + max(0, int(config.get("store.retries"))) if conditional else 1
    for attempt in range(tries):
        try:
            with store.lock(keys), _held(store, keys, conditional) as held:
                reading = spec if held is None else dataclasses.replace(spec, store=held.reader)
                if merge.any():
                    stored = read_boxes(reading, lo[merge], spec.grid, pad=spec.fill_value,
                                        engine=engine, threads=threads)
                    for unit, d, c in zip(stored, dst[merge].tolist(), count[merge].tolist()):
                        merged[_box(d, c)] = unit[_box([0] * len(c), c)]
                merged[inside] = values
                expect = None if held is None else {
                    k: v for i, k in enumerate(keys) if (v := held.identity(i)) is not None}
                return write_region(spec, outer, merged, engine, write_empty_chunks, threads,
                                    expect)
        except (VersionConflictError, BatchIOError) as e:
            # a unit rewritten since it was read (its data, or its index before its data)
            if not conditional or attempt + 1 == tries or not _conflict(e):
                raise
            if spec.shard is not None:  # a kept index may be of the version now replaced
                shard.shared_cache(spec).forget()
        # another writer changed a unit meanwhile: back off, then a new hold reads it again
        time.sleep(random.uniform(0, min(2.0, 0.05 * 2 ** attempt)))
    raise AssertionError("unreachable")


def _conflict(e: BaseException) -> bool:
    """Whether ``e`` says only that other writers changed objects (a conditional request
    failed), so that reading them again and retrying can succeed."""
    if isinstance(e, BatchIOError):
        return all(isinstance(x, VersionConflictError) for x in e.exceptions)
    return isinstance(e, VersionConflictError)


def _held(store, keys: list[str], conditional: bool):
    """The units held while they are read and merged (conditional writes), else nothing."""
    return store.hold(keys) if conditional else contextlib.nullcontext()


def _box(start, count) -> tuple[slice, ...]:
    return tuple(slice(a, a + k) for a, k in zip(start, count))


def _rows_in(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Whether each row of ``rows`` is a row of ``table`` (both (n, ndim) int arrays)."""
    if rows.shape[1] == 0:
        return np.full(len(rows), len(table) > 0)
    dims = np.maximum(rows.max(axis=0), table.max(axis=0)) + 1
    return np.isin(np.ravel_multi_index(tuple(rows.T), dims),
                   np.ravel_multi_index(tuple(table.T), dims))


def covering_region(spec: ArraySpec, region: tuple[slice, ...]) -> tuple[slice, ...]:
    """The smallest region of whole write units (clipped at the array's edge) around ``region``."""
    if any(s.start == s.stop for s in region):
        return region
    return tuple(
        slice(s.start // g * g, min(n, -(-s.stop // g) * g))
        for s, g, n in zip(region, spec.grid, spec.shape)
    )


def _padded(spec: ArraySpec, part: np.ndarray) -> np.ndarray:
    """A whole write unit: ``part`` with fill_value beyond the array's edge."""
    if part.shape == spec.grid:
        return part
    unit = np.full(spec.grid, spec.fill_value, dtype=spec.dtype)
    unit[tuple(slice(0, k) for k in part.shape)] = part
    return unit


def _is_fill(arr: np.ndarray, fill) -> bool:
    """Whether every element is ``fill`` (NaN matching NaN; a zero fill_value of a float
    array compared bit for bit, as zarr-python does: -0.0 is data where 0.0 is the fill)."""
    if arr.dtype.kind == "f" and fill == 0:
        bits = np.dtype(f"u{arr.dtype.itemsize}")
        raw, want = arr.view(bits), np.asarray(fill, arr.dtype).view(bits)
        # most units hold data: their first element already tells, without a pass over them
        if arr.size and raw[(0,) * arr.ndim] != want:
            return False
        return bool((raw == want).all())
    nan = isinstance(fill, float | np.floating | complex | np.complexfloating) and np.isnan(fill)
    first = arr[(0,) * arr.ndim] if arr.size else fill
    # most units hold data: their first element already tells, without a pass over the unit
    if not (np.isnan(first) if nan else first == fill):
        return False
    return bool(np.isnan(arr).all() if nan else (arr == fill).all())


def _bitwise_fill(spec: ArraySpec, dtype: np.dtype, write_empty: bool) -> np.ndarray | None:
    """fill_value as a 0-d array of ``dtype`` where :func:`_is_fill` amounts to comparing
    items bit for bit with it (the kernel's check): not for a NaN fill (any NaN matches),
    nor when every unit is written anyway."""
    if write_empty or dtype.kind not in "biuf":
        return None
    fill = np.asarray(spec.fill_value, dtype)
    return None if np.isnan(fill) else fill


def _batch_encodable(spec: ArraySpec, values: np.ndarray, write_empty: bool) -> bool:
    """Whether the kernel encodes ``values``' whole units in one call: unsharded, one blosc
    codec (no checksum, no transpose), values already in the stored dtype, a numeric dtype
    whose fill_value is compared bit for bit (a NaN fill matches any NaN: unit by unit)."""
    if spec.shard is not None or not spec.codec.batch_encodes(values.dtype) or \
            _kernel.lib is None:
        return False
    return write_empty or _bitwise_fill(spec, values.dtype, write_empty) is not None


def _encode_batch(spec: ArraySpec, values: np.ndarray, units: list, lo: int, hi: int,
                  encoded: list, write_empty: bool, recycle: bool) -> list[int]:
    """Encode the whole units among ``units[lo:hi]`` in one kernel call into ``encoded``
    (views of one buffer; None for units of fill_value only); return the indices left for
    :func:`_encode_unit` (edge units, or all of them when the kernel declines). ``recycle``:
    the buffer is this thread's, reused by its next call."""
    whole = [i for i in range(lo, hi) if tuple(units[i][1]) == spec.grid]
    if not whole:
        return list(range(lo, hi))
    fill = _bitwise_fill(spec, values.dtype, write_empty)
    arena = getattr(_arenas, "buf", None) if recycle else None
    done = _kernel.encode_blosc_units(values, np.array([units[i][2] for i in whole]),
                                      spec.grid, spec.codec.byte_codecs[0], fill, arena)
    if done is None:
        return list(range(lo, hi))
    arena, sizes = done
    if recycle and arena.nbytes <= 2 * ENCODE_GROUP_BYTES:
        _arenas.buf = arena
    offset = 0
    for i, size in zip(whole, sizes.tolist()):
        encoded[i] = memoryview(arena)[offset:offset + size] if size else None
        offset += size
    taken = set(whole)
    return [i for i in range(lo, hi) if i not in taken]


def _encode_unit(spec: ArraySpec, unit: np.ndarray, write_empty: bool) -> bytes | None:
    """The object of one write unit, or None when it holds only fill_value."""
    if spec.shard is None:
        if not write_empty and _is_fill(unit, spec.fill_value):
            return None
        return spec.codec.encode(unit)
    keep = None if write_empty else (lambda chunk: not _is_fill(chunk, spec.fill_value))
    return shard_encode.encode(spec, unit, keep, _bitwise_fill(spec, unit.dtype, write_empty))
