"""ArraySpec: chunk paths named in bulk as one by one."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from dask_lsio.zarr import spec as spec_module
from dask_lsio.zarr.spec import spec_from_array


@pytest.mark.parametrize("fmt,separator", [(3, "/"), (3, "."), (2, "."), (2, "/")])
@pytest.mark.parametrize("long_axes", [False, True])
def test_paths_name_cells_as_path_does(tmp_path, monkeypatch, fmt, separator, long_axes):
    if long_axes:  # axes longer than the cached names: formatted per call
        monkeypatch.setattr(spec_module, "_MAX_NAMES", 3)
    kwargs = ({"chunk_key_encoding": {"name": "default", "separator": separator}} if fmt == 3
              else {"chunk_key_encoding": {"name": "v2", "separator": separator}})
    z = zarr.create_array(tmp_path / "a", shape=(50, 7, 3), chunks=(4, 2, 3), dtype="int8",
                          zarr_format=fmt, **kwargs)
    spec = spec_from_array(str(tmp_path / "a"), z)
    cells = np.stack(np.meshgrid(range(13), range(4), range(1), indexing="ij"), -1)
    cells = cells.reshape(-1, 3)[::-1]
    assert spec.keys(cells) == [spec.key(tuple(c)) for c in cells.tolist()]
    assert spec.keys(cells[:0]) == []
