"""The plan of a rechunk as a dask collection: :class:`Rechunked` (its graph: the copy tasks
of every pass of every array, a join between passes, the intermediate arrays removed at the
end) and the records that describe it.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

import dask
import dask.local
import dask.threaded
import zarr
from dask.highlevelgraph import HighLevelGraph
from dask.utils import format_bytes

from ..io import malloc
from ..store import Store
from . import rechunk_arrays as arrays
from .clients import active_client
from .rechunk_plan import Route
from .rechunk_tasks import CopyJob, copy_block, remove_array


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


@dataclass(frozen=True)
class ArrayPlan:
    """The passes of one array: jobs with the blocks still to copy, and the intermediate
    array's store (to remove once done) when there are two."""

    path: str
    route: Route
    jobs: tuple[CopyJob, ...]
    todo: tuple[tuple[int, ...], ...]
    skipped: tuple[int, ...]
    temp: Store | None
    temp_base: Store | None  # the default place of intermediate arrays, made for them


# Blocks of its chain a task reads ahead: the next ones' reads then overlap this one's work
# even when one block's reads take longer than another's regrouping and writes.
READ_AHEAD = 2


def _after(*done: object) -> None:
    """Joins tasks: runs once they all have."""


def _done(*done: object) -> None:
    """The last task: the memory kept for reuse while copying goes back to the OS (in the
    process this task runs in: all of them on the threaded scheduler)."""
    malloc.trim()


class Rechunked:
    """A planned rechunk: a dask collection whose tasks copy the blocks.

    ``execute()`` / ``compute()`` runs it and returns the target opened by zarr-python;
    ``dask.compute(plan)``, ``client.compute(plan)`` and progress bars work as for any
    dask collection. :attr:`stages` says what each pass does.
    """

    def __init__(self, src: arrays.Source, out: Store, plans: list[ArrayPlan], max_mem: int,
                 threads: int) -> None:
        self.source, self.target_store, self.max_mem, self.threads = src, out, max_mem, threads
        self._plans = plans
        self._group = src.group is not None
        self._consolidate = self._group and _consolidated(src.group)
        token = hashlib.sha256(repr([_token_of(p) for p in plans]).encode()).hexdigest()[:16]
        self._key = f"rechunk-{token}"
        self._graph = HighLevelGraph.from_collections(self._key, self._tasks(token, 0), ())
        reads_ahead = any(j.readahead for p in plans for j in p.jobs)
        self._laned = HighLevelGraph.from_collections(
            self._key, self._tasks(token, threads), ()) if reads_ahead else None

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

    def _tasks(self, token: str, lanes: int) -> dict:
        """The graph. ``lanes`` > 0: each pass's blocks in that many chains (a block
        follows the one ``lanes`` before it), so that with as many threads each thread
        copies one chain and each task knows the block its thread copies next (the one it
        reads ahead); 0: no chains (clusters: chains as many as this machine's threads
        would bound a cluster's parallelism)."""
        dsk: dict = {}
        ends = []
        for a, p in enumerate(self._plans):
            after: tuple = ()
            last: list = []
            for i, (job, todo) in enumerate(zip(p.jobs, p.todo)):
                name = f"rechunk-copy-{token}-{a}-{i}"
                keys = [(name, b) for b in todo]
                for n, k in enumerate(keys):
                    ahead: list = []
                    chain: tuple = ()
                    if lanes:
                        # read ahead the block READ_AHEAD places further in the chain; the
                        # first of a chain also its own and those between
                        top = n + READ_AHEAD * lanes
                        first = n if n < lanes else top
                        ahead = [keys[m][1] for m in range(first, min(top + 1, len(keys)), lanes)]
                        chain = (keys[n - lanes],) if n >= lanes else ()
                    dsk[k] = (copy_block, job, k[1], tuple(ahead), *after, *chain)
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
        dsk[self._key] = (_done, *ends)
        return dsk

    def _finish(self, results: Any) -> zarr.Array | zarr.Group:
        where = self.target_store.zarr_target
        if self._consolidate:  # as the source was (xarray opens such groups faster)
            with warnings.catch_warnings():  # (v3: that the spec has no such thing yet)
                warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
                zarr.consolidate_metadata(where)
        return zarr.open(store=where, mode="r")

    def __dask_graph__(self) -> HighLevelGraph:
        # chained blocks (reads ahead) on this machine's threads; none on a cluster
        return self._laned if self._laned is not None and _threaded() else self._graph

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


def _threaded() -> bool:
    """Whether a compute now runs on this process's threads: the threaded or synchronous
    scheduler by configuration, or by default (no distributed client)."""
    chosen = dask.config.get("scheduler", None)
    if chosen is not None:
        return chosen in ("threads", "threading", "sync", "synchronous", "single-threaded",
                          dask.threaded.get, dask.local.get_sync)
    return active_client() is None


def _finish_first(results: Any, plan: Rechunked) -> Any:
    return plan._finish(results)


def _persisted(dsk: Any, plan: Rechunked, rename: Any = None) -> Rechunked:
    """The plan after ``persist``: its graph is the computed keys."""
    new = object.__new__(Rechunked)
    new.__dict__.update(plan.__dict__)
    new._laned = None
    new._graph = dsk if isinstance(dsk, HighLevelGraph) else HighLevelGraph.from_collections(
        plan._key, dict(dsk), ())
    return new


def _consolidated(group: zarr.Group) -> bool:
    return getattr(group.metadata, "consolidated_metadata", None) is not None


def _token_of(p: ArrayPlan) -> Any:
    return [p.path, [j.gate for j in p.jobs], p.todo]


__all__ = ["ArrayPlan", "RechunkStage", "Rechunked"]
