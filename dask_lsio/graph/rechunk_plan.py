"""The rechunk planner: which blocks each task copies, in one pass or through an
intermediate array, within a memory budget per task. Plain numpy; no IO.

A task copies one *block*: a region made of whole write units of the array it writes
(shards, or chunks when unsharded), so no two tasks ever write one object. It reads every
source chunk (read unit) the block touches, whole; a source chunk that several blocks touch
is read and decoded by each of them. The planner picks the block shape that decodes the
fewest source bytes (the read amplification, 1 when blocks hold whole source chunks) plus a
cost per task, among shapes that fit the budget. Where the source and target grids are far
apart (one map per time step to one timeseries per pixel), every block that fits is thin
along some axis the source chunks are wide along, and the amplification grows with the
ratio; then two passes through an intermediate array whose chunks suit both (rechunker's
algorithm: source chunks grown toward the target's, target chunks grown toward the source's,
the intermediate chunk their minimum) cost less: each byte is decoded once more but written
and read once through the intermediate array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The cost of one task in bytes of decoding (scheduling, a batch's set-up, opens): ~5 ms at
# ~1 GB/s. Keeps plans near 10^4 tasks for 10^6 chunks.
TASK_COST = 4 << 20
# The cost of writing and reading back one byte of the intermediate array, in bytes of
# decoding a source byte: uncompressed objects written and read through the page cache.
TEMP_COST = 1.0
# Shapes tried per axis (all of them when an axis has no more write units than this).
_CANDIDATES = 48
# Combinations of per-axis shapes compared at once.
_COMBINATIONS = 1 << 20


@dataclass(frozen=True)
class Grid:
    """An array as the planner sees it.

    Attributes
    ----------
    shape : tuple of int
    itemsize : int
    read : tuple of int
        The unit decoded whole by a reader (a chunk; an inner chunk of a shard).
    """

    shape: tuple[int, ...]
    itemsize: int
    read: tuple[int, ...]


@dataclass(frozen=True)
class Blocks:
    """The blocks of one pass: ``shape`` (whole write units of the array written, clipped at
    the edge), how many, and the source bytes decoded per array byte (>= 1)."""

    shape: tuple[int, ...]
    count: int
    amplification: float

    def cost(self, nbytes: int) -> float:
        return self.amplification * nbytes + self.count * TASK_COST


@dataclass(frozen=True)
class Route:
    """How an array is rechunked: one pass (``middle`` None), or two through an intermediate
    array of chunks ``middle``."""

    passes: tuple[Blocks, ...]
    middle: tuple[int, ...] | None

    def cost(self, nbytes: int) -> float:
        return sum(p.cost(nbytes) for p in self.passes) + (TEMP_COST * nbytes if self.middle
                                                           else 0.0)


def blocks(shape: tuple[int, ...], itemsize: int, read: tuple[int, ...],
           write: tuple[int, ...], limit: int) -> Blocks:
    """The cheapest blocks of whole ``write`` units of at most ``limit`` bytes, reading
    ``read`` units.

    Raises ValueError when not even one write unit fits (callers check that first).
    """
    if not shape:
        return Blocks((), 1, 1.0)
    sizes, decoded, counts = [], [], []
    for n, r, w in zip(shape, read, write):
        s = _sizes(n, r, w)
        sizes.append(s)
        decoded.append(np.array([_decoded(n, x, r) for x in s.tolist()], np.float64))
        counts.append(-(-n // s))
    nbytes = math.prod(shape) * itemsize
    while math.prod(len(s) for s in sizes) > _COMBINATIONS:  # many axes: fewer shapes each
        a = max(range(len(sizes)), key=lambda i: len(sizes[i]))
        keep = np.unique(np.r_[np.linspace(0, len(sizes[a]) - 1, len(sizes[a]) // 2)
                               .round().astype(int)])
        sizes[a], decoded[a], counts[a] = sizes[a][keep], decoded[a][keep], counts[a][keep]
    # every combination at once: per-axis factors multiplied by broadcasting
    vol = _outer([s.astype(np.float64) for s in sizes]) * itemsize
    amp = _outer(decoded) * itemsize / nbytes
    count = _outer([c.astype(np.float64) for c in counts])
    cost = amp * nbytes + count * TASK_COST
    cost[vol > limit] = np.inf
    best = np.unravel_index(int(np.argmin(cost)), cost.shape)
    if not np.isfinite(cost[best]):
        raise ValueError(f"no block of whole units {write} fits in {limit} bytes")
    shape_best = tuple(int(sizes[a][i]) for a, i in enumerate(best))
    return Blocks(shape_best, int(count[best]), max(1.0, float(amp[best])))


def route(grid_in: Grid, target: tuple[int, ...], limit: int, middle_limit: int) -> Route:
    """The cheaper of one pass from ``grid_in`` to write units ``target`` (blocks of at most
    ``limit`` bytes) and two passes through an intermediate array (unsharded, its chunk of
    at most ``middle_limit`` bytes is both passes' unit)."""
    nbytes = math.prod(grid_in.shape) * grid_in.itemsize
    one = Route((blocks(grid_in.shape, grid_in.itemsize, grid_in.read, target, limit),), None)
    if one.passes[0].amplification <= 1.0 or not grid_in.shape:
        return one
    middle = intermediate(grid_in, target, limit, middle_limit)
    if middle is None:
        return one
    first = blocks(grid_in.shape, grid_in.itemsize, grid_in.read, middle, limit)
    second = blocks(grid_in.shape, grid_in.itemsize, middle, target, limit)
    two = Route((first, second), middle)
    return two if two.cost(nbytes) < one.cost(nbytes) else one


def intermediate(grid_in: Grid, target: tuple[int, ...], limit: int,
                 middle_limit: int) -> tuple[int, ...] | None:
    """Chunks of an intermediate array: the source's read units grown toward the target's
    write units, and those grown toward the source's, within ``limit``; their minimum
    (halved along its longest axis until within ``middle_limit``). None when that is the
    source's or the target's own grid (nothing to gain)."""
    items = max(1, limit // grid_in.itemsize)
    reads = _grown(grid_in.read, target, grid_in.shape, items)
    writes = _grown(target, grid_in.read, grid_in.shape, items)
    middle = [min(a, b) for a, b in zip(reads, writes)]
    while math.prod(middle) * grid_in.itemsize > middle_limit and max(middle) > 1:
        a = middle.index(max(middle))
        middle[a] = -(-middle[a] // 2)
    middle = tuple(middle)
    if middle in (tuple(min(r, n) for r, n in zip(grid_in.read, grid_in.shape)),
                  tuple(min(t, n) for t, n in zip(target, grid_in.shape))):
        return None
    return middle


def unit_bytes(unit: tuple[int, ...], shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of one unit (clipped to the array: a unit larger than the array is the array)."""
    return math.prod(min(u, n) for u, n in zip(unit, shape)) * itemsize


def _grown(unit: tuple[int, ...], toward: tuple[int, ...], shape: tuple[int, ...],
           items: int) -> tuple[int, ...]:
    """``unit`` grown by doubling along the axes where ``toward`` is larger, evenly (the
    axis furthest from its goal first), up to ``items`` elements."""
    out = [min(u, n) for u, n in zip(unit, shape)]
    goal = [min(max(t, u), n) for u, t, n in zip(unit, toward, shape)]
    while True:
        vol = math.prod(out)
        best, best_ratio = None, 1.0
        for a in range(len(out)):
            if out[a] >= goal[a]:
                continue
            # doubling: extents stay divisors or multiples of the other grid's (powers of
            # two apart), so that blocks of both passes can hold whole units
            step = min(goal[a], out[a] * 2)
            if vol // out[a] * step > items:
                continue
            ratio = out[a] / goal[a]
            if best is None or ratio < best_ratio:
                best, best_ratio = (a, step), ratio
        if best is None:
            return tuple(out)
        out[best[0]] = best[1]


def _sizes(n: int, read: int, write: int) -> np.ndarray:
    """Block extents tried along an axis of ``n``: multiples of ``write`` (all of them, or a
    geometric selection plus the multiples of the read unit), and the whole axis."""
    units = -(-n // write)
    if units <= _CANDIDATES:
        k = np.arange(1, units + 1)
    else:
        geo = np.unique(np.geomspace(1, units, _CANDIDATES).round().astype(np.int64))
        step = math.lcm(read, write) // write
        aligned = step * np.unique(np.geomspace(1, max(1, units // step), _CANDIDATES // 2)
                                   .round().astype(np.int64))
        k = np.unique(np.r_[geo, aligned, units])
    return np.unique(np.minimum(k * write, n))


def _decoded(n: int, size: int, read: int) -> int:
    """Elements of read units decoded along an axis of ``n`` cut into blocks of ``size``:
    each block decodes every unit it touches, whole (the last one clipped at the edge)."""
    lo = np.arange(0, n, size, dtype=np.int64)
    hi = np.minimum(lo + size, n)
    first, last = lo // read, (hi - 1) // read
    whole = (last - first + 1) * read
    # a read unit at the array's edge holds only what is inside it
    edge = (last + 1) * read > n
    return int((whole - np.where(edge, (last + 1) * read - n, 0)).sum())


def _outer(factors: list[np.ndarray]) -> np.ndarray:
    """The outer product of per-axis arrays: an array with an axis per factor."""
    out = np.ones((), np.float64)
    for a, f in enumerate(factors):
        shape = [1] * len(factors)
        shape[a] = len(f)
        out = out * f.reshape(shape)
    return out
