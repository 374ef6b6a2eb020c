"""ZarrTarget: the small array-like that ``da.store`` writes into.

``da.store`` calls ``target[region] = block`` once per dask block, in the task that holds the
block; ``to_zarr`` cuts blocks on the write-unit grid (shards, or chunks when unsharded), so
each task encodes its units and writes them in one engine batch without touching what another
task writes (a unit that a region's edge splits is read, updated and written whole by the one
task that covers it). Reading back (``return_stored``) goes through the read path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dask.array.slicing import normalize_index

from ..zarr.spec import ArraySpec
from ..zarr.write import update_region
from .source import ZarrSource


class ZarrTarget(ZarrSource):
    """A picklable, writable view of a Zarr array that writes through the engine.

    Parameters
    ----------
    spec : ArraySpec
    write_empty_chunks : bool
        Store chunks that hold only fill_value (zarr-python's array setting of that name);
        when False they are not written and an object left by an earlier write is deleted.
    """

    def __init__(self, spec: ArraySpec, write_empty_chunks: bool = False) -> None:
        super().__init__(spec)
        self.write_empty_chunks = write_empty_chunks

    def __setitem__(self, key: Any, value: Any) -> None:
        region = plain_region(normalize_index(key, self.shape), self.shape)
        shape = tuple(s.stop - s.start for s in region)
        values = np.broadcast_to(np.asarray(value, dtype=self.dtype), shape)
        update_region(self.spec, region, values, write_empty_chunks=self.write_empty_chunks)

    def __dask_tokenize__(self) -> Any:
        return ("ZarrTarget", self.spec.__dask_tokenize__(), self.write_empty_chunks)

    def __repr__(self) -> str:
        return f"ZarrTarget({self.spec.root!r}, shape={self.shape}, dtype={self.dtype})"


def plain_region(key: tuple, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``key`` as slices of step 1 (what a write unit can be made of), else ValueError."""
    region = []
    for axis, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, (int, np.integer)):
            k = slice(int(k), int(k) + 1)
        if not isinstance(k, slice) or k.indices(n)[2] != 1:
            raise ValueError(f"writes take slices of step 1; got {k!r} along axis {axis}")
        start, stop, _ = k.indices(n)
        region.append(slice(start, max(start, stop)))
    return tuple(region)
