"""pytest plugin for scripts/zarr-suite.sh: counts the reads and writes that
LSIOCodecPipeline handled itself and those it handed to zarr-python's pipeline."""

import dask_lsio.zarr.pipeline as P

COUNTS = {"engine reads": 0, "engine writes": 0, "delegated reads": 0, "delegated writes": 0}
_read, _write = P.LSIOCodecPipeline.read, P.LSIOCodecPipeline.write


async def _counted_read(self, batch_info, out, drop_axes=()):
    batch = list(batch_info)
    COUNTS["engine reads" if self._plan(batch, out) else "delegated reads"] += 1
    await _read(self, batch, out, drop_axes)


async def _counted_write(self, batch_info, value, drop_axes=()):
    batch = list(batch_info)
    COUNTS["engine writes" if self._plan(batch, value) else "delegated writes"] += 1
    await _write(self, batch, value, drop_axes)


P.LSIOCodecPipeline.read = _counted_read
P.LSIOCodecPipeline.write = _counted_write


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"LSIOCodecPipeline calls: {COUNTS}")
