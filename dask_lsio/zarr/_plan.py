"""Plans: which objects or byte ranges a region of a Zarr array needs, and where each chunk's
values go in the output, as flat numpy columns (no Python object per chunk but its path).

A plan (:class:`Jobs`) is executed either by the C kernel inside an io_uring batch
(:mod:`._kernel`) or by numcodecs on the decode threads (:mod:`.read`); both read the same
columns, so both place the same values.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .spec import ArraySpec

EMPTY = np.uint64(2**64 - 1)  # shard index entry of an absent inner chunk


@dataclass
class Jobs:
    """The reads of a region, and per chunk ("job") where it lies and where it goes.

    Jobs are grouped by read: read ``i`` holds jobs ``job_at[i]`` to ``job_at[i+1] - 1``.
    ``src_off``/``src_len`` locate a job's bytes in its read's data (-1: all of it);
    ``start``/``count`` (jobs, ndim) are the part of the chunk placed and ``dst`` (jobs,
    ndim) where that part starts in the output.
    """

    paths: list[str]
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
    key: Callable[[int, int], str] | None = None  # (job, read) -> key; default the read's name
    names: list[str] | None = None  # per read, its object's path where ``paths`` differ

    def name(self, read: int) -> str:
        """The path of the object a read reads (``paths`` may name a held-open file)."""
        return self.names[read] if self.names is not None else self.paths[read]

    def job_key(self, job: int, read: int) -> str:
        """The name of a job's chunk in error messages."""
        return self.key(job, read) if self.key else self.name(read)


