"""ZarrSource: the small array-like that ``da.from_array`` wraps.

dask's optimizer fuses later slices into the ``getter`` call, so ``__getitem__`` receives only
the region a task needs: it reads the bounding box of the key with one engine batch and
applies whatever is not a plain slice (steps, integer arrays) to that box.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dask.array.slicing import normalize_index

from ..zarr.read import read_region
from ..zarr.spec import ArraySpec


class ZarrSource:
    """A picklable, read-only view of a Zarr array that reads through the engine.

    Parameters
    ----------
    spec : ArraySpec
    """

    def __init__(self, spec: ArraySpec) -> None:
        self.spec = spec
        self.shape = spec.shape
        self.dtype = spec.dtype
        self.ndim = len(spec.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        region, rest = _bounding_region(normalize_index(key, self.shape), self.shape)
        out = read_region(self.spec, region)
        for axis, index in reversed(rest):  # one axis at a time, the last first, so the
            # axes still to index keep their positions (orthogonal indexing)
            out = out[(slice(None),) * axis + (index,)]
        return out

    def __dask_tokenize__(self) -> Any:
        return ("ZarrSource", self.spec.__dask_tokenize__())

    def __repr__(self) -> str:
        return f"ZarrSource({self.spec.root!r}, shape={self.shape}, dtype={self.dtype})"


def _bounding_region(key: tuple, shape: tuple[int, ...]):
    """The plain region to read, and per axis what to apply to it afterwards."""
    if any(k is None for k in key):
        raise IndexError("ZarrSource does not add axes (None in the index)")
    region, rest = [], []
    for axis, (k, n) in enumerate(zip(key, shape)):  # axis of the box read
        if isinstance(k, (int, np.integer)):
            region.append(slice(int(k), int(k) + 1))
            rest.append((axis, 0))
            continue
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step == 1:
                region.append(slice(start, max(start, stop)))
                continue
            k = np.arange(start, stop, step)  # steps: read the span, then pick
        arr = np.asarray(k)
        if arr.dtype == bool:
            arr = np.flatnonzero(arr)
        arr = np.where(arr < 0, arr + n, arr).astype(np.intp)
        lo = int(arr.min()) if arr.size else 0
        hi = int(arr.max()) + 1 if arr.size else 0
        region.append(slice(lo, hi))
        rest.append((axis, arr - lo))
    return tuple(region), rest
