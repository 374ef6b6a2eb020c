"""``dask_lsio.rechunk``: copy Zarr arrays into new chunks (and shards, codecs, format) with
bounded memory, in one pass or two, resumable; ``rechunker.rechunk``'s shape.

The planner (:mod:`.rechunk_plan`) sizes blocks; each task (:mod:`.rechunk_tasks`) reads
a block in batches decoded by the kernel, regroups it in one buffer and writes its whole
target units; the arrays and their metadata come from :mod:`.rechunk_arrays`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import dask
import dask.threaded
import zarr
from dask.highlevelgraph import HighLevelGraph
from dask.utils import format_bytes, parse_bytes

from ..errors import UnsupportedCodecError
from ..store import Store
from ..zarr.spec import ArraySpec, spec_from_array
from . import rechunk_arrays as arrays
from .clients import IN_MEMORY_ON_CLUSTER, out_of_reach
from .rechunk_plan import Grid, Route, route, unit_bytes
from .rechunk_tasks import CopyJob, cells_within, copy_block, done_blocks, remove_array

# What a process running rechunk tasks may grow by beyond max_mem, above its RSS once
# dask_lsio, zarr and dask are imported (~110 MiB): the IO engine's rings and recycled
# buffers of other sizes, decode scratch, the interpreter's heap. Measured 10-30 MiB
# (tests/test_rechunk.py, benchmarks/bench_rechunk.py; docs/guide/rechunk.rst); with margin.
MEMORY_OVERHEAD = 128 << 20
TEMP_SUFFIX = ".rechunk-temp"


@dataclass(frozen=True)
class RechunkStage:
    """One pass over one array: ``tasks`` tasks each copy a block of ``block`` shape from
    ``source`` into ``target``, holding at most ``memory`` bytes, decoding
    ``read_amplification`` source bytes per byte copied."""

    array: str
    source: str
    target: str
    block: tuple[int, ...]
    tasks: int
    skipped: int
    memory: int
    read_amplification: float


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
        asked.append((path, arr, options))
    if src.group is not None:
        arrays.create_groups(out, src, zarr_format, overwrite)
    # one budget per process for all the arrays' tasks
    gate = hashlib.sha256(json.dumps([src.store.description, out.description, max_mem,
                                      list(src.arrays)], default=str).encode()).hexdigest()
    run = _Run(max_mem // threads, max_mem, f"rechunk-{gate[:32]}", temp, target,
               storage_options)
    jobs = []
    for path, arr, options in asked:
        made, resumed = arrays.create_target(out, path, options, overwrite)
        jobs.append(_plan_array(src, out, path, arr, made, resumed, run))
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


def _smallest_task(arr: zarr.Array, unit: tuple[int, ...]) -> int:
    """Bytes a task needs at least: a target unit, its encoded copy, a source chunk's read
    buffer and its decoded copy."""
    item = arr.dtype.itemsize
    return 2 * unit_bytes(unit, arr.shape, item) + 2 * unit_bytes(arr.chunks, arr.shape, item)


@dataclass(frozen=True)
class _ArrayPlan:
    """The passes of one array: jobs with the blocks still to copy, and the intermediate
    array's store (to remove once done) when there are two."""

    path: str
    route: Route
    jobs: tuple[CopyJob, ...]
    todo: tuple[tuple[int, ...], ...]
    skipped: tuple[int, ...]
    temp: Store | None
    temp_base: Store | None  # the default place of intermediate arrays, made for them


