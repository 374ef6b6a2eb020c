"""The io_uring engine's failure paths: no SQE, a failing ring, a stalled batch, a broken ring.

Most of these failures are (almost) never produced by the kernel, so the C core has test-only
switches (``lsio_ring_test``) that make them happen on the calling thread's ring. A stalled
batch is real: a read of a FIFO that nobody writes waits forever. What cannot be triggered
from Python at all is said in the section it belongs to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

import dask
import numpy as np
import pytest

from dask_lsio.io.hooks import ReadHook

from conftest import make_engine, write_files
from dask_lsio.io import ReadRequest, _batch
from dask_lsio.io import _uring

lib, ffi = _uring.lib, _uring.ffi


@pytest.fixture
def eng():
    e = make_engine("io_uring")
    yield e
    e.close()


def ring_of(eng):
    """The calling thread's ring of ``eng`` (small batches run on it)."""
    ring = eng._acquire()
    eng._release(ring)
    return ring


def fault(eng, what: int, value: int):
    """Arm a test-only failure on the calling thread's ring; return the ring."""
    ring = ring_of(eng)
    lib.lsio_ring_test(ring.ptr, what, value)
    return ring


def open_fds() -> list[str]:
    """What this process has open, rings aside (a broken ring is closed, its successor
    opened on demand)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor is gone)
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(t for t in out if "io_uring" not in t)


@pytest.fixture(params=["no writer", "silent writer"])
def fifo(tmp_path, request):
    """A FIFO that nobody writes, or that a writer holds open without writing: a read of it
    never completes (until a writer comes and goes, or the read is cancelled)."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    writer = os.open(path, os.O_RDWR) if request.param == "silent writer" else None
    yield str(path)
    # release whatever still waits, whatever the engine did: a writer opens and closes
    if writer is not None:
        os.close(writer)
    with contextlib.suppress(OSError):  # (ENXIO: no reader left)
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def hooked(eng, paths, seen):
    """read_hooked with a Python hook recording each read's bytes into ``seen``."""
    @ffi.callback("int(void *, int64_t, const char *, int64_t)")
    def hook(ctx, idx, data, n):
        seen[idx] = ffi.buffer(data, n)[:]
        return 0

    n = len(paths)
    addr = int(ffi.cast("uintptr_t", hook))
    # (``call`` is for engines that call hooks from Python; io_uring calls ``function``)
    read_hook = ReadHook(addr, lambda lo: 0, lambda *args: 0, 4096)
    return eng.read_hooked(paths, np.zeros(n, np.int64), np.full(n, -1, np.int64), read_hook)


# -- item 1: get_sqe returns NULL ---------------------------------------------------------

def test_no_sqe_fails_each_request_with_ebusy(eng, tmp_path):
    files = write_files(tmp_path, [100, 200, 300])
    reqs = [ReadRequest(p) for p in files] + [ReadRequest(p, -50) for p in files]
    before = open_fds()
    fault(eng, lib.LSIO_TEST_SQE_FAIL, 0)
    got = eng.read(reqs, errors="return")
    assert all(isinstance(e, OSError) and e.errno == errno.EBUSY for e in got)
    assert all("(open" in str(e) for e in got)
    assert open_fds() == before
    fault(eng, lib.LSIO_TEST_SQE_FAIL, -1)
    assert [bytes(b) for b in eng.read(reqs[:3])] == list(files.values())


def test_no_sqe_mid_suffix_read_closes_its_descriptor(eng, tmp_path):
    files = write_files(tmp_path, [5000])
    before = open_fds()
    fault(eng, lib.LSIO_TEST_SQE_FAIL, 2)  # open and statx get one, the read none
    (got,) = eng.read([ReadRequest(next(iter(files)), -100)], errors="return")
    assert got.errno == errno.EBUSY and "(read" in str(got)
    assert open_fds() == before  # closed without an SQE either
    fault(eng, lib.LSIO_TEST_SQE_FAIL, -1)


