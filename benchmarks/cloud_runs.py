"""How the cloud benchmark runs (``bench_cloud.py``): the datasets into the bucket, the timed
runs in turns at each latency, and the check of every run's result.

The readers run in fresh worker processes (``cloud_peers.py``); this is the parent's side. A
row is one (latency, dataset, workload, reader) ``harness.results.Result``, its latency in
the ``cache`` field ("0 ms", "20 ms"), which is what ratios compare within.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from cloud_peers import Task
from harness.latency_proxy import LatencyProxy
from harness.results import Result, Run
from harness.s3_server import KEY, REGION, SECRET, SeaweedS3
from harness.sides import CURRENT, Side, split_reader
from harness.workers import reason, run_once
from harness.zarr_data import Dataset

BUCKET = "lsio-bench"
UPLOAD_CONCURRENCY = 64
# what every row's results were checked against, per workload (the ceiling's: its bytes)
VERIFIED = {
    "scan": "every run's sum against the data's (rel 1e-4)",
    "crops": "every run's crops' sum agrees with the other readers' (rel 1e-6)",
    "write": "every run's array read back in full, its sum against the data's (rel 1e-9)",
    "ceiling": "every run moved exactly the objects' stored bytes",
}


def latency_label(ms: float) -> str:
    return f"{ms:g} ms"


def s3store(endpoint: str, prefix: str | None = None) -> Any:
    from obstore.store import S3Store

    return S3Store(BUCKET, prefix=prefix, endpoint=endpoint, access_key_id=KEY,
                   secret_access_key=SECRET, region=REGION, client_options={"allow_http": True})


def gather(fn: Callable[[Any], Awaitable], items: list, limit: int) -> list:
    """``await fn(item)`` for every item, at most ``limit`` at once; their results."""

    async def main() -> list:
        sem = asyncio.Semaphore(limit)

        async def one(item: Any) -> Any:
            async with sem:
                return await fn(item)

        return await asyncio.gather(*(one(x) for x in items))

    return asyncio.run(main())


def upload(datasets: list[Dataset], server: SeaweedS3) -> None:
    """Every dataset's objects (metadata and chunks or shards) under its folder's name, many
    puts at once; then one untimed read of them all, so that the server is warm."""
    import obstore

    store = s3store(server.endpoint)
    for ds in datasets:
        t0 = time.perf_counter()
        keys = ["zarr.json"] + [str(Path(p).relative_to(ds.root)) for p in ds.paths]
        blobs = [(ds.root / k).read_bytes() for k in keys]
        gather(lambda kb: obstore.put_async(store, f"{ds.spec.dirname}/{kb[0]}", kb[1]),
               list(zip(keys, blobs)), UPLOAD_CONCURRENCY)
        put_s = time.perf_counter() - t0

        async def size(k: str) -> int:
            got = await obstore.get_async(store, f"{ds.spec.dirname}/{k}")
            return len(await got.bytes_async())

        got = sum(gather(size, keys, UPLOAD_CONCURRENCY))
        if got != sum(len(b) for b in blobs):
            raise RuntimeError(f"{ds.spec.name}: read back {got} bytes of {ds.spec.dirname}")
        print(f"  {ds.spec.name}: {len(keys):,} objects, {got / 1e6:,.1f} MB put in "
              f"{put_s:.1f} s", flush=True)


def check_written(endpoint: str, prefix: str, expected: float) -> str:
    """Read a written array back in full (zarr-python over obstore); what is wrong ("" if
    nothing)."""
    import zarr
    from zarr.storage import ObjectStore

    try:
        z = zarr.open_array(ObjectStore(s3store(endpoint, prefix), read_only=True), mode="r")
        got = float(z[:].sum(dtype="float64"))
    except Exception as e:  # noqa: BLE001  (an unreadable output is a wrong result)
        return f"wrong result: the written array does not read back ({reason(e)})"
    if not math.isclose(got, expected, rel_tol=1e-9):
        return f"wrong result: the written array sums to {got:.8g}, expected {expected:.8g}"
    return ""


def delete_prefix(endpoint: str, prefix: str) -> None:
    """Delete every object under ``prefix`` (a write's output)."""
    import obstore

    store = s3store(endpoint)
    for batch in obstore.list(store, prefix=prefix + "/", chunk_size=1000):
        obstore.delete(store, [m["path"] for m in batch])


@contextlib.contextmanager
def endpoint_at(server: SeaweedS3, ms: float) -> Iterator[str]:
    """The endpoint readers use at latency ``ms``: the server's own at 0, else a proxy's."""
    if not ms:
        yield server.endpoint
        return
    with LatencyProxy(server.port, ms) as proxy:
        yield f"http://127.0.0.1:{proxy.port}"


@dataclass
class Cell:
    """One (dataset, workload): its readers and the task they all run."""

    ds: Dataset
    workload: str
    readers: list[str]
    task: Task


def problem(cell: Cell, out: dict, direct: str) -> str:
    """What is wrong with one run's reply ("" if nothing): the scan's sum against the
    data's, the ceiling's bytes, a written array read back (then deleted)."""
    if cell.workload == "write":
        why = out.get("error") or check_written(direct, out["out"], cell.ds.total_sum)
        with contextlib.suppress(Exception):  # nothing may be there
            delete_prefix(direct, out["out"])
        return why
    if "error" in out:
        return out["error"]
    name, _ = split_reader(out["reader"])
    if name == "ceiling":
        if cell.workload == "scan" and out["moved"] != cell.ds.stored_bytes:
            return f"wrong result: {out['moved']} bytes, stored {cell.ds.stored_bytes}"
        return "" if out["moved"] > 0 else "wrong result: nothing read"
    if cell.workload == "scan" and not math.isclose(out["sum"], cell.ds.total_sum, rel_tol=1e-4):
        return f"wrong result: sum {out['sum']:.6g}, expected {cell.ds.total_sum:.6g}"
    return ""


def run_cell(cell: Cell, ms: float, endpoint: str, direct: str, script: Path, repeats: int,
             baseline: Side | None, replies: dict) -> list[Result]:
    """Every reader of ``cell`` ``repeats`` times at latency ``ms``, in turns that rotate
    between repeats, each run in a fresh process; ``replies`` gets every run's reply."""
    lat = latency_label(ms)
    rows = {r: Result(cell.ds.spec.name, lat, cell.workload, r) for r in cell.readers}
    readers = list(cell.readers)
    for rep in range(repeats):
        for label in readers:
            if rows[label].error:  # it failed once: its row is "not available"
                continue
            name, side = split_reader(label)
            out_prefix = f"out/{label}-{ms:g}-{rep}".replace("@", "-")
            task = replace(cell.task, reader=name, endpoint=endpoint,
                           out=out_prefix if cell.workload == "write" else "")
            t0 = time.perf_counter()
            out = run_once(script, asdict(task), baseline if side else CURRENT)
            wall = time.perf_counter() - t0  # the whole process: start, imports, warm-up
            out |= {"reader": label, "out": out_prefix}
            why = problem(cell, out, direct)
            replies.setdefault((cell.ds.spec.name, lat, cell.workload, label), []).append(
                {k: v for k, v in out.items() if k not in ("reader", "out")} | (
                    {"error": why} if why else {}))
            res = rows[label]
            if why:
                res.error = why
            else:
                res.runs.append(Run(out["seconds"], out["nbytes"], out["requests"]))
                res.note = res.note or out.get("detail", "")
                if out["sum"] is not None and cell.workload == "crops":
                    if res.value is not None and not math.isclose(res.value, out["sum"],
                                                                  rel_tol=1e-9):
                        res.error = "wrong result: the runs' sums differ"
                    res.value = out["sum"]
            shown = why or f"{out['seconds']:.3f} s (process {wall:.1f} s)"
            print(f"  {lat} {cell.ds.spec.name} {cell.workload} {label} run {rep + 1}: "
                  f"{shown}", flush=True)
        readers = readers[1:] + readers[:1]
    for label, r in rows.items():
        r.verified = VERIFIED["ceiling" if split_reader(label)[0] == "ceiling"
                              else cell.workload]
    return list(rows.values())