def _plan_array(src: arrays.Source, out: Store, path: str, arr: zarr.Array,
                made: zarr.Array, resumed: bool, run: _Run) -> _ArrayPlan:
    source = _spec(src.store.child(path) if path else src.store, arr)
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
        return _ArrayPlan(path, Route((), None), (), (), (), None, None)
    way = route(Grid(arr.shape, item, read_unit), final.grid, block_limit, read_cap // 2)
    token = _token(source, final, way)
    write_empty = bool(made._async_array.config.write_empty_chunks)
    specs = [source]
    temp_store = made_base = None
    if way.middle is not None:
        base = (arrays.opened(run.temp, run.storage_options) if run.temp is not None
                else arrays.sibling(run.target, out, TEMP_SUFFIX, run.storage_options))
        made_base = base if run.temp is None else None
        if out_of_reach(base):
            raise RuntimeError(IN_MEMORY_ON_CLUSTER)
        temp_store = base.child(f"rechunk-{token[:16]}")
        compress = "lz4" if temp_store.description.kind not in ("file", "memory") else "none"
        middle_opts = {"shape": arr.shape, "dtype": arr.dtype, "chunks": way.middle,
                       "fill_value": arr.metadata.fill_value, "zarr_format": 3,
                       "compressors": arrays.named_compressor(compress, 3), "filters": None}
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
                            write_empty if i == len(way.passes) - 1 else True))
    # a rerun: blocks whose units are all there are done (written atomically, whole)
    done_last = done_blocks(jobs[-1], final.store.list()) if resumed else ()
    all_done = len(done_last) == jobs[-1].count
    for i, job in enumerate(jobs):
        if i == len(jobs) - 1:
            done = done_last
        elif all_done:
            done = range(job.count)
        else:
            done = done_blocks(job, job.target.store.list())
        left = sorted(set(range(job.count)) - set(int(d) for d in done))
        todo.append(tuple(left))
        skipped.append(job.count - len(left))
    final.store.cleanup()  # what writers killed in an earlier run left (temporary objects)
    return _ArrayPlan(path, way, tuple(jobs), tuple(todo), tuple(skipped), temp_store,
                      made_base)


def _spec(store: Store, arr: zarr.Array) -> ArraySpec:
    try:
        return spec_from_array(store, arr)
    except UnsupportedCodecError as e:
        raise UnsupportedCodecError(f"{e}: dask_lsio.rechunk reads and writes only arrays "
                                    "it decodes itself") from e


def _token(source: ArraySpec, final: ArraySpec, way: Route) -> str:
    """Names a rechunk by what it copies, so that a rerun finds its intermediate arrays."""
    what = [source.store.description, final.store.description, source.shape,
            str(source.dtype), source.grid, final.grid, way.middle,
            [p.shape for p in way.passes]]
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:32]


def _threads() -> int:
    """Threads that run tasks at once in a worker process: those of the distributed
    client's workers, else the threaded scheduler's."""
    if "distributed" in sys.modules:
        from distributed import default_client

        try:
            return max(1, max(default_client().nthreads().values(), default=1))
        except ValueError:  # no client
            pass
    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


def _after(*done: object) -> None:
    """Joins tasks: runs once they all have."""


