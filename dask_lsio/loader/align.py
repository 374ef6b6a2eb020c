"""Map crop locations between sources through their coordinates.

A location is sampled in the first source's index space (the crop's first index per axis).
Each other source's crop is centred on the same coordinate values: along a dimension both
sources index with coordinates, the centre element of the first source's crop is looked up
in the other's coordinates (datetimes: the last step at or before it, as a forecast issued
before the observation; else the nearest value), within one coordinate step; along a shared
dimension without coordinates the index itself is shared; a dimension only the other source
has is sampled uniformly. Locations that map outside a coordinate's range are marked invalid
(start ``OUTSIDE``), so the sampler draws again (or the crop is padded, as the user chose).
"""

from __future__ import annotations

import numpy as np

from .sources import Source

OUTSIDE = np.iinfo(np.int64).min // 4  # a start no array contains (and no overflow when shifted)


def align(ref: Source, other: Source, starts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crop starts in ``other`` (n, other's ndim) for crops at ``starts`` (n, ref's ndim)."""
    n = len(starts)
    out = np.empty((n, len(other.dims)), np.int64)
    for a, (dim, size, length) in enumerate(zip(other.dims, other.crop, other.shape)):
        if dim not in ref.dims:
            out[:, a] = rng.integers(0, max(length - size, 0), n, endpoint=True)
            continue
        r = ref.dims.index(dim)
        centre = starts[:, r] + ref.crop[r] // 2
        if dim in ref.coords and dim in other.coords:
            values = ref.coords[dim][np.clip(centre, 0, len(ref.coords[dim]) - 1)]
            index = lookup(other.coords[dim], values)
            index[(centre < 0) | (centre >= len(ref.coords[dim]))] = OUTSIDE
            centre = index
        out[:, a] = np.where(centre == OUTSIDE, OUTSIDE, centre - size // 2)
    return out


def lookup(coords: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in monotonic ``coords``: the last at or before it for datetimes,
    else the nearest; ``OUTSIDE`` when it lies more than one coordinate step away."""
    coords = np.asarray(coords)
    n = len(coords)
    if n == 0:
        return np.full(len(values), OUTSIDE, np.int64)
    descending = n > 1 and coords[0] > coords[-1]
    c = coords[::-1] if descending else coords
    step = np.abs(np.diff(c)).min() if n > 1 else None
    if np.issubdtype(c.dtype, np.datetime64):
        index = np.searchsorted(c, values, side="right") - 1
        ok = index >= 0
        index = np.clip(index, 0, n - 1)
        ok &= (values - c[index] < step) if step is not None else values == c[index]
    else:
        right = np.clip(np.searchsorted(c, values), 1, max(n - 1, 1))
        left = right - 1
        index = np.where(np.abs(values - c[left]) <= np.abs(c[np.minimum(right, n - 1)] - values),
                         left, np.minimum(right, n - 1))
        gap = np.abs(values - c[index])
        ok = gap <= step if step is not None else gap == 0
    index = (n - 1 - index) if descending else index
    return np.where(ok, index, OUTSIDE).astype(np.int64)


def inside(source: Source, starts: np.ndarray) -> np.ndarray:
    """Whether each crop at ``starts`` lies wholly inside ``source``."""
    shape = np.array(source.shape, np.int64)
    return ((starts >= 0) & (starts + np.array(source.crop, np.int64) <= shape)).all(axis=1)
