"""dask_lsio.io.readahead: hinted files end up in the page cache (mincore says so)."""

from __future__ import annotations

import ctypes
import mmap
import os
import time

import pytest

from dask_lsio.io import readahead

libc = ctypes.CDLL(None, use_errno=True)


def resident(path: str) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages of it)."""
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as f:
        # a private writable mapping: ctypes needs a writable buffer; nothing is written
        mm = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        vec = (ctypes.c_ubyte * pages)()
        base = ctypes.c_char.from_buffer(mm)
        try:
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(base)), ctypes.c_size_t(size),
                            vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del base
        return sum(v & 1 for v in vec), pages
    finally:
        mm.close()


def evicted(paths: list[str]) -> bool:
    """Drop the files' clean pages from the page cache; False if the file system keeps
    them (tmpfs)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return all(resident(p)[0] == 0 for p in paths)


def wait_resident(paths: list[str], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(r == n for r, n in map(resident, paths)):
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def files(tmp_path):
    paths = []
    for i in range(4):
        (tmp_path / f"f{i}").write_bytes(os.urandom((1 << 20) + 100 * i))
        paths.append(str(tmp_path / f"f{i}"))
    if not evicted(paths):
        pytest.skip("this file system keeps its files in memory")
    return paths


def test_hinted_files_are_read_into_the_page_cache(files, tmp_path):
    # a missing file (a chunk never written) is skipped, the others still read
    assert readahead.hint([files[0], str(tmp_path / "missing"), *files[1:]])
    assert wait_resident(files), [resident(p) for p in files]
    assert readahead.hint([])  # nothing to do


def test_hints_in_a_forked_child(files):
    readahead.hint([])  # the parent's worker thread exists; the child has none
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        ok = readahead.hint(files) and wait_resident(files)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