def cell_boxes(region: tuple[slice, ...], grid: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The cells of ``grid`` that overlap ``region``, in C order, as (cells, ndim) arrays:
    grid position, where the overlap starts in the cell, its extent, and where it starts in
    the region."""
    axes = []
    for s, g in zip(region, grid):
        pos = np.arange(s.start // g, (s.stop - 1) // g + 1, dtype=np.int64)
        lo = np.maximum(pos * g, s.start)
        hi = np.minimum(pos * g + g, s.stop)
        axes.append((pos, lo - pos * g, hi - lo, lo - s.start))
    if not axes:  # a 0-d array: one cell
        return tuple(np.zeros((1, 0), np.int64) for _ in range(4))
    index = np.indices([len(a[0]) for a in axes]).reshape(len(axes), -1)
    return tuple(
        np.stack([axes[d][k][index[d]] for d in range(len(axes))], axis=1) for k in range(4)
    )


def chunk_jobs(spec: ArraySpec, region: tuple[slice, ...]) -> Jobs:
    """Unsharded arrays: one read of a whole chunk object per chunk."""
    pos, start, count, dst = cell_boxes(region, spec.grid)
    n = len(pos)
    return Jobs(
        spec.paths(pos),
        np.zeros(n, np.int64), np.full(n, -1, np.int64), np.arange(n + 1, dtype=np.int64),
        np.zeros(n, np.int64), np.full(n, -1, np.int64), start, count, dst,
        hint=spec.codec.nbytes + 4096,  # compressors rarely expand more than their header
    )


def shard_jobs(
    spec: ArraySpec, region: tuple[slice, ...], paths: list, index: list, gap: int,
    limit: int, names: list[str] | None = None,
) -> tuple[Jobs | None, tuple[np.ndarray, np.ndarray]]:
    """Sharded arrays: the inner chunks ``region`` needs, found in the shard ``index``es
    (one per path, None for an absent shard), read as coalesced byte ranges from ``paths``
    (the shards' ``names``, or files held open for them).

    Returns the jobs (None when every chunk is absent) and the boxes ``(dst, count)`` of the
    absent chunks, which hold fill_value.
    """
    pos, start, count, dst = cell_boxes(region, spec.shard.inner)
    shard_no, entry = _index_entries(spec, region, pos, index)
    return ranged_jobs(paths, shard_no, entry, (start, count, dst), gap, limit, names)


def ranged_jobs(
    paths: list, shard_no: np.ndarray, entry: np.ndarray, boxes: tuple, gap: int,
    limit: int, names: list[str] | None = None,
) -> tuple[Jobs | None, tuple[np.ndarray, np.ndarray]]:
    """Jobs placing ``boxes`` (start, count, dst rows) of inner chunks found at ``entry``
    (offset, nbytes per row; EMPTY: absent) in the shards ``paths[shard_no]``, read as
    coalesced byte ranges (``names``: the shards' paths, where ``paths`` are files held open
    for them). Rows of the same chunk (several boxes need it) become adjacent jobs of one
    read, so it is decoded once.

    Returns the jobs (None when every chunk is absent) and the boxes ``(dst, count)`` of the
    absent chunks, which hold fill_value.
    """
    start, count, dst = boxes
    absent = entry[:, 0] == EMPTY
    keep = np.flatnonzero(~absent)
    if not len(keep):
        return None, (dst[absent], count[absent])
    offsets, lengths = entry[keep, 0].astype(np.int64), entry[keep, 1].astype(np.int64)
    ranges = coalesce(shard_no[keep].tolist(), offsets.tolist(), lengths.tolist(), gap, limit)
    order = np.fromiter(itertools.chain.from_iterable(m for _, _, m in ranges), np.int64,
                        count=len(keep))
    sizes = np.array([len(m) for _, _, m in ranges], np.int64)
    starts = np.array([a for _, a, _ in ranges], np.int64)
    ends = np.maximum.reduceat((offsets + lengths)[order], np.cumsum(sizes) - sizes)
    offsets, lengths, rows = offsets[order], lengths[order], keep[order]
    read_paths = [paths[s] for s, _, _ in ranges]
    read_names = read_paths if names is None else [names[s] for s, _, _ in ranges]
    jobs = Jobs(
        read_paths, starts, ends - starts, np.concatenate([[0], np.cumsum(sizes)]),
        offsets - np.repeat(starts, sizes), lengths, start[rows], count[rows], dst[rows],
        missing_is_fill=False,  # the shard was there for its index: now gone is an error
        key=lambda j, r: f"{read_names[r]} bytes {offsets[j]}-{offsets[j] + lengths[j]}",
        names=None if names is None else read_names,
    )
    return jobs, (dst[absent], count[absent])


def _index_entries(spec: ArraySpec, region, pos: np.ndarray, index: list):
    """Each inner chunk's shard (its number among the region's shards, C order) and its
    index entry (offset, nbytes); absent shards give EMPTY entries."""
    per_shard = spec.shard.per_shard(spec.grid)
    table = np.full((len(index), *per_shard, 2), EMPTY, dtype=np.uint64)
    for s, idx in enumerate(index):
        if idx is not None:
            table[s] = idx
    if not pos.size:  # 0-d
        return np.zeros(len(pos), np.int64), table.reshape(-1, 2)
    first = [r.start // g for r, g in zip(region, spec.grid)]
    span = [(r.stop - 1) // g + 1 - f for r, g, f in zip(region, spec.grid, first)]
    shard_no = np.ravel_multi_index(tuple((pos // per_shard - first).T), span)
    return shard_no, table[(shard_no, *(pos % per_shard).T)]


def coalesce(
    shards: list[int], offsets: list[int], lengths: list[int], gap: int, limit: int
) -> list[tuple[int, int, list[int]]]:
    """Merge byte ranges of the same shard that lie at most ``gap`` bytes apart, into reads
    of at most ``limit`` bytes (unless one chunk is larger).

    Returns ``(shard, start, members)`` per merged range, ``members`` indexing the inputs.
    Reading a little between chunks costs less than another request; the limit keeps each
    read small enough that its chunks are decoded while still in the CPU cache (whole 15 MB
    shards measured 18% slower than 1 MiB reads on a warm scan).
    """
    order = sorted(range(len(shards)), key=lambda j: (shards[j], offsets[j]))
    merged: list[tuple[int, int, list[int]]] = []
    end = -1
    for j in order:
        fits = offsets[j] + lengths[j] - (merged[-1][1] if merged else 0) <= limit
        if merged and merged[-1][0] == shards[j] and offsets[j] <= end + gap and fits:
            merged[-1][2].append(j)
            end = max(end, offsets[j] + lengths[j])
        else:
            merged.append((shards[j], offsets[j], [j]))
            end = offsets[j] + lengths[j]
    return merged
