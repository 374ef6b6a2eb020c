"""The rechunker row of ``bench_rechunk.py``: one timed ``rechunker.rechunk(...).execute()``.

It runs with the Python of the side virtual environment the benchmark creates (rechunker
0.5.4 needs zarr<3: zarr 2.18 and numcodecs 0.15 there, with this environment's dask and
numpy), as ``python rechunker_run.py --worker TASK_JSON``, a fresh process per run, and prints
one JSON line: the seconds of the timed part, the process's RSS before it and its high-water
mark during it. The timed part opens the v2 source with zarr 2, plans (``rechunker.rechunk``,
which also creates the target and the intermediate arrays) and executes on dask's threaded
scheduler, as ``bench_rechunk.py`` times the other readers.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness: numpy and stdlib only

from harness.cache import drop_caches  # noqa: E402
from harness.memory import peak_rss_kib, reset_peak_rss, rss_kib, touch_memory  # noqa: E402


def run(task: dict) -> dict:
    import dask
    import numcodecs
    import rechunker
    import zarr

    dask.compute(dask.delayed(int)(0), scheduler="threads")  # its pool, as the others'
    touch_memory(task["touch"])  # as the other readers (rechunk_runs.touch_bytes)
    if task["cold"]:
        drop_caches()
    gc.collect()
    exact = reset_peak_rss()
    before = rss_kib("VmRSS")
    t0 = time.perf_counter()
    source = zarr.open_array(task["source"], mode="r")
    compressor = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    plan = rechunker.rechunk(source, tuple(task["target_chunks"]), task["max_mem"],
                             task["target"], target_options={"compressor": compressor},
                             temp_store=task["temp"])
    with dask.config.set(scheduler="threads"):
        plan.execute()
    seconds = time.perf_counter() - t0
    peak = peak_rss_kib(exact)
    inter = plan._intermediate  # noqa: SLF001  (None: a single pass)
    return {"seconds": seconds, "rss_before": before * 1024, "rss_peak": peak * 1024,
            "rss_exact": exact, "intermediate_chunks": list(inter.chunks) if inter is not None
            else None, "rechunker": rechunker.__version__, "zarr": zarr.__version__,
            "dask": dask.__version__, "numcodecs": numcodecs.__version__}


def main() -> None:
    task = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    try:
        out = run(task)
    except Exception as e:  # noqa: BLE001  (any failure makes the row "not available")
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        out = {"error": f"{type(e).__name__}: {text}"[:160]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
