"""Write locks (dask_lsio.io.locks) and files held open across batches (dask_lsio.io.pin)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dask_lsio.io.locks import lock_path, locked
from dask_lsio.io.pin import ABSENT, PinnedFiles


def test_lock_excludes_threads_and_leaves_no_file(tmp_path):
    path = str(tmp_path / "c" / "0" / "0")  # its directory does not exist yet
    inside, overlaps = [0], []

    def hold(i: int) -> None:
        for _ in range(20):
            with locked([path]):
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.0005)
                inside[0] -= 1

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlaps) == 1 and len(overlaps) == 80
    assert not os.path.exists(lock_path(path))  # removed by its last holder
    assert os.listdir(tmp_path / "c" / "0") == []


def _hold_in_child(path: str, ready, release) -> None:
    with locked([path]):
        ready.set()
        release.wait(30)


def test_lock_excludes_processes_and_times_out_naming_the_object(tmp_path):
    path = str(tmp_path / "shard")
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_in_child, args=(path, ready, release))
    child.start()
    try:
        assert ready.wait(60)
        t = time.monotonic()
        with pytest.raises(TimeoutError, match="lsio.lock-timeout") as info, \
                locked([path], timeout=0.3):
            pass
        assert time.monotonic() - t >= 0.3
        assert info.value.filename == path
    finally:
        release.set()
        child.join(30)
    with locked([path], timeout=5):  # released by the child
        pass


def test_lock_of_a_killed_holder_is_released(tmp_path):
    path = str(tmp_path / "shard")
    code = ("import sys, time; from dask_lsio.io.locks import locked\n"
            f"with locked([{path!r}]):\n    print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        child.kill()
        child.wait(30)
        with locked([path], timeout=5):  # the kernel dropped the dead holder's lock
            pass
    finally:
        child.kill()


def test_pinned_file_reads_the_version_it_opened(tmp_path, engine):
    path = str(tmp_path / "shard")
    with open(path, "wb") as f:
        f.write(b"old version " * 10)
    missing = str(tmp_path / "missing")
    with PinnedFiles([path, missing]) as files:
        assert files.read_paths[1] is None and files.identity(1) == ABSENT
        before = files.identity(0)
        with open(path + ".tmp", "wb") as f:
            f.write(b"NEW" * 7)
        os.rename(path + ".tmp", path)  # a writer renames a new version into place
        assert files.identity(0)[:3] == before[:3]  # still the old file (its ctime moved:
        # the kernel stamps the unlink of its name)
        got = dict(engine.read_ranges([files.read_paths[0], files.read_paths[0]],
                                      np.array([0, -12]), np.array([3, -1])))
        assert bytes(got[0]) == b"old" and bytes(got[1]) == b"old version "
    with PinnedFiles([path]) as files:
        assert files.identity(0)[:3] != before[:3]
        assert bytes(next(engine.read_ranges(files.read_paths))[1]) == b"NEW" * 7


def test_pinned_files_close_what_they_opened_on_error(tmp_path):
    (tmp_path / "a").write_bytes(b"x")
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(NotADirectoryError):  # not "absent": an error to report
        PinnedFiles([str(tmp_path / "a"), str(tmp_path / "a" / "b")])
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_sharded_region_read_in_pieces_of_few_open_files(tmp_path, monkeypatch, limit):
    """A region of more shards than a caller may hold open is read in pieces (along the
    first axes; pieces that are not contiguous in the output go through a scratch array)."""
    import zarr

    import dask_lsio.zarr.read as read
    from dask_lsio.zarr.spec import spec_from_array

    values = np.arange(6 * 10 * 9, dtype="int32").reshape(6, 10, 9)
    z = zarr.create_array(tmp_path / "s", shape=values.shape, chunks=(1, 2, 3),
                          shards=(2, 4, 3), dtype="int32", fill_value=-1)
    z[...] = values
    z[0:2, 4:8, 3:6] = -1  # one absent shard
    values[0:2, 4:8, 3:6] = -1
    spec = spec_from_array(str(tmp_path / "s"), z)
    from dask_lsio.store import LocalStore

    monkeypatch.setattr(LocalStore, "max_held", lambda self: limit)
    for region in [(slice(0, 6), slice(0, 10), slice(0, 9)), (slice(1, 5), slice(3, 9), slice(2, 8))]:
        got = read.read_region(spec, region)
        np.testing.assert_array_equal(got, values[region])
        pieces = list(read.pieces(region, spec.grid, limit))
        cells = [np.prod([(p.stop - 1) // g - p.start // g + 1 for p, g in zip(piece, spec.grid)])
                 for piece in pieces]
        assert max(cells) <= limit and len(pieces) > 1


def test_max_pinned_raises_a_low_soft_limit():
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))\n"
            "from dask_lsio.io.pin import max_pinned\n"
            "n = max_pinned(); print(n, resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["256", "4096"]