def test_no_sqe_for_rename_leaves_no_temporary(eng, tmp_path):
    target = tmp_path / "d" / "obj"
    fault(eng, lib.LSIO_TEST_SQE_FAIL, 2)  # open and write get one, the rename none
    (got,) = eng.write([(target, b"x" * 1000)], errors="return")
    fault(eng, lib.LSIO_TEST_SQE_FAIL, -1)
    assert got.errno == errno.EBUSY and "rename" in str(got)
    assert os.listdir(tmp_path / "d") == []  # temporary removed (here, without an SQE)
    assert eng.write([(target, b"y")]) == [1] and target.read_bytes() == b"y"


# -- item 2: the ready array is sized at batch start --------------------------------------

def test_batch_start_reports_enomem_and_the_ring_stays_usable(eng, tmp_path):
    ring = ring_of(eng)
    reqs = ffi.new("lsio_req[]", 1)
    # room for that many finished indices cannot be allocated: the start fails, nothing
    # starts (1 << 61 would overflow the size)
    assert lib.lsio_batch_start(ring.ptr, reqs, 1 << 60, 0, 0) == errno.ENOMEM
    assert lib.lsio_batch_start(ring.ptr, reqs, 1 << 61, 0, 0) == errno.ENOMEM
    files = write_files(tmp_path, [10] * 600)  # more than the old initial 256 entries
    assert [bytes(b) for b in eng.read([ReadRequest(p) for p in files])] == list(files.values())
    assert ring_of(eng) is ring


