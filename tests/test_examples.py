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
