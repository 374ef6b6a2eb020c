"""``dask_lsio.rechunk``: copy Zarr arrays into new chunks (and shards, codecs, format) with
bounded memory, in one pass or two, resumable; ``rechunker.rechunk``'s shape.

The planner (:mod:`.rechunk_plan`) sizes blocks; each task (:mod:`.rechunk_tasks`) reads
a block in batches decoded by the kernel, regroups it in one buffer and writes its whole
target units; the arrays and their metadata come from :mod:`.rechunk_arrays`; the plan as
a dask collection is :mod:`.rechunked`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import dask
import zarr
from dask.utils import format_bytes, parse_bytes

from .. import config
from ..errors import UnsupportedCodecError
from ..store import Store
from ..zarr.spec import ArraySpec, spec_from_array
from . import rechunk_arrays as arrays
from .clients import IN_MEMORY_ON_CLUSTER, active_client, out_of_reach
from .rechunk_plan import Grid, Route, route, unit_bytes
from .rechunk_tasks import CopyJob, cells_within, consumed_keys, done_blocks
from .rechunked import ArrayPlan, RechunkStage, Rechunked

# What a process running rechunk tasks may grow by beyond max_mem, above its RSS once
# dask_lsio, zarr and dask are imported (~110 MiB): the IO engine's rings and recycled
# buffers of other sizes, decode scratch, the interpreter's heap. Measured 10-30 MiB
# (tests/test_rechunk.py, benchmarks/bench_rechunk.py; docs/guide/rechunk.rst); with margin.
MEMORY_OVERHEAD = 128 << 20
TEMP_SUFFIX = ".rechunk-temp"


def rechunk(source: Any, target_chunks: Any, target: Any, max_mem: int | str,
            temp: Any = None, *, shards: Any = None, compressors: Any = None,
            filters: Any = None, serializer: Any = None, zarr_format: int | None = None,
            overwrite: bool = False, storage_options: Mapping[str, Any] | None = None,
            target_options: Mapping[str, Any] | None = None) -> Rechunked:
    """Plan a copy of ``source`` into ``target`` with new chunks, using at most ``max_mem``
    bytes per worker process; run it with ``.execute()``.

    The target's metadata (and groups, attributes) is written now; the data when the plan
    runs. Each task reads a block of whole target units, regroups it in one buffer and
    writes those units whole (each atomically): no two tasks write one object. Where one
    pass would decode each source chunk many times, two passes go through an intermediate
    array in ``temp``. A rerun with the same arguments after an interrupted run skips the
    blocks already written.

    Parameters
    ----------
    source : str, os.PathLike, zarr.Array, zarr.Group or xarray.Dataset
        A path or URL of an array or group (any store dask-lsio reads: local, memory,
        ``s3://``, ``gs://``, ``az://``, ``http(s)://``), a zarr array or group, or a dataset
        opened with :func:`dask_lsio.open_zarr` (its variables are copied, with the group's
        coordinates, attributes and CF encodings, which are Zarr attributes).
    target_chunks : tuple, int or dict
        Chunks of the target: a tuple (-1 or None: the whole axis), a ``{dim: size}`` dict
        (dimension names: v3 ``dimension_names`` or xarray's ``_ARRAY_DIMENSIONS``), or for
        groups a dict by array path of those and/or dims. Axes and arrays not named keep
        the source's chunks.
    target : str, os.PathLike or zarr store
        Where the new array (or group) goes.
    max_mem : int or str
        Bytes (``"1GB"``, ``"256MiB"``) that the rechunk's buffers may use in each worker
        process, shared by its threads; the process needs ``MEMORY_OVERHEAD`` more.
    temp : str, os.PathLike or zarr store, optional
        Where the intermediate arrays of two-pass plans go (default: ``target`` with
        ``.rechunk-temp`` appended); removed when the run completes.
    shards : tuple or dict, optional
        Shard shape of the target (Zarr v3), in the forms of ``target_chunks``; default none.
    compressors, filters, serializer : optional
        The target's codecs, as :func:`zarr.create_array` takes them; compressors also by
        name: ``"zstd"``, ``"lz4"`` (blosc), ``"blosc-zstd"``, ``"gzip"``, ``"none"``.
        Default: the source's (zarr's defaults when the format changes).
    zarr_format : {2, 3}, optional
        Default: the source's.
    overwrite : bool
        Replace what is at ``target``. Without it a target with other metadata raises
        ``zarr.errors.ContainsArrayError``, and one with the same metadata is resumed.
    storage_options : dict, optional
        Options of the object stores given by URL (source, target, temp).
    target_options : dict, optional
        More :func:`zarr.create_array` arguments (``attributes``, ``dimension_names``, ...).

    Returns
    -------
    Rechunked
    """
    max_mem = int(parse_bytes(max_mem) if isinstance(max_mem, str) else max_mem)
    if max_mem <= 0:
        raise ValueError(f"max_mem must be positive; got {max_mem}")
    src = arrays.open_source(source, storage_options)
    out = arrays.opened(target, storage_options)
    if out_of_reach(src.store) or out_of_reach(out):  # dask's error, as dask raises it
        raise RuntimeError(IN_MEMORY_ON_CLUSTER)
    arrays.check_names(target_chunks, src, "target_chunks")
    arrays.check_names(shards, src, "shards")
    threads = _threads()
    asked = []
    for path, arr in src.arrays.items():
        chunks, shard = _layout(arr, path, target_chunks, shards, zarr_format)
        options = arrays.create_options(arr, chunks, shard, compressors, filters, serializer,
                                        zarr_format, target_options)
        unit = shard or chunks
        need = threads * _smallest_task(arr, unit)
        if need > max_mem:
            raise ValueError(
                f"max_mem={format_bytes(max_mem)} is too small to rechunk "
                f"{src.store.url if not path else path!r} into units of {unit}: each of "
                f"{threads} threads needs a unit, its encoded copy and a source chunk read "
                f"and decoded; the smallest that works is {format_bytes(need)} ({need} bytes)")
        # what dask-lsio cannot copy itself is refused before anything is written
        source = _spec(src.store.child(path) if path else src.store, arr)
        probe = zarr.create_array(store=zarr.storage.MemoryStore(), **options)
        _spec(out.child(path) if path else out, probe)
        asked.append((path, arr, options, source))
    if src.group is not None:
        arrays.create_groups(out, src, zarr_format, overwrite)
    # one budget per process for all the arrays' tasks
    gate = hashlib.sha256(json.dumps([src.store.description, out.description, max_mem,
                                      list(src.arrays)], default=str).encode()).hexdigest()
    run = _Run(max_mem // threads, max_mem, f"rechunk-{gate[:32]}", temp, target,
               storage_options, config.get("rechunk.temp-compressor"),
               sum(arr.nbytes for _, arr, _, _ in asked),
               bool(config.get("rechunk.readahead")), _malloc_thresholds())
    jobs = []
    for path, arr, options, source in asked:
        made, resumed = arrays.create_target(out, path, options, overwrite)
        jobs.append(_plan_array(source, out, path, arr, made, resumed, run))
    return Rechunked(src, out, jobs, max_mem, threads)


def _layout(arr: zarr.Array, path: str, target_chunks: Any, shards: Any,
            zarr_format: int | None) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """The target's chunks and shards for ``arr``: as asked; an array (and axes) not named
    keeps the source's (its shards too, where the target format has them)."""
    named = arrays.shape_for(arr, path, target_chunks, "target_chunks", None) is not None
    chunks = arrays.shape_for(arr, path, target_chunks, "target_chunks",
                              arrays.read_chunks(arr))
    if arrays.shape_for(arr, path, shards, "shards", None) is not None:
        return chunks, arrays.shape_for(arr, path, shards, "shards", chunks)
    keep = not named and (zarr_format or arr.metadata.zarr_format) == 3
    return chunks, (getattr(arr, "shards", None) if keep else None)


@dataclass(frozen=True)
class _Run:
    """What every array of one rechunk shares: the budget of a task and of a process (and
    its name), where intermediate arrays go."""

    task_bytes: int
    max_mem: int
    gate: str
    temp: Any
    target: Any
    storage_options: Any
    temp_compressor: Any  # lsio.rechunk.temp-compressor
    copy_bytes: int  # of all the arrays copied (decoded)
    readahead: bool  # lsio.rechunk.readahead
    malloc: tuple[int, int] | None  # lsio.rechunk.mmap-threshold, trim-threshold


def _smallest_task(arr: zarr.Array, unit: tuple[int, ...]) -> int:
    """Bytes a task needs at least: a target unit, its encoded copy, a source chunk's read
    buffer and its decoded copy."""
    item = arr.dtype.itemsize
    return 2 * unit_bytes(unit, arr.shape, item) + 2 * unit_bytes(arr.chunks, arr.shape, item)


def _plan_array(source: ArraySpec, out: Store, path: str, arr: zarr.Array,
                made: zarr.Array, resumed: bool, run: _Run) -> ArrayPlan:
    final = _spec(out.child(path) if path else out, made)
    item = arr.dtype.itemsize
    read_unit = source.shard.inner if source.shard else source.grid
    unit = unit_bytes(final.grid, arr.shape, item)
    # a task's budget: a quarter for read buffers (at least a source chunk read and decoded),
    # a quarter for encoded units (at least one), the rest for its block (at least a unit)
    task = run.task_bytes
    read_cap = max(2 * unit_bytes(read_unit, arr.shape, item), task // 4)
    write_cap = max(unit, task // 4)
    block_limit = task - read_cap - write_cap
    if block_limit < unit:  # near the smallest max_mem: one unit, the rest for reads
        block_limit, write_cap = unit, unit
        read_cap = max(2 * unit_bytes(read_unit, arr.shape, item), task - 2 * unit)
    if arr.size == 0:  # nothing to copy: the metadata is all
        return ArrayPlan(path, Route((), None), (), (), (), None, None)
    way = route(Grid(arr.shape, item, read_unit), final.grid, block_limit, read_cap // 2)
    write_empty = bool(made._async_array.config.write_empty_chunks)
    specs = [source]
    temp_store = made_base = compressor = None
    if way.middle is not None:
        base = (arrays.opened(run.temp, run.storage_options) if run.temp is not None
                else arrays.sibling(run.target, out, TEMP_SUFFIX, run.storage_options))
        made_base = base if run.temp is None else None
        if out_of_reach(base):
            raise RuntimeError(IN_MEMORY_ON_CLUSTER)
        compressor = _temp_compressor(run, base, way, item)
    token = _token(source, final, way, compressor)
    if way.middle is not None:
        temp_store = base.child(f"rechunk-{token[:16]}")
        middle_opts = {"shape": arr.shape, "dtype": arr.dtype, "chunks": way.middle,
                       "fill_value": arr.metadata.fill_value, "zarr_format": 3,
                       "compressors": arrays.named_compressor(compressor, 3),
                       "filters": None}
        mid, _ = arrays.create_target(temp_store, path, middle_opts, overwrite=False)
        specs.append(_spec(temp_store.child(path) if path else temp_store, mid))
    specs.append(final)
    jobs, todo, skipped = [], [], []
    for i, blocks in enumerate(way.passes):
        a, b = specs[i], specs[i + 1]
        memory = math.prod(blocks.shape) * item + read_cap + write_cap
        a_read = a.shard.inner if a.shard else a.grid
        jobs.append(CopyJob(a, b, blocks.shape, cells_within(read_cap // 2, a_read, item),
                            cells_within(write_cap, b.grid, item), memory, run.gate,
                            run.max_mem,
                            write_empty if i == len(way.passes) - 1 else True, run.malloc,
                            consume=i > 0, readahead=run.readahead))
    # a rerun: blocks whose units are all there are done (written atomically, whole)
    done_last = done_blocks(jobs[-1], final.store.list()) if resumed else ()
    all_done = len(done_last) == jobs[-1].count
    for i, job in enumerate(jobs):
        if i == len(jobs) - 1:
            done = done_last
        elif all_done:
            done = range(job.count)
        else:
            present = job.target.store.list()
            if i + 1 == len(jobs) - 1 and jobs[-1].consume:  # what done blocks deleted
                present += consumed_keys(jobs[-1], list(done_last))
            done = done_blocks(job, present)
        left = sorted(set(range(job.count)) - set(int(d) for d in done))
        todo.append(tuple(left))
        skipped.append(job.count - len(left))
    final.store.cleanup()  # what writers killed in an earlier run left (temporary objects)
    return ArrayPlan(path, way, tuple(jobs), tuple(todo), tuple(skipped), temp_store,
                      made_base)


def _spec(store: Store, arr: zarr.Array) -> ArraySpec:
    try:
        return spec_from_array(store, arr)
    except UnsupportedCodecError as e:
        e.add_note("dask_lsio.rechunk copies only arrays whose codecs and dtype dask-lsio "
                   "decodes and encodes itself")
        raise


def _token(source: ArraySpec, final: ArraySpec, way: Route, temp_compressor: Any) -> str:
    """Names a rechunk by what it copies, so that a rerun finds its intermediate arrays."""
    what = [source.store.description, final.store.description, source.shape,
            str(source.dtype), source.grid, final.grid, way.middle,
            [p.shape for p in way.passes], temp_compressor]
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:32]


def _temp_compressor(run: _Run, base: Store, way: Route, itemsize: int) -> Any:
    """The intermediate array's compressor: ``lsio.rechunk.temp-compressor``. "auto" is
    none on a local disk when all the arrays copied fit in the page cache's room for written
    data (:func:`_dirty_room`): the intermediate is then written, read and deleted in
    memory, and a codec would only cost CPU; lz4 elsewhere (what goes to a disk or a network
    is moved twice). None for chunks beyond c-blosc's limit (2 GiB) where it names a blosc
    one."""
    name = run.temp_compressor
    if name == "auto":
        local = base.description.kind == "file"
        name = "none" if local and run.copy_bytes <= _dirty_room() else "lz4"
    if name in ("lz4", "blosc-zstd") and math.prod(way.middle) * itemsize > 2**31 - 2**20:
        return "none"
    return name


def _dirty_room() -> int:
    """Bytes written to files that Linux keeps in the page cache before it starts writing
    them back: ``vm.dirty_background_bytes``, else ``vm.dirty_background_ratio`` percent of
    the memory (the kernel takes that percentage of the free and reclaimable memory, which
    the page cache of a machine that has run a while nearly fills); 0 where unknown."""
    try:
        fixed = int(Path("/proc/sys/vm/dirty_background_bytes").read_text())
        ratio = int(Path("/proc/sys/vm/dirty_background_ratio").read_text())
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
    return fixed or ratio * memory // 100


def _malloc_thresholds() -> tuple[int, int] | None:
    """``lsio.rechunk.mmap-threshold`` and ``trim-threshold`` in bytes (None: either null)."""
    if config.get("rechunk.mmap-threshold") is None or \
            config.get("rechunk.trim-threshold") is None:
        return None
    return config.get_bytes("rechunk.mmap-threshold"), config.get_bytes("rechunk.trim-threshold")


def _threads() -> int:
    """Threads that run tasks at once in a worker process: those of the distributed
    client's workers, else the threaded scheduler's."""
    client = active_client()
    if client is not None:
        return max(1, max(client.nthreads().values(), default=1))
    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


__all__ = ["MEMORY_OVERHEAD", "RechunkStage", "Rechunked", "rechunk"]
