"""The crops benchmark's timed tasks (``bench_crops.py``), each run in a fresh process.

``bench_crops.py --worker TASK`` runs one task (a JSON dict: kind, reader, path ...) with
:func:`run_task` and prints its result as JSON: the seconds, the sum of what it delivered and
how much work that was. With ``--baseline`` the same task runs in a process importing the
other dask_lsio.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from harness.cpu import Stopwatch

CROP = (8, 64, 64)
BATCH = 32
SEED = 0
NWP_CROP = (2, 32, 32)


def locations(path: str, batches: int, epoch: int) -> list[np.ndarray]:
    """The crop starts of every batch, as dask_lsio samples them (the same for all)."""
    import dask_lsio

    crops = dask_lsio.RandomCrops(path, CROP, BATCH, seed=SEED, length=batches)
    (name,) = [s.name for s in crops.sources]
    return [crops.locations(epoch, b)[name] for b in range(batches)]


def crop_batches(reader: str, path: str, starts: list[np.ndarray]) -> Iterator[np.ndarray]:
    """A generator of batches (arrays (32, 8, 64, 64)) for ``reader``."""
    windows = [[tuple(slice(a, a + n) for a, n in zip(s, CROP)) for s in b.tolist()]
               for b in starts]
    if reader == "dask_lsio":
        import dask_lsio

        crops = dask_lsio.RandomCrops(path, CROP, BATCH, seed=SEED, length=len(starts))
        crops.locations = lambda e, b: {crops.sources[0].name: starts[b]}  # the given ones
        return (b[crops.sources[0].name] for b in crops.iter_epoch(0))
    if reader in ("zarr", "zarrs"):
        import zarr

        if reader == "zarrs":
            zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline",
                             "codec_pipeline.strict": True})
        z = zarr.open_array(path, mode="r")
        return (np.stack([z[w] for w in batch]) for batch in windows)
    if reader == "tensorstore":
        import tensorstore as ts

        s = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}},
                    read=True).result()
        return (np.stack([f.result() for f in [s[w].read() for w in batch]])
                for batch in windows)
    import dask
    import dask.array as da

    dask.config.set({"scheduler": "threads"})
    a = da.from_zarr(path)
    return (da.stack([a[w] for w in batch]).compute() for batch in windows)


def run_crops(reader: str, path: str, batches: int) -> dict:
    """One timed run: ``batches`` batches after untimed ones elsewhere."""
    warm = locations(path, 1 if reader == "dask" else 3, epoch=99)
    for b in crop_batches(reader, path, warm):
        pass
    if reader == "dask":  # ~20 s a batch on 2 cores: a sixtieth of the batches
        batches = max(1, batches // 60)
    starts = locations(path, batches, epoch=0)
    total = 0.0
    before = decoded_bytes() if reader == "dask_lsio" else 0.0  # no engine for the others
    clock = Stopwatch()
    for b in crop_batches(reader, path, starts):
        total += float(b.sum(dtype=np.float64))
    out = clock.stop() | {"sum": total, "work": batches * BATCH}
    if reader == "dask_lsio":
        out["decoded"] = decoded_bytes() - before
    return out


def decoded_bytes() -> float:
    """Bytes dask_lsio's codecs decoded in this process so far (its ``lsio-decoded``)."""
    import dask_lsio

    return dask_lsio.get_engine().totals.snapshot().get(("lsio-decoded", "bytes"), 0.0)


def run_two(path: str, view: str, nwp: str, batches: int) -> dict:
    """Two aligned sources with dask_lsio: satellite (A's view) and NWP."""
    import dask_lsio

    sat = dask_lsio.open_zarr(view, consolidated=False)
    model = dask_lsio.open_zarr(nwp, consolidated=False)
    crop = {"sat": dict(zip(("time", "y", "x"), CROP)),
            "nwp": dict(zip(("time", "y", "x"), NWP_CROP))}
    crops = dask_lsio.RandomCrops({"sat": sat.v, "nwp": model.v}, crop, BATCH, seed=SEED,
                                  length=batches + 1)
    it = iter(crops)
    next(it)  # untimed
    total = 0.0
    clock = Stopwatch()
    for b in it:
        total += float(b["sat"].sum(dtype=np.float64)) + float(b["nwp"].sum(dtype=np.float64))
    return clock.stop() | {"sum": total, "work": batches * BATCH}


