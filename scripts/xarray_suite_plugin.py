"""pytest plugin for scripts/xarray-suite.sh: makes sure xarray's zarr tests really run on
LSIOCodecPipeline, and counts the reads and writes it handled itself and those it handed
to zarr-python's pipeline."""

import tempfile

import numpy as np
import pytest
import zarr

import pipeline_counts
from dask_lsio.zarr import LSIOCodecPipeline

OURS = "dask_lsio.zarr.LSIOCodecPipeline"

pipeline_counts.install()


def _wrong_pipeline() -> str | None:
    path = zarr.core.config.config.get("codec_pipeline.path")
    if path != OURS:
        return f"zarr's codec_pipeline.path is {path!r}, not {OURS!r}"
    return None


def pytest_sessionstart(session):
    if wrong := _wrong_pipeline():
        raise pytest.UsageError(f"{wrong} (set ZARR_CODEC_PIPELINE__PATH={OURS})")
    with tempfile.TemporaryDirectory() as d:
        arr = zarr.create_array(zarr.storage.LocalStore(d), shape=(4,), chunks=(2,), dtype="i4")
        arr[:] = np.arange(4)
        pipeline = arr._async_array.codec_pipeline
        if not isinstance(pipeline, LSIOCodecPipeline):
            raise pytest.UsageError(f"a zarr array on a LocalStore uses {pipeline!r}, "
                                    "not LSIOCodecPipeline")
    pipeline_counts.COUNTS.update(dict.fromkeys(pipeline_counts.COUNTS, 0))  # the check's own


def pytest_runtest_setup(item):
    if wrong := _wrong_pipeline():  # then this test would not test us
        pytest.fail(f"{wrong} before this test")


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(pipeline_counts.summary())
