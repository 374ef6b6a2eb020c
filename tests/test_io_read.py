"""Reads on both engines equal plain Python reads, for every kind of range."""

from __future__ import annotations

import os
import tempfile
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_engine, write_files
from dask_lsio.io import ReadRequest


def expected(data: bytes, req: ReadRequest) -> bytes:
    """What os.pread-style semantics give for a request."""
    if req.length is None:
        return data[req.offset :] if req.offset >= 0 else data[max(0, len(data) + req.offset) :]
    return data[req.offset : req.offset + req.length]


sizes = st.lists(st.sampled_from([0, 1, 4095, 4096, 4097, 54_321, 65_536, 200_003]) | st.integers(0, 150_000), min_size=1, max_size=8)
ranges = st.lists(
    st.tuples(st.integers(0, 7), st.integers(-250_000, 250_000), st.none() | st.integers(0, 250_000)),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("direct_io", [False, True])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file_sizes=sizes, picks=ranges, hint=st.sampled_from([1, 4096, 65_536]))
def test_read_matches_python(engine_kind, direct_io, file_sizes, picks, hint):
    with tempfile.TemporaryDirectory() as d:
        files = write_files(d, file_sizes)
        paths = list(files)
        reqs = []
        for which, offset, length in picks:
            path = paths[which % len(paths)]
            if length is not None and offset < 0:
                offset = -offset
            reqs.append(ReadRequest(path, offset, length))
        with make_engine(engine_kind, direct_io=direct_io) as eng:
            got = eng.read(reqs, size_hint=hint)
            for req, buf in zip(reqs, got):
                assert bytes(buf) == expected(files[req.path], req), req
            streamed = dict(eng.read_iter(reqs, size_hint=hint))
            assert sorted(streamed) == list(range(len(reqs)))
            for i, req in enumerate(reqs):
                assert bytes(streamed[i]) == expected(files[req.path], req)


def test_read_ranges_columns(engine, tmp_path):
    files = write_files(tmp_path, [10_000, 0, 70_000])
    paths = list(files)
    got = dict(engine.read_ranges(paths, offsets=[5, 0, -100], lengths=[20, -1, -1]))
    assert bytes(got[0]) == files[paths[0]][5:25]
    assert bytes(got[1]) == b""
    assert bytes(got[2]) == files[paths[2]][-100:]
    with pytest.raises(ValueError, match="suffix"):
        list(engine.read_ranges(paths[:1], offsets=[-5], lengths=[3]))


def test_results_are_buffers(engine, tmp_path):
    files = write_files(tmp_path, [4096 * 3])
    (buf,) = engine.read([ReadRequest(next(iter(files)))])
    arr = np.frombuffer(buf, dtype=np.uint8)  # buffer protocol, no copy
    assert arr.nbytes == 4096 * 3
    assert memoryview(buf).nbytes == 4096 * 3


def test_read_into_caller_buffers(engine, tmp_path):
    files = write_files(tmp_path, [8000, 3000])
    a, b = files
    out = np.zeros(20_000, dtype=np.uint8)
    n = engine.read_into(
        [ReadRequest(a, 100, 5000), ReadRequest(b), ReadRequest(a)],
        [out[:5000], out[5000:9000], out[9000:10_000]],
    )
    assert n == [5000, 3000, 1000]  # the last read stops at the end of its buffer
    assert out[:5000].tobytes() == files[a][100:5100]
    assert out[5000:8000].tobytes() == files[b]
    assert out[9000:10_000].tobytes() == files[a][:1000]
    with pytest.raises(TypeError, match="writable"):
        engine.read_into([ReadRequest(a)], [b"readonly"])


def test_read_iter_early_close(engine, tmp_path):
    files = write_files(tmp_path, [30_000] * 500)
    reqs = [ReadRequest(p) for p in files]
    it = engine.read_iter(reqs)
    first = [next(it) for _ in range(3)]
    it.close()  # drains what is in flight, starts nothing more
    assert all(bytes(b) == files[reqs[i].path] for i, b in first)
    again = engine.read(reqs)
    assert all(bytes(b) == files[r.path] for r, b in zip(reqs, again))


def test_buffers_are_recycled(engine, tmp_path):
    files = write_files(tmp_path, [50_000] * 64)
    reqs = [ReadRequest(p) for p in files]
    got = engine.read(reqs)
    assert engine.pool.idle_bytes == 0  # the slab is in use by the results
    del got
    idle = engine.pool.idle_bytes
    assert idle > 0
    got = engine.read(reqs)
    assert engine.pool.idle_bytes == 0  # the same slab serves the next batch
    assert all(bytes(b) == files[r.path] for r, b in zip(reqs, got))


def test_empty_batch(engine):
    assert engine.read([]) == []
    assert list(engine.read_iter([])) == []
    assert engine.write([]) == []
    assert engine.delete([]) == []


def test_many_threads_one_engine(engine, tmp_path):
    files = write_files(tmp_path, [1000 * (i % 37) + 7 for i in range(400)])
    reqs = [ReadRequest(p) for p in files]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            for _ in range(20):
                pick = [reqs[i] for i in rng.integers(0, len(reqs), 50)]
                for r, b in zip(pick, engine.read(pick)):
                    assert bytes(b) == files[r.path]
                # nested batches in one thread use a second ring
                outer = engine.read_iter(pick[:10])
                next(outer)
                assert bytes(engine.read(pick[:1])[0]) == files[pick[0].path]
                outer.close()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs tmpfs at /dev/shm")
def test_direct_io_falls_back_on_tmpfs(engine_kind):
    """tmpfs refuses O_DIRECT; such files are read buffered instead of failing."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        files = write_files(d, [5000, 70_000])
        with make_engine(engine_kind, direct_io=True) as eng:
            reqs = [ReadRequest(p, 3, 4000) for p in files] + [ReadRequest(p) for p in files]
            got = eng.read(reqs)
        for r, b in zip(reqs, got):
            assert bytes(b) == expected(files[r.path], r)


def test_paths_relative_mixed_and_nested(engine, tmp_path, monkeypatch):
    """Batches open paths relative to their common directory: every shape of path list must
    give what the full paths give."""
    (tmp_path / "d" / "e").mkdir(parents=True)
    files = {}
    for rel in ["d/a", "d/e/b", "d/e/c", "top"]:
        data = os.urandom(100 + len(rel))
        (tmp_path / rel).write_bytes(data)
        files[rel] = data
    monkeypatch.chdir(tmp_path)
    cases = [
        ["d/e/b", "d/e/c"],  # common directory d/e/
        ["d/a", "d/e/b", "top"],  # only the working directory in common
        ["d/e/b", str(tmp_path / "d/e/c")],  # relative and absolute
        ["d/e/b", "d/e/c", "d/e/"],  # a path that is the common directory itself
        ["d/e/b", "d/e/bb"],  # a common prefix that is not a directory
        ["./d/e/b", "./d/../d/e/c"],
    ]
    for paths in cases:
        got = engine.read([ReadRequest(p) for p in paths], errors="return")
        for p, g in zip(paths, got):
            key = os.path.relpath(os.path.normpath(os.path.join(tmp_path, p)), tmp_path)
            if key in files:
                assert bytes(g) == files[key], (paths, p)
            else:
                assert isinstance(g, (FileNotFoundError, IsADirectoryError)), (paths, p, g)
    engine.write([("d/e/new1", b"1"), ("d/e/new2", b"2")])
    assert (tmp_path / "d/e/new1").read_bytes() == b"1"
    engine.delete(["d/e/new1", "d/e/new2"])
    assert not (tmp_path / "d/e/new1").exists()
