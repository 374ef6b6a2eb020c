"""``dask-lsio demo``: a two-minute tour on a weather-like cube it generates once.

Four things people do with such data, each done with dask-lsio and then the usual way, in the
same run and on the same (warm) data, the results checked equal: statistics over time
(``dask_lsio.open_zarr`` / ``xarray.open_zarr``), a training batch of random crops
(``dask_lsio.RandomCrops`` / a zarr-python loop), writing a derived field back
(``dask_lsio.to_zarr`` / ``dask.array.to_zarr``) and reading with zarr-python (our codec
pipeline / its default one). It ends with one table: what it did, how fast, how much faster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import dask
import dask.array as da
import numpy as np
import zarr
from dask.diagnostics import ProgressBar
from zarr.codecs import BloscCodec

import dask_lsio

SIZE = 256  # a 256 x 256 grid; 1,024 hourly steps make 256 MiB of float32
CHUNKS = (1, 128, 128)  # 64 KiB chunks in shards of 64 steps (16 MiB)
CROP, BATCH = {"time": 8, "y": 64, "x": 64}, 32
LSIO_PIPELINE = {"codec_pipeline.path": "dask_lsio.zarr.LSIOCodecPipeline"}


@dataclass(frozen=True)
class Row:
    """One line of the summary: what was done, our rate, the peer and its rate."""

    what: str
    ours: float
    peer: str
    theirs: float
    unit: str
    note: str = ""

    def cells(self) -> list[str]:
        def fmt(v: float) -> str:
            return f"{v:,.0f} {self.unit}" if v >= 100 else f"{v:.3g} {self.unit}"

        return [self.what, fmt(self.ours), f"{self.peer}: {fmt(self.theirs)}",
                f"{self.ours / self.theirs:.1f}x"]


def main(argv: list[str] | None = None) -> int:
    """Run the tour; return 0."""
    p = argparse.ArgumentParser(prog="dask-lsio demo", description="A two-minute tour of "
                                "dask-lsio on a weather-like cube it generates once.")
    p.add_argument("--data-dir", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dask-lsio", "demo"))
    p.add_argument("--steps", type=int, default=1024, help="hourly time steps (1024: 256 MiB)")
    args = p.parse_args(argv)
    steps = args.steps
    try:
        import xarray as xr
    except ImportError:
        print("the demo uses xarray: pip install 'dask-lsio[xarray]'")
        return 1
    root = Path(args.data_dir)
    path = root / f"weather-{steps}.zarr"
    print(f"dask-lsio {dask_lsio.__version__}: engine {dask_lsio.get_engine().kind}, "
          f"{os.cpu_count()} cores\n")
    step("1/5", f"a weather-like cube: t2m (time {steps} h, y {SIZE}, x {SIZE}) float32, "
                f"Zarr v3, shards {shards(steps)} of chunks {CHUNKS}, blosc-lz4")
    if not (path / "t2m" / "zarr.json").exists():
        made = timed(lambda: make_weather(path, steps, xr))
        print(f"      written with dask_lsio.to_zarr in {made:.1f} s: {path}")
    else:
        print(f"      already there: {path}")
    nbytes = steps * SIZE * SIZE * 4
    rows = [statistics(path, nbytes, xr), crops(path), write_back(path, root, steps),
            zarr_python(path, steps)]
    print("\nSummary (warm page cache; the peers ran in this same run, on the same data, "
          "and gave the same values):\n")
    table([["what", "dask-lsio", "the usual way", "faster"]] + [r.cells() for r in rows])
    for r in rows:
        if r.note:
            print(f"\n{r.what.split(' (')[0]}: {r.note}")
    return 0


def make_weather(path: Path, steps: int, xr: Any) -> None:
    """The sample: coordinates and metadata written by xarray, values by dask_lsio.to_zarr
    into the array xarray created (a smooth field with daily and seasonal cycles, plus
    noise, rounded to 0.01 K as such data usually is)."""
    t = np.datetime64("2025-01-01T00") + np.arange(steps).astype("timedelta64[h]")
    lat, lon = np.linspace(60, 35, SIZE), np.linspace(-10, 25, SIZE)
    hours = da.arange(steps, chunks=64, dtype="float32")[:, None, None]
    la = da.from_array(lat.astype("float32"), chunks=SIZE)[None, :, None]
    lo = da.from_array(lon.astype("float32"), chunks=SIZE)[None, None, :]
    field = (300 - 0.6 * la + 4 * da.sin(lo / 7 + hours / 200)
             + 5 * da.sin(2 * np.pi * (hours / 24 + lo / 360)))
    noise = da.random.default_rng(0).standard_normal((steps, SIZE, SIZE), chunks=(64, SIZE, SIZE))
    values = (field + 0.5 * noise).astype("float32").round(2)
    ds = xr.Dataset({"t2m": (("time", "y", "x"), values)},
                    coords={"time": t, "lat": ("y", lat), "lon": ("x", lon)},
                    attrs={"title": "dask-lsio demo: a weather-like cube"})
    ds["t2m"].attrs.update(units="K", long_name="2 m temperature")
    encoding = {"t2m": {"chunks": CHUNKS, "shards": shards(steps), "compressors": [codec()]}}
    shutil.rmtree(path, ignore_errors=True)
    ds.to_zarr(path, mode="w", compute=False, encoding=encoding, zarr_format=3,
               consolidated=False)
    with ProgressBar(minimum=1):
        dask_lsio.to_zarr(values, path, component="t2m", mode="r+")


def statistics(path: Path, nbytes: int, xr: Any) -> Row:
    step("2/5", "statistics over time: mean and standard deviation of every grid point")
    ours = dask_lsio.open_zarr(path, consolidated=False)

    def stats(ds: Any) -> tuple:
        return dask.compute(ds.t2m.mean("time"), ds.t2m.std("time"))

    # the floor: the same arithmetic on the values already in memory (the fastest of three
    # runs after a first: that one also pays this VM's first touch of fresh memory, for
    # every reader after it; one run alone came out above the read itself on a noisy VM)
    held = ours.copy(data=None).assign(t2m=ours.t2m.copy(data=ours.t2m.data.persist()))
    stats(held)
    t_memory = min(timed(lambda: stats(held)) for _ in range(3))
    held = None  # (its memory back before the reads)
    with ProgressBar(minimum=0.5):
        t_ours, (mean, std) = timed_result(lambda: stats(ours))
    print(f"      dask_lsio.open_zarr: {rate(nbytes, t_ours)}")
    plain = xr.open_zarr(path, consolidated=False)
    t_plain, (mean2, std2) = timed_result(lambda: stats(plain))
    print(f"      xarray.open_zarr:    {rate(nbytes, t_plain)}")
    print(f"      the arithmetic alone, on the values in memory: {t_memory:.2f} s")
    # float32 sums in another order (other blocks): equal to float32 precision
    xr.testing.assert_allclose(mean, mean2, rtol=1e-5)
    xr.testing.assert_allclose(std, std2, rtol=1e-4)
    return Row("statistics (open_zarr, mean+std over time)", nbytes / t_ours / 1e9,
               "xarray.open_zarr", nbytes / t_plain / 1e9, "GB/s",
               f"of its {t_ours:.2f} s, {min(t_memory, t_ours):.2f} s are xarray's arithmetic "
               "(the same on values already in memory): reading cost dask-lsio "
               f"{max(t_ours - t_memory, 0):.2f} s, xarray.open_zarr {t_plain - t_memory:.1f} s")


def crops(path: Path) -> Row:
    step("3/5", f"training batches: {BATCH} random crops of time 8 x y 64 x x 64, "
                "the same place and time per example")
    source = dask_lsio.open_zarr(path, consolidated=False)
    loader = dask_lsio.RandomCrops(source, CROP, batch_size=BATCH, seed=0, length=40)
    batches = iter(loader)
    for _ in range(3):  # the prefetch threads start; indexes of the shards come in
        next(batches)
    t_ours = timed(lambda: [next(batches) for _ in range(30)])
    print(f"      dask_lsio.RandomCrops: {30 * BATCH / t_ours:,.0f} crops/s")
    z = zarr.open_array(path / "t2m", mode="r")
    starts = loader.locations(0, 0)["t2m"]
    want = next(iter(dask_lsio.RandomCrops(source, CROP, batch_size=BATCH, seed=0, length=1)))
    t_loop, got = timed_result(lambda: [np.asarray(z[t:t + 8, y:y + 64, x:x + 64])
                                        for t, y, x in starts.tolist()])
    print(f"      zarr-python loop:      {BATCH / t_loop:,.0f} crops/s")
    np.testing.assert_array_equal(np.stack(got), want["t2m"])
    return Row(f"training batch ({BATCH} random crops 8x64x64)", 30 * BATCH / t_ours,
               "zarr-python loop", BATCH / t_loop, "crops/s")


def write_back(path: Path, root: Path, steps: int) -> Row:
    step("4/5", "write the anomaly (t2m minus its mean over time) as a new sharded array")
    x = dask_lsio.from_zarr(path, component="t2m")
    anomaly = x - x.mean(axis=0)
    nbytes = steps * SIZE * SIZE * 4
    options = dict(chunks=CHUNKS, shards=shards(steps), compressors=[codec()])
    ours_path, theirs_path = root / "anomaly-lsio.zarr", root / "anomaly-dask.zarr"
    with ProgressBar(minimum=0.5):
        t_ours = timed(lambda: dask_lsio.to_zarr(anomaly, ours_path, mode="w", **options))
    print(f"      dask_lsio.to_zarr:  {rate(nbytes, t_ours)}")
    plain = da.from_zarr(str(path), component="t2m")  # dask's own path end to end
    plain_anomaly = (plain - plain.mean(axis=0)).rechunk(shards(steps))
    t_dask = timed(lambda: da.to_zarr(plain_anomaly, str(theirs_path), mode="w", **options))
    print(f"      dask.array.to_zarr: {rate(nbytes, t_dask)}")
    np.testing.assert_allclose(zarr.open_array(ours_path)[::97],
                               zarr.open_array(theirs_path)[::97], rtol=0, atol=1e-3)
    for p in (ours_path, theirs_path):
        shutil.rmtree(p)
    return Row("write the anomaly (to_zarr, sharded)", nbytes / t_ours / 1e9,
               "dask.array.to_zarr", nbytes / t_dask / 1e9, "GB/s")


def zarr_python(path: Path, steps: int) -> Row:
    step("5/5", "zarr-python reads the whole array: our codec pipeline, then its default")
    nbytes = steps * SIZE * SIZE * 4
    out = np.empty((steps, SIZE, SIZE), "float32")  # one output for both: no page faults
    with zarr.config.set(LSIO_PIPELINE):
        ours = zarr.open_array(path / "t2m", mode="r")
        t_ours = timed(lambda: ours.get_basic_selection(..., out=zarr_buffer(out)))
    first = out[::97].copy()
    print(f"      LSIOCodecPipeline: {rate(nbytes, t_ours)}")
    plain = zarr.open_array(path / "t2m", mode="r")
    t_plain = timed(lambda: plain.get_basic_selection(..., out=zarr_buffer(out)))
    print(f"      default pipeline:  {rate(nbytes, t_plain)}")
    np.testing.assert_array_equal(first, out[::97])
    return Row("zarr-python z[...] (codec pipeline)", nbytes / t_ours / 1e9,
               "zarr's default pipeline", nbytes / t_plain / 1e9, "GB/s")


# -- small helpers ---------------------------------------------------------------------------
def shards(steps: int) -> tuple[int, int, int]:
    return (min(64, steps), SIZE, SIZE)


def codec() -> BloscCodec:
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4)


def zarr_buffer(out: np.ndarray) -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().nd_buffer.from_ndarray_like(out)


def step(number: str, what: str) -> None:
    print(f"[{number}] {what}", flush=True)


def timed(fn: Callable[[], Any]) -> float:
    return timed_result(fn)[0]


def timed_result(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB in {seconds:.2f} s = {nbytes / seconds / 1e9:.3g} GB/s"


def table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = "  ".join("-" * w for w in widths)
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            print(line)


if __name__ == "__main__":
    raise SystemExit(main())