def run_stream(reader: str, path: str) -> dict:
    """The whole array along time, each block summed as it arrives. Imports, the engine and
    (dask_lsio readers) one whole untimed pass come first, so that the timed pass runs in
    a warm process, as the read benchmark's persistent workers do."""
    import zarr

    import dask_lsio

    z = zarr.open_array(path, mode="r")

    def one_pass() -> float:  # float32 sums, as the read benchmark's scan
        if reader == "iter_blocks":
            return sum(float(b.sum()) for b in dask_lsio.iter_blocks(path))
        if reader == "scan":
            return float(dask_lsio.from_zarr(path).sum().compute())
        return sum(float(z[t].sum()) for t in range(z.shape[0]))

    if reader == "zarr-loop":
        z[0]
    else:
        one_pass()
    clock = Stopwatch()
    total = one_pass()
    return clock.stop() | {"sum": total, "work": z.nbytes}


BOX = (1, 64, 64)  # one small selection: a[t, y:y + 64, x:x + 64]


def box_starts(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """``n`` box starts inside an array of ``shape``, the same for every reader."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, d - b + 1, n) for d, b in zip(shape, BOX)], axis=1)


def box_reader(reader: str, path: str, at_once: bool) -> Any:
    """A function of ``starts`` (n, 3) returning the boxes there, (n, *BOX), for
    ``reader``: all boxes in one call (``at_once``) or one box per call, as a user writes
    either; what it opens is opened here, before the clock."""
    import zarr

    import dask_lsio

    def windows(starts: np.ndarray) -> list[tuple[slice, ...]]:
        return [tuple(slice(a, a + n) for a, n in zip(s, BOX)) for s in starts.tolist()]

    if reader == "dask_lsio":
        z = zarr.open_array(path, mode="r")
        if at_once:
            return lambda starts: dask_lsio.read_boxes(z, starts, BOX)
        return lambda starts: np.stack([dask_lsio.read_boxes(z, s[None], BOX)[0]
                                        for s in starts])
    if reader == "tensorstore":
        import tensorstore as ts

        t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}},
                    read=True).result()
        if at_once:  # every read issued, then every result awaited
            return lambda starts: np.stack([f.result()
                                            for f in [t[w].read() for w in windows(starts)]])
        return lambda starts: np.stack([t[w].read().result() for w in windows(starts)])
    if reader == "dask":  # dask_lsio.from_zarr, one small compute per box
        import dask

        dask.config.set({"scheduler": "threads"})
        a = dask_lsio.from_zarr(path)
        return lambda starts: np.stack([a[w].compute() for w in windows(starts)])
    if reader in ("zarr-memory", "dask-memory"):  # the front ends' own cost: no IO, no codec
        blocks = dask_lsio.from_zarr(path)
        values = blocks.compute()
        if reader == "dask-memory":  # dask's compute of a selection of an in-memory array
            import dask
            import dask.array as da

            dask.config.set({"scheduler": "threads"})
            a = da.from_array(values, chunks=blocks.chunks)
            return lambda starts: np.stack([a[w].compute() for w in windows(starts)])
        src = zarr.open_array(path, mode="r")  # zarr-python over the same chunks, in memory
        z = zarr.create_array(zarr.storage.MemoryStore(), shape=src.shape, chunks=src.chunks,
                              dtype=src.dtype, compressors=None, filters=None)
        z[...] = values
        return lambda starts: np.stack([z[w] for w in windows(starts)])
    if reader == "lsio-pipeline":
        import dask

        dask.config.set({"lsio.strict": True})
        zarr.config.set({"codec_pipeline.path": "dask_lsio.zarr.LSIOCodecPipeline"})
    z = zarr.open_array(path, mode="r")  # zarr (default pipeline) or lsio-pipeline
    return lambda starts: np.stack([z[w] for w in windows(starts)])


def run_boxes(reader: str, path: str, n: int, at_once: bool) -> dict:
    """One timed run: ``n`` boxes at random places, after 16 untimed ones elsewhere."""
    import zarr

    shape = zarr.open_array(path, mode="r").shape
    read = box_reader(reader, path, at_once)
    read(box_starts(shape, 16, seed=99))
    starts = box_starts(shape, n, seed=SEED)
    clock = Stopwatch()
    boxes = read(starts)
    timing = clock.stop()
    assert boxes.shape == (n, *BOX), boxes.shape
    return timing | {"sum": float(boxes.sum(dtype=np.float64)), "work": n}


def run_task(task: dict[str, Any]) -> dict:
    """Run one task in this fresh process."""
    kind = task["kind"]
    if kind == "crops":
        return run_crops(task["reader"], task["path"], task["batches"])
    if kind == "two":
        return run_two(task["path"], task["view"], task["nwp"], task["batches"])
    if kind in ("boxes", "box"):  # many at once, or one at a time
        return run_boxes(task["reader"], task["path"], task["boxes"], kind == "boxes")
    return run_stream(task["reader"], task["path"])
