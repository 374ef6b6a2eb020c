"""The planner's columns against plain loops: which cells boxes meet, the distinct rows of a
grid, and the merge of a shard's byte ranges into reads (their shortcuts for regions and
sorted input included)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dask_lsio.zarr.plan import box_cells, distinct_rows
from dask_lsio.zarr.shard import coalesce


def cells_by_loop(grid, limit, starts, shape):
    """(pos, start, count, dst) of every cell every box meets, box after box, in C order."""
    rows = []
    for b, s in enumerate(np.asarray(starts)):
        lo = np.clip(s, 0, limit)
        hi = np.clip(s + np.array(shape), 0, limit)
        if not (hi > lo).all():
            continue
        first, last = lo // grid, (hi - 1) // grid
        for pos in itertools.product(*[range(f, l + 1) for f, l in zip(first, last)]):
            pos = np.array(pos)
            a_lo = np.maximum(pos * grid, lo)
            a_hi = np.minimum(pos * np.array(grid) + grid, hi)
            dst = a_lo - s
            dst[0] += b * shape[0]
            rows.append(tuple(tuple(int(v) for v in x)
                              for x in (pos, a_lo - pos * grid, a_hi - a_lo, dst)))
    return rows


@pytest.mark.parametrize("seed", range(4))
def test_box_cells_equal_a_loop(seed):
    """One box (a region: its own path) and several, inside, across and outside the array."""
    rng = np.random.default_rng(seed)
    for _ in range(400):
        ndim = int(rng.integers(1, 4))
        grid = tuple(int(x) for x in rng.integers(1, 6, ndim))
        limit = tuple(int(x) for x in rng.integers(1, 30, ndim))
        shape = tuple(int(x) for x in rng.integers(1, 12, ndim))
        starts = rng.integers(-10, 32, (int(rng.integers(1, 4)), ndim))
        got = box_cells(grid, limit, starts, shape)
        want = cells_by_loop(grid, limit, starts, shape)
        if got is None:
            assert want == []
            continue
        rows = [tuple(tuple(int(v) for v in f[i]) for f in (got.pos, got.start, got.count,
                                                            got.dst)) for i in range(len(got))]
        assert rows == want


@pytest.mark.parametrize("sort", [True, False])
def test_distinct_rows_equal_numpy_unique(sort):
    rng = np.random.default_rng(1)
    counts = (5, 3, 4)
    pos = np.stack([rng.integers(0, c, 500) for c in counts], axis=1)
    if sort:  # the sorted shortcut (a region's shards come in C order)
        pos = pos[np.lexsort(pos.T[::-1])]
    units, which = distinct_rows(pos, counts)
    want, inverse = np.unique(pos, axis=0, return_inverse=True)
    np.testing.assert_array_equal(units, want)
    np.testing.assert_array_equal(which, inverse.reshape(-1))
    one = distinct_rows(pos[:1], counts)
    np.testing.assert_array_equal(one[0], pos[:1])
    np.testing.assert_array_equal(one[1], [0])


def merged_by_loop(shards, offsets, lengths, gap, limit):
    """(shard, first byte, rows) of each read, rows sorted by (shard, offset) and merged
    while within ``gap`` of the read and its size within ``limit``."""
    rows = sorted(range(len(shards)), key=lambda i: (shards[i], offsets[i]))
    reads = []
    for i in rows:
        end = offsets[i] + lengths[i]
        last = reads[-1] if reads else None
        if last and last[0] == shards[i] and offsets[i] <= last[2] + gap and \
                end - last[1] <= limit:
            last[2] = max(last[2], end)
            last[3].append(i)
        else:
            reads.append([shards[i], offsets[i], end, [i]])
    return reads


@pytest.mark.parametrize("case", ["sorted", "shuffled", "huge offsets", "shared bytes"])
def test_coalesce_equals_a_loop(case):
    """Reads and the rows each holds equal the loop's, whether the rows come sorted (a region
    of a shard written in C order), shuffled (Morton order), with offsets too large for one
    sort key, or pointing several rows at the same bytes."""
    rng = np.random.default_rng(7)
    n = 3000
    shards = np.sort(rng.integers(0, 5, n))
    lengths = rng.integers(1, 3000, n)
    offsets = np.concatenate([np.cumsum(lengths[shards == s]) - lengths[shards == s]
                              for s in range(5)])
    if case == "huge offsets":
        offsets = offsets + (1 << 61)
    if case == "shared bytes":
        offsets[1::7], lengths[1::7] = offsets[::7][:len(offsets[1::7])], \
            lengths[::7][:len(offsets[1::7])]
    if case != "sorted":
        mix = rng.permutation(n)
        shards, offsets, lengths = shards[mix], offsets[mix], lengths[mix]
    for gap, limit in [(0, 1 << 20), (4096, 16_384), (0, 1)]:
        got = coalesce(shards, offsets, lengths, gap, limit)
        assert got.in_order == (case == "sorted")
        want = merged_by_loop(shards.tolist(), offsets.tolist(), lengths.tolist(), gap, limit)
        np.testing.assert_array_equal(got.shard, [r[0] for r in want])
        np.testing.assert_array_equal(got.start, [r[1] for r in want])
        np.testing.assert_array_equal(got.sizes, [len(r[3]) for r in want])
        # the rows of each read: the same set (rows of equal shard and offset in any order)
        bounds = np.cumsum(got.sizes)
        for rows, r in zip(np.split(got.order, bounds[:-1]), want):
            key = lambda i: (offsets[i], lengths[i])  # noqa: E731
            assert sorted(map(key, rows.tolist())) == sorted(map(key, r[3]))
        assert sorted(got.order.tolist()) == list(range(n))


@pytest.mark.parametrize("shape, chunks, shards", [
    ((12, 12), (2, 2), (4, 6)),  # a shard's chunks written in Morton order: rows unsorted
    ((40,), (3,), (12,)),        # one axis: Morton is C order, rows come sorted
])
def test_sharded_reads_with_absent_inner_chunks_equal_zarr(tmp_path, shape, chunks, shards):
    """Shards holding only some of their inner chunks, read as one region (the planner's
    shortcuts for one box) and as many boxes: what zarr-python reads."""
    import zarr

    import dask_lsio

    z = zarr.create_array(tmp_path / "a", shape=shape, chunks=chunks, shards=shards,
                          dtype="int32", fill_value=-1)
    rng = np.random.default_rng(3)
    grid = [range(0, n, c) for n, c in zip(shape, chunks)]
    for corner in itertools.product(*grid):  # about half the inner chunks written
        if rng.random() < 0.5:
            box = tuple(slice(a, a + c) for a, c in zip(corner, chunks))
            z[box] = rng.integers(0, 1000, [min(c, n - a) for a, c, n in
                                            zip(corner, chunks, shape)])
    want = z[...]
    assert (want == -1).any() and (want != -1).any()
    np.testing.assert_array_equal(dask_lsio.from_zarr(str(tmp_path / "a")).compute(), want)
    box = tuple(max(1, n // 3) for n in shape)
    starts = rng.integers(-2, np.array(shape) - 1, (20, len(shape)))
    padded = np.pad(want, max(box) + 2, constant_values=-7)  # boxes reach outside
    for s in [starts[:1], starts]:  # one box, many boxes
        got = dask_lsio.read_boxes(z, s, box, pad=-7)
        for g, at in zip(got, s):
            sel = tuple(slice(a + max(box) + 2, a + max(box) + 2 + n) for a, n in zip(at, box))
            np.testing.assert_array_equal(g, padded[sel])
