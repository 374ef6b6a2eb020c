"""Writes are atomic (temporary name, then rename), create parents and leave no debris."""

from __future__ import annotations

import os
import threading

import pytest

from dask_lsio.errors import BatchIOError
from dask_lsio.io import ReadRequest


def listing(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_write_creates_parents_and_reads_back(engine, tmp_path):
    items = [(str(tmp_path / "a" / "c" / str(i) / "0"), os.urandom(i * 100)) for i in range(40)]
    assert engine.write(items) == [len(d) for _, d in items]
    for path, data in items:
        with open(path, "rb") as f:
            assert f.read() == data
    got = engine.read([ReadRequest(p) for p, _ in items])
    assert [bytes(b) for b in got] == [d for _, d in items]
    assert not [f for f in listing(tmp_path) if "lsio-tmp" in f]


def test_write_accepts_buffers(engine, tmp_path):
    import numpy as np

    arr = np.arange(1000, dtype=np.float64)
    engine.write([(tmp_path / "arr", arr), (tmp_path / "mv", memoryview(b"abc"))])
    assert np.array_equal(np.fromfile(tmp_path / "arr"), arr)
    assert (tmp_path / "mv").read_bytes() == b"abc"


def test_overwrite_replaces_whole_object(engine, tmp_path):
    path = str(tmp_path / "obj")
    engine.write([(path, b"a" * 100_000)])
    engine.write([(path, b"b" * 10)])
    assert open(path, "rb").read() == b"b" * 10


def test_failed_write_leaves_nothing(engine, tmp_path):
    """A rename onto a directory fails after the data was written: the temporary goes too."""
    (tmp_path / "isdir").mkdir()
    (tmp_path / "file").write_bytes(b"keep")
    items = [
        (str(tmp_path / "isdir"), b"x" * 5000),
        (str(tmp_path / "file" / "child"), b"y"),
        (str(tmp_path / "ok"), b"z"),
    ]
    got = engine.write(items, errors="return")
    assert isinstance(got[0], IsADirectoryError) and "rename" in str(got[0])
    assert isinstance(got[1], (NotADirectoryError, FileNotFoundError))
    assert got[2] == 1
    assert listing(tmp_path) == ["file", "ok"]
    assert (tmp_path / "file").read_bytes() == b"keep"
    with pytest.raises(BatchIOError, match="1 of 1 writes failed"):
        engine.write(items[:1])


def test_readers_never_see_torn_objects(engine, tmp_path):
    path = str(tmp_path / "hot")
    a, b = b"a" * 3_000_000, b"b" * 1_000_000
    engine.write([(path, a)])
    stop = threading.Event()
    bad: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            with open(path, "rb") as f:
                data = f.read()
            if data not in (a, b):
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(60):
            engine.write([(path, a if i % 2 else b)])
    finally:
        stop.set()
        t.join()
    assert not bad
    assert listing(tmp_path) == ["hot"]


def test_delete(engine, tmp_path):
    engine.write([(tmp_path / f"d{i}", b"x") for i in range(10)])
    assert engine.delete([tmp_path / f"d{i}" for i in range(15)]) == [None] * 15
    assert listing(tmp_path) == []
    (tmp_path / "dir").mkdir()
    (err,) = engine.delete([tmp_path / "dir"], errors="return")
    assert isinstance(err, IsADirectoryError) or err.errno in (1, 21)
