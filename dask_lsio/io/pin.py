"""Files held open across several engine batches, so that they all read one version.

A shard is read in two batches: its index, then the inner chunks the index locates. A writer
may rename a new version of the shard into place in between; read by name, the second batch
would take byte ranges from the new file at offsets of the old index (garbage, or worse, wrong
values that happen to decode). An open descriptor keeps its file whatever is renamed over its
name, so both batches read through ``/proc/self/fd/N``: opening that path opens the file the
descriptor holds, and the engines need no other kind of request. A descriptor also tells the
file's identity (inode, size, times), so an index kept from an earlier read can be checked
against the very file the data will come from.
"""

from __future__ import annotations

import os
import resource
from typing import Sequence

_PROC_FD = "/proc/self/fd"
_HAVE_PROC = os.path.isdir(_PROC_FD)
_WANTED_FILES = 1 << 16  # descriptor limit asked for when the soft limit is lower

Identity = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns
ABSENT = "absent"  # the identity of a file that does not exist


def max_pinned() -> int:
    """How many files one caller may hold open at once: a sixteenth of the descriptor limit
    (several tasks pin at the same time, and the engines open files too).

    A soft limit below the hard one is raised to it (up to 65,536) on first use, as programs
    that need many descriptors are meant to do (systemd's defaults are 1,024 soft and
    524,288 hard for exactly this reason)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < _WANTED_FILES and (
            hard == resource.RLIM_INFINITY or hard > soft):
        want = _WANTED_FILES if hard == resource.RLIM_INFINITY else min(hard, _WANTED_FILES)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):  # not allowed here: live with the soft limit
            pass
    if soft == resource.RLIM_INFINITY:
        soft = _WANTED_FILES
    return max(16, min(4096, soft // 16))


class PinnedFiles:
    """Open ``paths`` for reading and keep them open until :meth:`close`.

    ``read_paths[i]`` names the file opened for ``paths[i]`` (read it through any engine), or
    is None where no file exists at ``paths[i]``. Other failures to open raise the OSError,
    after closing what was opened. Where ``/proc`` is not mounted, ``read_paths`` are the
    names themselves (each batch then reads whatever file the name leads to).

    Use as a context manager.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self._fds: list[int | None] = []
        self.read_paths: list[str | None] = []
        try:
            for path in self.paths:
                self.read_paths.append(self._open(path))
        except BaseException:
            self.close()
            raise

    def _open(self, path: str) -> str | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._fds.append(None)
            return None
        if not _HAVE_PROC:  # keep it open all the same: identity() tells its file
            self._fds.append(fd)
            return path
        self._fds.append(fd)
        return f"{_PROC_FD}/{fd}"

    def identity(self, i: int) -> Identity | str:
        """What tells the file of ``paths[i]`` from any other version of it: device, inode,
        size and times of the open file; :data:`ABSENT` where there was none."""
        fd = self._fds[i]
        if fd is None:
            return ABSENT
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def close(self) -> None:
        """Close every file (idempotent)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> "PinnedFiles":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
