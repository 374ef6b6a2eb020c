"""Large batches: 10^5 files, more files than RLIMIT_NOFILE, and no leaked descriptors or
fixed-file slots after 10^5 requests including failures."""

from __future__ import annotations

import os
import resource

import pytest

from conftest import make_engine
from dask_lsio.io import ReadRequest


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    """100,000 files of 1 KiB to 3 KiB whose content names the file."""
    root = tmp_path_factory.mktemp("many")
    paths = []
    for d in range(100):
        sub = root / str(d)
        sub.mkdir()
        for i in range(1000):
            p = str(sub / str(i))
            with open(p, "wb") as f:
                f.write(f"{d}/{i};".encode() * (100 + (i % 200)))
            paths.append(p)
    return paths


def content(path: str) -> bytes:
    d, i = path.split(os.sep)[-2:]
    return f"{d}/{i};".encode() * (100 + (int(i) % 200))


def open_descriptors() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the descriptor listdir itself used
            pass
    return sorted(out)


def occupied_slots() -> int:
    """Fixed-file slots still holding a file, over every ring of this process."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "io_uring" not in os.readlink(f"/proc/self/fd/{fd}"):
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        files = text.split("UserFiles:")[1].split("UserBufs:")[0].splitlines()[1:]
        count += sum(1 for line in files if line.strip())
    return count


def test_batch_of_100k_files(engine, many_files):
    reqs = [ReadRequest(p) for p in many_files]
    got = engine.read(reqs, size_hint=4096)
    assert len(got) == 100_000
    assert all(bytes(b) == content(r.path) for r, b in zip(reqs, got))


def test_batch_larger_than_rlimit_nofile(engine, many_files):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        reqs = [ReadRequest(p, 5, 50) for p in many_files[:5000]]
        got = engine.read(reqs)
        out = str(many_files[0])
        engine.write([(out + f".copy{i}", b"x") for i in range(2000)])
        engine.delete([out + f".copy{i}" for i in range(2000)])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert all(bytes(b) == content(r.path)[5:55] for r, b in zip(reqs, got))


def test_no_leaked_descriptors_or_slots(engine_kind, many_files, tmp_path):
    before = open_descriptors()
    with make_engine(engine_kind) as eng:
        eng.read([ReadRequest(p) for p in many_files[:20_000]])  # creates every ring it uses
        during = open_descriptors()  # the engine's own rings
        reqs = [ReadRequest(p, -64) if i % 3 else ReadRequest(p) for i, p in enumerate(many_files)]
        reqs[::97] = [ReadRequest(str(tmp_path / f"missing{i}")) for i in range(len(reqs[::97]))]
        got = eng.read(reqs, errors="return", size_hint=4096)
        assert sum(isinstance(g, FileNotFoundError) for g in got) == len(reqs[::97])
        it = eng.read_iter(reqs[:5000])
        next(it)
        it.close()  # cancelled part-way
        assert open_descriptors() == during
        assert occupied_slots() == 0
    assert open_descriptors() == before
