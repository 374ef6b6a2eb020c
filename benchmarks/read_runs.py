"""How the read benchmark runs its readers (``bench_read.py``): who runs which workload, the
untimed checked first runs, the timed runs in turns, and the check of every result.

The readers live in persistent worker processes (``read_peers.py``); this is the parent's
side. A row is one (dataset, cache, workload, reader) ``harness.results.Result``.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from harness.cache import drop_caches
from harness.fio import FioReader
from harness.results import Result, Run
from harness.sides import split_reader
from harness.workers import Worker, reason
from harness.zarr_data import Dataset
from read_peers import WINDOW, Job, make_job

READERS = [
    "dask_lsio", "dask", "zarr", "zarrs", "lsio-pipeline", "tensorstore", "decode-only", "fio",
]
WORKLOADS = ["scan", "select", "array", "array-out", "xsum"]
# who runs which workload; the rest of a workload's rows are "-" (decode-only: warm A, B)
RUNS = {
    "scan": {"dask_lsio", "dask", "zarr", "zarrs", "tensorstore", "decode-only"},
    "select": {"dask_lsio", "dask", "zarr", "zarrs", "tensorstore"},
    "array": {"zarr", "zarrs", "lsio-pipeline", "tensorstore"},
    "array-out": {"zarr", "zarrs", "lsio-pipeline"},
    "xsum": {"dask_lsio", "zarr", "zarrs", "lsio-pipeline"},
}
# D (2^20 inner chunks of 1 KiB) and E (12,288 small files): a scan by the readers that plan
# chunks in bulk. zarr-python's default pipeline and dask (a task per chunk) would take
# minutes per run (D) or most of the benchmark's time (E).
BULK_READERS = {"dask_lsio", "zarrs", "tensorstore"}
ON_REQUEST = {"D", "E"}  # datasets run only when named (``--only``)
# the row each workload's "x base" compares with: the stack its users have today
BASE = {"scan": "dask", "select": "dask", "array": "zarr", "array-out": "zarr", "xsum": "zarr"}
TWINNED = {"dask_lsio", "lsio-pipeline"}  # the readers that are dask_lsio: --baseline twins
WARMUP_SELECT = 20  # selections in the untimed first run (the timed runs do all)
# what every run's result was checked against, per workload (decode-only: its first run)
VERIFIED = {
    "scan": "every run's sum against the data's (rel 1e-4)",
    "array": "every run's sum against the data's (rel 1e-4)",
    "array-out": "every run's sum against the data's (rel 1e-4)",
    "xsum": "every run's sum against the data's (rel 1e-4)",
    "select": "every run's shapes and selection sums against the generator's",
    "decode-only": "its untimed first run's sum against the data's (timed runs only decode)",
    "fio": "bytes and reads as fio reports them",
}


def check_reply(reply: dict, ds: Dataset, workload: str, expected: np.ndarray) -> str:
    """What is wrong with a reader's result ("" if nothing)."""
    if workload != "select":
        value = reply["value"]
        if value is not None and not math.isclose(value, ds.total_sum, rel_tol=1e-4):
            return f"wrong result: sum {value:.6g}, expected {ds.total_sum:.6g}"
        return ""
    if not reply["shapes_ok"]:
        return f"wrong result: selections are not {WINDOW}x{WINDOW}"
    sums = np.asarray(reply["sums"])
    if len(sums) not in (len(expected), WARMUP_SELECT):
        return f"wrong result: {len(sums)} selections returned"
    bad = np.flatnonzero(~np.isclose(sums, expected[: len(sums)], rtol=1e-9, atol=1e-6))
    if bad.size:
        return f"wrong result: {bad.size} of {len(sums)} selections differ"
    return ""


def applies(reader: str, ds: Dataset, workload: str, cache: str) -> bool:
    """Whether a reader (or its baseline twin) has a row (``RUNS``): decode-only is a warm
    scan of A and B only; the whole-array and xarray workloads are warm runs of A and B."""
    name, _ = split_reader(reader)
    if name not in RUNS[workload]:
        return False
    if ds.spec.name in ON_REQUEST:
        return workload == "scan" and name in BULK_READERS
    if name == "decode-only" or workload in ("array", "array-out", "xsum"):
        return cache == "warm" and ds.spec.codec != "none"
    return True


def verified(reader: str, workload: str) -> str:
    """What the row's results are checked against (``VERIFIED``)."""
    name, _ = split_reader(reader)
    return VERIFIED.get(name, VERIFIED[workload])


