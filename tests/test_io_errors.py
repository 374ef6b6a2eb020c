"""Failed requests: the right OSError subclass naming path, range and errno; nothing lost."""

from __future__ import annotations

import errno
import os

import pytest

from conftest import write_files
from dask_lsio.errors import BatchIOError, LSIOError
from dask_lsio.io import ReadRequest


def test_errors_return_in_their_slots(engine, tmp_path):
    files = write_files(tmp_path, [1000, 2000])
    good = list(files)
    (tmp_path / "sub").mkdir()
    reqs = [
        ReadRequest(good[0]),
        ReadRequest(str(tmp_path / "missing"), 10, 20),
        ReadRequest(str(tmp_path / "sub")),
        ReadRequest(os.path.join(good[1], "child")),
        ReadRequest(good[1], -500),
    ]
    got = engine.read(reqs, errors="return")
    assert bytes(got[0]) == files[good[0]]
    assert isinstance(got[1], FileNotFoundError)
    assert got[1].errno == errno.ENOENT
    assert got[1].filename == str(tmp_path / "missing")
    assert "bytes 10-30" in str(got[1]) and "missing" in str(got[1])
    assert isinstance(got[2], IsADirectoryError)
    assert isinstance(got[3], NotADirectoryError)
    assert bytes(got[4]) == files[good[1]][-500:]


def test_errors_raise_together_after_the_batch(engine, tmp_path):
    files = write_files(tmp_path, [3000] * 50)
    reqs = [ReadRequest(p) for p in files]
    missing = [ReadRequest(str(tmp_path / f"nope{i}"), -8) for i in range(3)]
    with pytest.raises(BatchIOError) as info:
        engine.read(reqs[:20] + missing + reqs[20:])
    group = info.value
    assert isinstance(group, ExceptionGroup) and isinstance(group, LSIOError)
    assert "3 of 53 reads failed" in str(group)
    assert sorted(e.filename for e in group.exceptions) == sorted(str(r.path) for r in missing)
    assert all("last 8 bytes" in str(e) for e in group.exceptions)
    # except* works on the group as on any ExceptionGroup
    try:
        engine.read(missing)
    except* FileNotFoundError as eg:
        assert len(eg.exceptions) == 3


def test_read_iter_raises_after_yielding_the_rest(engine, tmp_path):
    files = write_files(tmp_path, [100] * 10)
    reqs = [ReadRequest(p) for p in files] + [ReadRequest(str(tmp_path / "x"))]
    seen = []
    with pytest.raises(BatchIOError):
        for i, buf in engine.read_iter(reqs):
            seen.append(i)
    assert sorted(seen) == list(range(10))
    got = dict(engine.read_iter(reqs, errors="return"))
    assert isinstance(got[10], FileNotFoundError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(engine, tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"x")
    path.chmod(0)
    (err,) = engine.read([ReadRequest(str(path))], errors="return")
    assert isinstance(err, PermissionError)


def test_bad_arguments(engine, tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        ReadRequest("p", -5, 3)
    with pytest.raises(ValueError, match=">= 0"):
        ReadRequest("p", 0, -1)
    with pytest.raises(ValueError, match="errors"):
        engine.read([], errors="ignore")
    with pytest.raises(ValueError, match="NUL"):
        engine.read([ReadRequest("a\0b")])


def test_closed_engine_refuses_work(engine_kind, tmp_path):
    from conftest import make_engine

    eng = make_engine(engine_kind)
    eng.close()
    eng.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        eng.read([ReadRequest(str(tmp_path))])
