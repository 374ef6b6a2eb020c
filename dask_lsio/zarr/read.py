"""Read a region of a Zarr array: plan the objects it needs, fetch them in one engine batch,
decode on threads as completions arrive, copy each chunk once into the output array."""

from __future__ import annotations

import itertools
from typing import Any

import crc32c
import numpy as np

from ..errors import ChunkDecodeError, LSIOError
from ..io import Engine, get_engine
from . import _decode
from .spec import ArraySpec

EMPTY = np.uint64(2**64 - 1)


def read_region(spec: ArraySpec, region: tuple[slice, ...], engine: Engine | None = None) -> np.ndarray:
    """The values of ``spec``'s array in ``region`` (slices with step 1, within bounds)."""
    engine = engine or get_engine()
    out = np.empty(tuple(s.stop - s.start for s in region), dtype=spec.dtype)
    if out.size == 0:
        return out
    if spec.shard is None:
        _read_chunks(spec, region, out, engine)
    else:
        _read_shards(spec, region, out, engine)
    return out


def grid_cells(region: tuple[slice, ...], grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Grid positions of the cells (chunks or shards) that overlap ``region``."""
    ranges = [range(s.start // g, (s.stop - 1) // g + 1) for s, g in zip(region, grid)]
    return list(itertools.product(*ranges))


def _overlap(origin, shape, region) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where a cell at ``origin`` of ``shape`` meets ``region``: (in the cell, in the output)."""
    src, dst = [], []
    for o, n, s in zip(origin, shape, region):
        lo, hi = max(o, s.start), min(o + n, s.stop)
        src.append(slice(lo - o, hi - o))
        dst.append(slice(lo - s.start, hi - s.start))
    return tuple(src), tuple(dst)


def _fill(spec: ArraySpec, out: np.ndarray, origin, shape, region) -> None:
    out[_overlap(origin, shape, region)[1]] = spec.fill_value


def _reraise(spec: ArraySpec, path: str, exc: BaseException) -> None:
    raise LSIOError(f"cannot read chunk object {path!r} of array {spec.root!r}: {exc}") from exc


def _read_chunks(spec: ArraySpec, region, out: np.ndarray, engine: Engine) -> None:
    cells = grid_cells(region, spec.grid)
    paths = [spec.path(c) for c in cells]
    codec = spec.codec

    def work(i: int, buf: Any) -> None:
        origin = tuple(c * g for c, g in zip(cells[i], spec.grid))
        if isinstance(buf, FileNotFoundError):  # a missing chunk is all fill_value
            _fill(spec, out, origin, spec.grid, region)
            return
        if isinstance(buf, BaseException):
            _reraise(spec, paths[i], buf)
        chunk = codec.decode(buf, paths[i])
        src, dst = _overlap(origin, spec.grid, region)
        out[dst] = chunk[src]

    hint = codec.nbytes + 4096  # compressors rarely expand more than their header
    _decode.run(engine.read_ranges(paths, errors="return", size_hint=hint), work)


def _read_shards(spec: ArraySpec, region, out: np.ndarray, engine: Engine) -> None:
    layout = spec.shard
    shards = grid_cells(region, spec.grid)
    paths = [spec.path(c) for c in shards]
    index = _read_indexes(spec, paths, engine)
    # the inner chunks the region needs, with their byte ranges
    jobs: list[tuple[int, tuple[int, ...]]] = []  # (shard number, inner grid position)
    offsets, lengths = [], []
    for s, (shard, idx) in enumerate(zip(shards, index)):
        origin = tuple(c * g for c, g in zip(shard, spec.grid))
        local = tuple(slice(max(r.start, o) - o, min(r.stop, o + g) - o)
                      for r, o, g in zip(region, origin, spec.grid))
        for inner in grid_cells(local, layout.inner):
            inner_origin = tuple(o + i * n for o, i, n in zip(origin, inner, layout.inner))
            entry = None if idx is None else idx[inner]
            if entry is None or entry[0] == EMPTY:  # absent shard or chunk: fill_value
                _fill(spec, out, inner_origin, layout.inner, region)
                continue
            jobs.append((s, inner_origin))
            offsets.append(int(entry[0]))
            lengths.append(int(entry[1]))
    job_paths = [paths[s] for s, _ in jobs]
    codec = spec.codec

    def work(i: int, buf: Any) -> None:
        key = f"{job_paths[i]} bytes {offsets[i]}-{offsets[i] + lengths[i]}"
        if isinstance(buf, BaseException):
            _reraise(spec, job_paths[i], buf)
        if len(buf) != lengths[i]:
            raise ChunkDecodeError(key, codec.names, f"truncated: {len(buf)} of {lengths[i]} bytes")
        chunk = codec.decode(buf, key)
        src, dst = _overlap(jobs[i][1], layout.inner, region)
        out[dst] = chunk[src]

    stream = engine.read_ranges(job_paths, offsets, lengths, errors="return")
    _decode.run(stream, work)


def _read_indexes(spec: ArraySpec, paths: list[str], engine: Engine) -> list[np.ndarray | None]:
    """Each shard's index as an array of (offset, nbytes) pairs; None for a missing shard."""
    layout = spec.shard
    per_shard = layout.per_shard(spec.grid)
    n = layout.index_nbytes(spec.grid)
    offsets = np.full(len(paths), -n if layout.index_at_end else 0, dtype=np.int64)
    lengths = np.full(len(paths), -1 if layout.index_at_end else n, dtype=np.int64)
    out: list[np.ndarray | None] = [None] * len(paths)
    for i, buf in engine.read_ranges(paths, offsets, lengths, errors="return"):
        if isinstance(buf, FileNotFoundError):
            continue
        if isinstance(buf, BaseException):
            _reraise(spec, paths[i], buf)
        out[i] = _parse_index(buf, n, layout.index_crc32c, per_shard, paths[i])
    return out


def _parse_index(buf: Any, n: int, crc: bool, per_shard, path: str) -> np.ndarray:
    data = memoryview(buf).cast("B")
    what = "sharding_indexed index"
    if len(data) != n:
        raise ChunkDecodeError(path, what, f"index of {len(data)} bytes, expected {n}")
    if crc:
        want = int.from_bytes(data[-4:], "little")
        if crc32c.crc32c(data[:-4]) != want:
            raise ChunkDecodeError(path, what, "index crc32c mismatch")
        data = data[:-4]
    return np.frombuffer(data, dtype="<u8").reshape(per_shard + (2,)).copy()

