"""Counts of the reads and writes LSIOCodecPipeline handles itself ("engine") and those it
hands to zarr-python's pipeline ("delegated"), for the suite plugins of scripts/.

A read counts as the engine's when ``self._plan`` accepts its batch (exactly what ``read``
does); a write when it reaches ``update_region`` (a planned write can still go to zarr-python:
selections with dropped axes or out of order, values that do not fill the box).
"""

import dask_lsio.pipeline.codec_pipeline as P

COUNTS = {"engine reads": 0, "delegated reads": 0, "engine writes": 0, "delegated writes": 0}


async def _counted_read(self, batch_info, out, drop_axes=()):
    batch = list(batch_info)
    COUNTS["engine reads" if self._plan(batch, out) else "delegated reads"] += 1
    await _counted_read.wrapped(self, batch, out, drop_axes)


async def _counted_write(self, batch_info, value, drop_axes=()):
    before = COUNTS["engine writes"]
    await _counted_write.wrapped(self, batch_info, value, drop_axes)
    if COUNTS["engine writes"] == before:
        COUNTS["delegated writes"] += 1


def _counted_update_region(*args, **kwargs):
    COUNTS["engine writes"] += 1
    return _counted_update_region.wrapped(*args, **kwargs)


def install() -> None:
    """Wrap LSIOCodecPipeline.read and .write (once, however often it is called)."""
    cls = P.LSIOCodecPipeline
    if cls.read is not _counted_read:
        _counted_read.wrapped, cls.read = cls.read, _counted_read
    if cls.write is not _counted_write:
        _counted_write.wrapped, cls.write = cls.write, _counted_write
    if P.update_region is not _counted_update_region:
        _counted_update_region.wrapped, P.update_region = P.update_region, _counted_update_region


def summary() -> str:
    return f"LSIOCodecPipeline calls: {COUNTS}"