class _StartFails:
    """The C library, but batches do not start (as when memory runs out)."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def lsio_batch_start(self, *args):
        return errno.ENOMEM

    def lsio_batch_start_hooked(self, *args):
        return errno.ENOMEM


def test_python_raises_when_a_batch_cannot_start(eng, tmp_path, monkeypatch):
    files = write_files(tmp_path, [10, 20])
    monkeypatch.setattr(_uring, "lib", _StartFails(lib))
    with pytest.raises(OSError, match="cannot start") as info:
        eng.read([ReadRequest(p) for p in files])
    assert info.value.errno == errno.ENOMEM
    with pytest.raises(OSError, match="cannot start"):
        hooked(eng, list(files), {})
    monkeypatch.undo()
    assert [bytes(b) for b in eng.read([ReadRequest(p) for p in files])] == list(files.values())


# -- item 3: return values that were ignored ----------------------------------------------

def test_iowq_limit_outcome_is_recorded(eng):
    # Linux >= 5.15 takes it (0); older kernels refuse it, which is recorded (and logged),
    # not an error. A refusal cannot be provoked on a kernel that supports it.
    assert ring_of(eng).info(lib.LSIO_INFO_IOWQ_ERR) == 0
    assert ring_of(eng).info(lib.LSIO_INFO_CLOSE_ERRORS) == 0  # (no way to make one fail)


def test_slots_that_cannot_be_cleared_retire_the_ring(eng, tmp_path):
    files = write_files(tmp_path, [100, 200])
    ring = fault(eng, lib.LSIO_TEST_SLOTS_FAIL, errno.ENOMEM)
    # the batch itself succeeded; its files stay in the slots, so the ring is closed
    assert [bytes(b) for b in eng.read([ReadRequest(p) for p in files])] == list(files.values())
    assert ring.ptr is None and ring_of(eng) is not ring
    assert [bytes(b) for b in eng.read([ReadRequest(p) for p in files])] == list(files.values())


def test_cancel_failure_raises(eng, tmp_path, fifo):
    files = write_files(tmp_path, [100] * 4)
    paths = list(files) + [fifo]
    batch = next(_batch.plan_reads(paths, np.zeros(5, np.int64), np.full(5, -1, np.int64),
                                   eng.pool, 4096, False, 1 << 20))
    ring = ring_of(eng)  # (while the batch runs, _acquire would hand out another ring)
    before = open_fds()
    run = eng._run(batch)
    done = next(run)  # the files; the FIFO's read is still in flight
    assert len(done) and fifo not in [batch.paths[i] for i in done.tolist()]
    lib.lsio_ring_test(ring.ptr, lib.LSIO_TEST_ENTER_FAIL, errno.EIO)
    with pytest.raises(OSError, match="io_uring_enter failed") as info:
        run.close()  # cancels: its wait fails
    assert info.value.errno == errno.EIO
    assert ring.ptr is None and open_fds() == before  # broken: closed and replaced
    assert [bytes(b) for b in eng.read([ReadRequest(p) for p in files])] == list(files.values())


# -- item 4: a failing batch ends cleanly ---------------------------------------------------

@pytest.mark.parametrize("api", ["read", "read_hooked"])
def test_ring_error_ends_the_batch_without_leaks(eng, tmp_path, api):
    files = write_files(tmp_path, [3000] * 40)  # one directory: the batch opens it
    reqs = [ReadRequest(p, -1000) for p in files]  # suffix reads: plain descriptors
    before = open_fds()
    ring = fault(eng, lib.LSIO_TEST_ENTER_FAIL, errno.EIO)
    with pytest.raises(OSError, match="io_uring_enter failed") as info:
        if api == "read":
            eng.read(reqs)
        else:
            hooked(eng, list(files), {})
    assert info.value.errno == errno.EIO
    assert open_fds() == before  # directory and plain descriptors closed
    assert ring.ptr is None and ring_of(eng) is not ring  # broken rings are not reused
    assert [bytes(b) for b in eng.read(reqs)] == [d[-1000:] for d in files.values()]


def test_bookkeeping_error_ends_in_an_error_not_a_wait(eng, tmp_path):
    files = write_files(tmp_path, [100, 200])
    ring = fault(eng, lib.LSIO_TEST_LEAK_SLOTS, eng.queue_depth)  # nothing can start
    t = time.monotonic()
    with pytest.raises(OSError, match="bookkeeping") as info:
        eng.read([ReadRequest(p) for p in files])
    assert info.value.errno == errno.ENOTRECOVERABLE and time.monotonic() - t < 5
    assert ring.ptr is None
    assert [bytes(b) for b in eng.read([ReadRequest(p) for p in files])] == list(files.values())


# -- item 5: no wait is unbounded ---------------------------------------------------------

def test_stall_timeout_setting():
    assert make_engine("io_uring").io_stall_timeout == 600  # "10 minutes"
    with dask.config.set({"lsio.io-stall-timeout": "250ms"}):
        assert make_engine("io_uring").io_stall_timeout == 0.25
    assert make_engine("io_uring", io_stall_timeout=3).io_stall_timeout == 3


@pytest.mark.parametrize("api", ["read", "read_hooked"])
def test_stalled_batch_is_cancelled_and_named(tmp_path, fifo, api):
    with dask.config.set({"lsio.io-stall-timeout": "300ms"}):
        eng = make_engine("io_uring")
    files = write_files(tmp_path, [100] * 3)
    paths = list(files) + [fifo]
    ring = ring_of(eng)
    before = open_fds()
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="lsio.io-stall-timeout") as info:
        if api == "read":
            eng.read([ReadRequest(p) for p in paths])
        else:
            hooked(eng, paths, {})
    assert 0.25 < time.monotonic() - t < 5
    assert open_fds() == before  # the batch's directory too
    msg = str(info.value)
    assert "1 request(s) outstanding" in msg and repr(fifo) in msg
    assert info.value.errno == errno.ETIMEDOUT
    # the cancelled read came back: the same ring goes on
    assert ring.ptr is not None and ring_of(eng) is ring
    assert [bytes(b) for b in eng.read([ReadRequest(p) for p in files])] == list(files.values())
    seen: dict = {}
    assert not hooked(eng, list(files), seen)  # no read failed
    assert sorted(seen.values()) == sorted(files.values())
    eng.close()


def test_stall_whose_op_never_returns_retires_the_ring(tmp_path, fifo):
    with dask.config.set({"lsio.io-stall-timeout": "200ms"}):
        eng = make_engine("io_uring")
    files = write_files(tmp_path, [100])
    ring = fault(eng, lib.LSIO_TEST_NO_CANCEL, 1)  # as if the kernel could not cancel it
    lost = len(_uring._LOST)
    t = time.monotonic()
    with pytest.raises(TimeoutError, match=repr(fifo)):
        eng.read([ReadRequest(fifo)])
    assert 0.3 < time.monotonic() - t < 5  # the stall, then as long again for the op
    assert ring.ptr is None and len(_uring._LOST) == lost + 1  # its buffers are kept forever
    assert [bytes(b) for b in eng.read([ReadRequest(p) for p in files])] == list(files.values())
    eng.close()
