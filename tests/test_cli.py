"""The dask-lsio command: help with examples, --version, inspect, bench, and the demo."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec

import dask_lsio


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dask_lsio", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_the_commands_with_examples_and_version():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("info", "inspect", "demo", "bench"):
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
