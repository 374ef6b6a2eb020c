"""The examples run as they are, so they never rot (small samples)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name, expect", [
    ("laptop.py", "read and reduced"),
    ("cluster.py", "mean of the anomaly"),
    ("convert.py", "checked against zarr-python"),
    ("training.py", "streamed 32 steps"),
])
def test_example_runs(name, expect):
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--steps", "32"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expect in done.stdout


def readme_block(after: str) -> str:
    """The first ```python block of README.md after the heading ``after``."""
    text = (EXAMPLES.parent / "README.md").read_text()
    rest = text[text.index(after):]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start:rest.index("```", start)]


def test_readme_cluster_snippet_runs_as_a_script(tmp_path):
    """Saved as a file and run, as a user would (worker processes import the file)."""
    import dask.array as da
    import dask_lsio

    x = da.random.default_rng(0).random((8, 32, 32), chunks=(4, 32, 32)).astype("float32")
    dask_lsio.to_zarr(x, tmp_path / "weather.zarr", component="t2m", chunks=(4, 16, 16))
    script = tmp_path / "snippet.py"
    script.write_text(readme_block("## Dask clusters"))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import numpy as np
    import zarr

    got = zarr.open_array(tmp_path / "anomaly.zarr")[...]
    np.testing.assert_allclose(got, x.compute() - x.compute().mean(axis=0), atol=1e-6)
