"""The dask-lsio command: help with examples, --version, inspect, rechunk, bench, and the
demo."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec

import dask_lsio
from dask_lsio import cli as cli_module
from dask_lsio import cli_rechunk


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dask_lsio", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_the_commands_with_examples_and_version():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("info", "inspect", "rechunk", "demo", "bench"):
        assert f"\n    {command}" in out.stdout
    assert "examples:" in out.stdout and "dask-lsio inspect weather.zarr" in out.stdout
    version = cli("--version")
    assert version.stdout.strip() == f"dask-lsio {dask_lsio.__version__}"
    assert cli("inspect").returncode == 2  # argparse: the path is required


def test_inspect_says_how_each_array_is_read(tmp_path):
    group = zarr.open_group(tmp_path / "g", mode="w")
    group.create_array("fast", shape=(8, 6), chunks=(2, 3), shards=(4, 6), dtype="float32",
                       compressors=BloscCodec(cname="lz4"), dimension_names=["time", "x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group.create_group("sub").create_array(
            "odd", shape=(4,), chunks=(2,), dtype="int16",
            serializer=ShardingCodec(chunk_shape=(1,), codecs=[BytesCodec()]))
    out = cli("inspect", str(tmp_path / "g"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "2 arrays" in text and "\nfast\n" in text and "\nsub/odd\n" in text
    fast = text[text.index("\nfast\n"):text.index("\nsub/odd\n")]
    assert "(8, 6) (time, x)" in fast and "shards    (4, 6)" in fast
    assert "sharding_indexed[bytes -> blosc]" in fast and "in 2 shards" in fast
    assert "C kernel (the fast path)" in fast
    odd = text[text.index("\nsub/odd\n"):]
    assert "zarr-python (slower)" in odd and "codecs after sharding_indexed" in odd
    one = cli("inspect", str(tmp_path / "g"), "--component", "fast")
    assert "(the array itself)" in one.stdout
    missing = cli("inspect", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "no Zarr array or group at" in missing.stderr


def test_bench_runs_the_checkout_benchmarks():
    out = cli("bench", "io", "--help")  # options after the name go to the benchmark
    assert out.returncode == 0, out.stderr
    assert "bench_io.py" in out.stdout and "--quick" in out.stdout


def test_demo_tells_its_story_and_ends_with_the_summary(tmp_path):
    pytest.importorskip("xarray")
    out = cli("demo", "--steps", "64", "--data-dir", str(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    for k in range(1, 6):
        assert any(line.startswith(f"[{k}/5]") for line in lines)
    table = lines[lines.index(next(x for x in lines if x.startswith("what "))):]
    assert len(table) >= 2 + 4  # header, rule, four rows (then notes)
    for row in table[2:6]:
        assert row.rstrip().endswith("x") and float(row.split()[-1][:-1]) > 0
    assert "statistics" in table[2] and "random crops" in table[3]
    assert not any("FAIL" in line for line in lines)
    assert (tmp_path / "weather-64.zarr" / "t2m" / "zarr.json").exists()
    again = cli("demo", "--steps", "64", "--data-dir", str(tmp_path), timeout=300)
    assert "already there" in again.stdout  # the sample is made once
    np.testing.assert_equal(zarr.open_array(tmp_path / "weather-64.zarr" / "t2m").shape,
                            (64, 256, 256))


# -- rechunk ---------------------------------------------------------------------------------
METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def weather(path, zarr_format: int = 3, **options) -> np.ndarray:
    """A (50, 12, 10) float32 array of one map per step, dims (time, y, x), at ``path``."""
    data = (np.arange(50 * 12 * 10, dtype="float32") + 1).reshape(50, 12, 10)
    dims = ["time", "y", "x"]
    if zarr_format == 3:
        options["dimension_names"] = dims
    else:
        options["attributes"] = {"_ARRAY_DIMENSIONS": dims}
    a = zarr.create_array(str(path), shape=data.shape, chunks=(1, 12, 10), dtype="float32",
                          zarr_format=zarr_format, **options)
    a[:] = data
    return data


def summary(stdout: str) -> dict[str, str]:
    """The table after the run: {label: value} (labels are one or two words)."""
    rows = {}
    for line in stdout.rsplit("\n\n", 1)[-1].splitlines():
        label, _, value = line.partition("  ")
        rows[label.strip()] = value.strip()
    return rows


def stored_keys(path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def test_rechunk_by_dimension_names_and_by_sizes(tmp_path):
    data = weather(tmp_path / "maps.zarr")
    out = cli("rechunk", str(tmp_path / "maps.zarr"), str(tmp_path / "series.zarr"),
              "--chunks", "time=-1,y=4,x=4", "--max-mem", "1MB")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = summary(out.stdout)
    assert rows["source"] == str(tmp_path / "maps.zarr")
    assert rows["target"] == str(tmp_path / "series.zarr")
    assert "24,000 bytes" in rows["array data"] and "bytes" in rows["stored"]
    assert rows["chunks"] == "9 objects"  # 1 x 3 x 3 target chunks
    assert float(rows["seconds"]) > 0 and "GB/s" in rows["throughput"]
    assert "MiB" in rows["peak memory"] and "tasks" in rows["plan"]
    series = zarr.open_array(tmp_path / "series.zarr", mode="r")
    assert series.chunks == (50, 4, 4)
    np.testing.assert_array_equal(series[:], data)

    out = cli("rechunk", str(tmp_path / "maps.zarr"), str(tmp_path / "blocks.zarr"),
              "--chunks", "25,6,-1", "--max-mem", "1MB", "--workers", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert summary(out.stdout)["chunks"] == "4 objects"
    blocks = zarr.open_array(tmp_path / "blocks.zarr", mode="r")
    assert blocks.chunks == (25, 6, 10)
    np.testing.assert_array_equal(blocks[:], data)

    again = cli("rechunk", str(tmp_path / "maps.zarr"), str(tmp_path / "blocks.zarr"),
                "--chunks", "25,6,-1", "--max-mem", "1MB")  # the same: nothing left to do
    assert again.returncode == 0, again.stderr[-3000:]
    rows = summary(again.stdout)
    assert "done by an earlier run: skipped" in rows["plan"] and "resumed" in rows["throughput"]


def test_rechunk_converts_v2_to_sharded_v3_with_zstd(tmp_path):
    from numcodecs import GZip

    data = weather(tmp_path / "v2.zarr", zarr_format=2, compressors=GZip(level=1))
    out = cli("rechunk", str(tmp_path / "v2.zarr"), str(tmp_path / "v3.zarr"),
              "--chunks", "50,2,2", "--shards", "-1,4,10", "--compressor", "zstd",
              "--zarr-format", "3", "--max-mem", "4MiB")
    assert out.returncode == 0, out.stderr[-3000:]
    assert summary(out.stdout)["chunks"] == "3 objects"  # shards
    v3 = zarr.open_array(tmp_path / "v3.zarr", mode="r")
    assert v3.metadata.zarr_format == 3
    assert v3.chunks == (50, 2, 2) and v3.shards == (50, 4, 10)
    assert "zstd" in cli_module.codec_names(v3.metadata)
    np.testing.assert_array_equal(v3[:], data)


def test_rechunk_a_group_array_by_array(tmp_path):
    data = weather(tmp_path / "g.zarr" / "t2m")
    zarr.open_group(tmp_path / "g.zarr", mode="a")  # the group around it
    u10 = zarr.create_array(str(tmp_path / "g.zarr" / "u10"), shape=(50, 12), chunks=(1, 12),
                            dtype="int16", dimension_names=["time", "y"])
    u10[:] = np.arange(600, dtype="int16").reshape(50, 12)
    out = cli("rechunk", str(tmp_path / "g.zarr"), str(tmp_path / "out.zarr"),
              "--chunks", "t2m:time=-1,y=6,x=5", "--max-mem", "1MB")
    assert out.returncode == 0, out.stderr[-3000:]
    group = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert group["t2m"].chunks == (50, 6, 5)
    assert group["u10"].chunks == (1, 12)  # not named: copied as it is
    np.testing.assert_array_equal(group["t2m"][:], data)
    np.testing.assert_array_equal(group["u10"][:], u10[:])
    assert summary(out.stdout)["chunks"] == "54 objects"  # 4 + 50


def test_rechunk_dry_run_prints_the_plan_and_writes_no_data(tmp_path):
    weather(tmp_path / "maps.zarr")
    out = cli("rechunk", str(tmp_path / "maps.zarr"), str(tmp_path / "series.zarr"),
              "--chunks", "time=-1,y=4,x=4", "--max-mem", "1MB", "--dry-run")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tasks" in out.stdout and "seconds" not in out.stdout
    for path in tmp_path.iterdir():
        if path.name != "maps.zarr":  # the target (and a temp array): metadata at most
            assert {p.rsplit("/", 1)[-1] for p in stored_keys(path)} <= METADATA, path


@pytest.mark.parametrize("argv, message", [
    (["--chunks", "time=abc"], "'abc' is not a size"),
    (["--chunks", "8,,8"], "expected sizes separated by commas"),
    (["--chunks", "0,4,4"], "'0' is not a size"),
    (["--chunks", "time=8,4"], "not both"),
    (["--chunks", ":4,4"], "no array name"),
    (["--chunks", "4,4,4", "--chunks", "8,8,8"], "name the array"),
    (["--chunks", "a:4", "--chunks", "a:8"], "'a' given twice"),
    (["--chunks", "4,4,4", "--max-mem", "lots"], "--max-mem"),
    (["--chunks", "4,4,4", "--storage-option", "anon"], "KEY=VALUE"),
    (["--chunks", "4,4,4", "--zarr-format", "4"], "--zarr-format"),
    (["--chunks", "4,4,4", "--workers", "2", "--scheduler", "tcp://h:8786"], "--workers"),
])
def test_rechunk_usage_errors_exit_2(tmp_path, capsys, argv, message):
    if "--max-mem" not in argv:
        argv = [*argv, "--max-mem", "1MB"]
    with pytest.raises(SystemExit) as e:
        cli_module.main(["rechunk", str(tmp_path / "a"), str(tmp_path / "b"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "dask-lsio rechunk: error: argument" in err and message in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("text, spec", [
    ("time=8760,y=8,x=8", (None, {"time": 8760, "y": 8, "x": 8})),
    ("1024,16,16", (None, (1024, 16, 16))),
    ("-1", (None, (-1,))),
    ("all,16, 16", (None, (-1, 16, 16))),
    ("t2m:time=-1", ("t2m", {"time": -1})),
    ("sub/t2m:1,2", ("sub/t2m", (1, 2))),
])
def test_rechunk_shape_values(text, spec):
    assert cli_rechunk._shape_arg(text) == spec


def test_rechunk_shape_values_combine():
    def error(message):
        raise AssertionError(message)

    values = [cli_rechunk._shape_arg(t) for t in ("t2m:-1,4,4", "y=6", "u10:x=2")]
    assert cli_rechunk._combine(values, "--chunks", error) == {
        "t2m": (-1, 4, 4), "y": 6, "u10": {"x": 2}}
    assert cli_rechunk.glue_negative_values(["--chunks", "-1,4", "-v", "--shards", "-1"],
                                            ("--chunks", "--shards")) == [
        "--chunks=-1,4", "-v", "--shards=-1"]


def test_rechunk_errors_exit_1_with_one_line(tmp_path):
    missing = cli("rechunk", str(tmp_path / "nothing.zarr"), str(tmp_path / "out.zarr"),
                  "--chunks", "4,4", "--max-mem", "1MB")
    assert missing.returncode == 1
    assert missing.stderr.startswith("dask-lsio rechunk: error: ")
    assert "nothing.zarr" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    verbose = cli("rechunk", str(tmp_path / "nothing.zarr"), str(tmp_path / "out.zarr"),
                  "--chunks", "4,4", "--max-mem", "1MB", "-v")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr

    weather(tmp_path / "maps.zarr")
    small = cli("rechunk", str(tmp_path / "maps.zarr"), str(tmp_path / "out.zarr"),
                "--chunks", "time=-1,y=4,x=4", "--max-mem", "100B")
    assert small.returncode == 1, small.stdout
    assert "max_mem" in small.stderr and "the smallest that works is" in small.stderr

    wrong = cli("rechunk", str(tmp_path / "maps.zarr"), str(tmp_path / "out.zarr"),
                "--chunks", "time=-1,y=4,q=4", "--max-mem", "1MB")
    assert wrong.returncode == 1 and "'q'" in wrong.stderr

    assert cli("rechunk", str(tmp_path / "maps.zarr"), str(tmp_path / "out.zarr"),
               "--chunks", "time=-1,y=4,x=4", "--max-mem", "1MB").returncode == 0
    other = cli("rechunk", str(tmp_path / "maps.zarr"), str(tmp_path / "out.zarr"),
                "--chunks", "time=-1,y=6,x=5", "--max-mem", "1MB")
    assert other.returncode == 1 and "--overwrite" in other.stderr
    replaced = cli("rechunk", str(tmp_path / "maps.zarr"), str(tmp_path / "out.zarr"),
                   "--chunks", "time=-1,y=6,x=5", "--max-mem", "1MB", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert zarr.open_array(tmp_path / "out.zarr").chunks == (50, 6, 5)


def test_rechunk_on_s3_with_storage_options(tmp_path, s3):
    from s3_fixtures import SECRET

    store = s3.zarr_store("maps.zarr")
    data = (np.arange(50 * 12 * 10, dtype="float32") + 1).reshape(50, 12, 10)
    zarr.create_array(store, shape=data.shape, chunks=(1, 12, 10), dtype="float32")[:] = data
    options = [f"--storage-option={k}={v}" for k, v in s3.storage_options.items()]
    out = cli("rechunk", f"{s3.url}/maps.zarr", f"{s3.url}/series.zarr", "--chunks",
              "-1,4,4", "--max-mem", "1MB", *options)
    assert out.returncode == 0, out.stderr[-3000:]
    assert summary(out.stdout)["chunks"] == "9 objects"
    assert SECRET not in out.stdout + out.stderr
    series = zarr.open_array(s3.zarr_store("series.zarr", read_only=True), mode="r")
    assert series.chunks == (50, 4, 4)
    np.testing.assert_array_equal(series[:], data)
    bad = cli("rechunk", f"{s3.url}/nothing.zarr", f"{s3.url}/out.zarr", "--chunks", "4",
              "--max-mem", "1MB", *options)
    assert bad.returncode == 1 and "nothing.zarr" in bad.stderr
    assert SECRET not in bad.stdout + bad.stderr


def test_rechunk_on_a_distributed_scheduler(tmp_path, loopback_cluster):
    data = weather(tmp_path / "maps.zarr")
    with loopback_cluster(n_workers=1, processes=False, protocol="tcp",
                          host="127.0.0.1") as (cluster, _):
        out = cli("rechunk", str(tmp_path / "maps.zarr"), str(tmp_path / "series.zarr"),
                  "--chunks", "-1,4,4", "--max-mem", "1MB",
                  "--scheduler", cluster.scheduler_address)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = summary(out.stdout)
    assert rows["chunks"] == "9 objects" and "workers run elsewhere" in rows["peak memory"]
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "series.zarr")[:], data)