def timed_run(worker: Worker, job: Job, ds: Dataset, res: Result, expected: np.ndarray) -> None:
    """One run of ``worker``; appended to ``res``, or ``res.error`` set."""
    reply = worker.request(res.workload, job=asdict(job))
    problem = reply.get("error", "") or check_reply(reply, ds, res.workload, expected)
    if problem:
        res.error = problem
        return
    res.note = res.note or reply.get("detail", "")
    res.runs.append(Run(reply["seconds"], reply["nbytes"], rss_peak=reply["rss_peak"],
                        rss_before=reply["rss_before"], cpu_busy=reply.get("cpu_busy"),
                        cpu_kernel=reply.get("cpu_kernel")))  # (a baseline may not count)


def fio_run(fio: FioReader, ds: Dataset, cold: bool, res: Result) -> None:
    """fio over the objects; its bytes count as the decoded output they hold."""
    try:
        run = fio.run(ds.fileset(), direct=cold)
    except RuntimeError as e:
        res.error = reason(e)
        return
    res.note = f"direct={int(cold)}, read {run.nbytes / 1e9:.3f} GB stored"
    res.runs.append(Run(run.seconds, ds.spec.nbytes))


def warm_up(workers: list[Worker], ds: Dataset, sels: list, expected: np.ndarray,
            workloads: list[str]) -> dict[tuple[str, str], str]:
    """One untimed, checked run of every reader and workload (the first ``WARMUP_SELECT``
    selections only: enough to warm their code paths); returns what failed, by (workload,
    reader)."""
    failed = {}
    for workload in workloads:
        job = make_job(ds, workload, sels[:WARMUP_SELECT], check=True)
        for w in workers:
            if not applies(w.name, ds, workload, "warm"):
                continue
            if w.error:
                failed[(workload, w.name)] = w.error
                continue
            probe = Result(ds.spec.name, "warm", workload, w.name)
            timed_run(w, job, ds, probe, expected)
            if probe.error:
                failed[(workload, w.name)] = probe.error
    return failed


def run_dataset(
    ds: Dataset,
    workers: list[Worker],
    fio: FioReader | None,
    states: list[str],
    sels: list,
    expected: np.ndarray,
    repeats: int,
    workloads: list[str],
    drop: int = 3,
) -> list[Result]:
    """Warm every reader up on ``ds``, then time it in each cache state (cold: after
    :func:`~harness.cache.drop_caches` of level ``drop``)."""
    failed = warm_up(workers, ds, sels, expected, workloads)  # (workload, reader) -> why
    jobs = {wl: make_job(ds, wl, sels, check=False) for wl in workloads}
    results: list[Result] = []
    for cache in states:
        rows = {
            (wl, w.name): Result(ds.spec.name, cache, wl, w.name,
                                 error=failed.get((wl, w.name), ""),
                                 verified=verified(w.name, wl))
            for wl in workloads
            for w in workers
            if applies(w.name, ds, wl, cache)
        }
        fio_res = None
        if fio is not None:
            fio_res = Result(ds.spec.name, cache, "scan", "fio", verified=VERIFIED["fio"])
        run_cache_state(ds, cache, workers, rows, jobs, expected, fio, fio_res, repeats, drop)
        results += list(rows.values()) + ([fio_res] if fio_res else [])
    return in_table_order(results, states)


def run_cache_state(
    ds: Dataset,
    cache: str,
    workers: list[Worker],
    rows: dict[tuple[str, str], Result],
    jobs: dict[str, Job],
    expected: np.ndarray,
    fio: FioReader | None,
    fio_res: Result | None,
    repeats: int,
    drop: int = 3,
) -> None:
    """Time every reader ``repeats`` times on ``ds`` in one cache state, readers in turn;
    the runs go into ``rows`` (by workload and reader) and ``fio_res``."""
    cold = cache == "cold"
    if not cold:
        ds.preread()
    for wl in jobs:  # one workload after another: minutes of xarray runs between two
        # whole-array reads changed the second one's speed by up to 2x on this VM
        for rep in range(repeats):
            # turns rotate between repeats: on this VM a run's speed depends on what ran just
            # before it (memory the previous reader freed), so each reader takes each place
            for w in workers[rep % len(workers):] + workers[: rep % len(workers)]:
                res = rows.get((wl, w.name))
                if res is None or res.error:
                    continue
                if cold:
                    drop_caches(drop)
                timed_run(w, jobs[wl], ds, res, expected)
            if wl == "scan" and fio_res is not None and not fio_res.error:
                if cold:
                    drop_caches(drop)
                fio_run(fio, ds, cold, fio_res)
            print(f"    {ds.spec.name} {cache} {wl} repeat {rep + 1}/{repeats} done", flush=True)


def in_table_order(results: list[Result], states: list[str]) -> list[Result]:
    """Rows by cache state (warm first), workload, then reader in ``READERS`` order (a
    baseline twin right after its reader)."""
    order = {name: i for i, name in enumerate(READERS)}

    def key(r: Result) -> tuple:
        name, side = split_reader(r.reader)
        return states.index(r.cache), WORKLOADS.index(r.workload), order[name], side

    return sorted(results, key=key)