class Rechunked:
    """A planned rechunk: a dask collection whose tasks copy the blocks.

    ``execute()`` / ``compute()`` runs it and returns the target opened by zarr-python;
    ``dask.compute(plan)``, ``client.compute(plan)`` and progress bars work as for any
    dask collection. :attr:`stages` says what each pass does.
    """

    def __init__(self, src: arrays.Source, out: Store, plans: list[_ArrayPlan], max_mem: int,
                 threads: int) -> None:
        self.source, self.target_store, self.max_mem, self.threads = src, out, max_mem, threads
        self._plans = plans
        self._group = src.group is not None
        self._consolidate = self._group and _consolidated(src.group)
        token = hashlib.sha256(repr([_token_of(p) for p in plans]).encode()).hexdigest()[:16]
        self._key = f"rechunk-{token}"
        self._graph = HighLevelGraph.from_collections(self._key, self._tasks(token), ())

    # -- what it does ----------------------------------------------------------------------
    @property
    def stages(self) -> tuple[RechunkStage, ...]:
        """What each pass over each array does (one or two per array)."""
        out = []
        for p in self._plans:
            for job, blocks, todo, skipped in zip(p.jobs, p.route.passes, p.todo, p.skipped):
                out.append(RechunkStage(p.path, job.source.store.url, job.target.store.url,
                                        job.block, len(todo), skipped, job.memory,
                                        blocks.amplification))
        return tuple(out)

    @property
    def tasks(self) -> int:
        """Tasks that copy blocks (those done by an earlier run not counted)."""
        return sum(s.tasks for s in self.stages)

    @property
    def skipped(self) -> int:
        """Blocks found done by an earlier run of the same rechunk."""
        return sum(s.skipped for s in self.stages)

    @property
    def memory_per_task(self) -> int:
        """The most bytes a task holds (blocks, read buffers, encoded units)."""
        return max((s.memory for s in self.stages), default=0)

    def __repr__(self) -> str:
        lines = [f"<Rechunked {self.source.store.url} -> {self.target_store.url}: "
                 f"{len(self.stages)} stage(s), {self.tasks} tasks ({self.skipped} done "
                 f"before), max_mem {format_bytes(self.max_mem)} over {self.threads} "
                 f"thread(s), {format_bytes(self.memory_per_task)} per task"]
        for s in self.stages:
            lines.append(f"  {s.array or '.'}: {s.source} -> {s.target}: blocks {s.block}, "
                         f"{s.tasks} tasks, {format_bytes(s.memory)} each, reads "
                         f"x{s.read_amplification:.2f}")
        return "\n".join(lines) + ">"

    # -- running it ------------------------------------------------------------------------
    def execute(self, **compute_kwargs: Any) -> zarr.Array | zarr.Group:
        """Run the copy (``dask.compute`` with ``compute_kwargs``: ``scheduler=``,
        ``num_workers=`` ...; the active distributed client if any); return the target."""
        (result,) = dask.compute(self, **compute_kwargs)
        return result

    compute = execute

    def _tasks(self, token: str) -> dict:
        dsk: dict = {}
        ends = []
        for a, p in enumerate(self._plans):
            after: tuple = ()
            last: list = []
            for i, (job, todo) in enumerate(zip(p.jobs, p.todo)):
                name = f"rechunk-copy-{token}-{a}-{i}"
                keys = [(name, b) for b in todo]
                for k in keys:
                    dsk[k] = (copy_block, job, k[1], *after)
                if i + 1 < len(p.jobs):  # the next pass reads what this one wrote
                    join = f"rechunk-pass-{token}-{a}-{i}"
                    dsk[join] = (_after, *keys)
                    after = (join,)
                last = keys
            if p.temp is not None:
                end = f"rechunk-temp-{token}-{a}"
                dsk[end] = (remove_array, p.temp, p.temp_base, *last, *after)
                ends.append(end)
            else:
                ends.extend(last)
        dsk[self._key] = (_after, *ends)
        return dsk

    def _finish(self, results: Any) -> zarr.Array | zarr.Group:
        where = self.target_store.zarr_target
        if self._consolidate:  # as the source was (xarray opens such groups faster)
            with warnings.catch_warnings():  # (v3: that the spec has no such thing yet)
                warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
                zarr.consolidate_metadata(where)
        return zarr.open(store=where, mode="r")

    def __dask_graph__(self) -> HighLevelGraph:
        return self._graph

    def __dask_keys__(self) -> list:
        return [self._key]

    def __dask_layers__(self) -> tuple[str, ...]:
        return (self._key,)

    def __dask_tokenize__(self) -> str:
        return self._key

    def __dask_postcompute__(self) -> tuple:
        return _finish_first, (self,)

    def __dask_postpersist__(self) -> tuple:
        return _persisted, (self,)

    __dask_scheduler__ = staticmethod(dask.threaded.get)
    __dask_optimize__ = None  # the tasks are as coarse as they should be


def _finish_first(results: Any, plan: Rechunked) -> Any:
    return plan._finish(results)


def _persisted(dsk: Any, plan: Rechunked, rename: Any = None) -> Rechunked:
    """The plan after ``persist``: its graph is the computed keys."""
    new = object.__new__(Rechunked)
    new.__dict__.update(plan.__dict__)
    new._graph = dsk if isinstance(dsk, HighLevelGraph) else HighLevelGraph.from_collections(
        plan._key, dict(dsk), ())
    return new


def _consolidated(group: zarr.Group) -> bool:
    return getattr(group.metadata, "consolidated_metadata", None) is not None


def _token_of(p: _ArrayPlan) -> Any:
    return [p.path, [j.gate for j in p.jobs], p.todo]


__all__ = ["MEMORY_OVERHEAD", "RechunkStage", "Rechunked", "rechunk"]
