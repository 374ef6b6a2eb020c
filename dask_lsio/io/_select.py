"""Which engine a process uses: ``get_engine`` and the io_uring probe behind "auto"."""

from __future__ import annotations

import functools
import logging
import os
import platform
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable

from .. import config
from ..build import missing_reason
from ..errors import BatchIOError, EngineUnavailableError
from .engine import Engine
from .requests import ReadRequest

logger = logging.getLogger("dask_lsio")
KINDS = ("auto", "io_uring", "threads")
_engines: dict[str, Engine] = {}
_lock = threading.Lock()
# where else an engine may come from before the process's own (the worker plugin registers
# the engine of the distributed worker running the task): each returns an engine or None
_lookups: list[Callable[[], Engine | None]] = []


@dataclass(frozen=True)
class UringStatus:
    """Whether io_uring works in this process, and if not, why."""

    available: bool
    reason: str
    kernel: str
    io_uring_disabled: str


def _read_sysctl() -> str:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return f.read().strip()
    except OSError:
        return "absent"


@functools.lru_cache(maxsize=1)
def uring_status() -> UringStatus:
    """Probe io_uring once per process: build, kernel, sysctl, seccomp, and a real read."""
    kernel, sysctl = platform.release(), _read_sysctl()

    def status(ok: bool, reason: str) -> UringStatus:
        return UringStatus(ok, reason, kernel, sysctl)

    from . import _uring

    if _uring.lib is None:
        return status(False, missing_reason("uring"))
    if sysctl == "2":
        return status(False, "io_uring is disabled by the kernel (kernel.io_uring_disabled=2)")
    try:
        with _uring.IoUringEngine(queue_depth=8) as engine, tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "probe")
            engine.write([(path, b"dask-lsio")])
            if bytes(engine.read([ReadRequest(path, 5)])[0]) != b"lsio":
                return status(False, "io_uring returned wrong data in the start-up probe")
    except (OSError, BatchIOError) as e:  # ring creation, or the probe's own requests
        return status(False, _explain(e, sysctl))
    except Exception as e:  # the probe must never break engine selection
        return status(False, f"io_uring probe failed: {type(e).__name__}: {e}")
    return status(True, "io_uring works here")


def _explain(e: OSError | BatchIOError, sysctl: str) -> str:
    errno = e.exceptions[0].errno if isinstance(e, BatchIOError) else e.errno
    if errno == 38:  # ENOSYS
        return "the kernel has no io_uring (CONFIG_IO_URING is off, or Linux < 5.1)"
    if errno == 1:  # EPERM
        return (f"io_uring_setup was denied (EPERM): kernel.io_uring_disabled={sysctl} or a "
                "seccomp filter (a container's default profile) blocks it")
    if errno == 22:  # EINVAL
        return "the kernel lacks io_uring features we use (direct opens need Linux >= 5.15)"
    return f"io_uring failed in the start-up probe: {e}"


def get_engine(kind: str | None = None) -> Engine:
    """The engine of this worker or process.

    Inside a task on a distributed worker that has the
    :class:`~dask_lsio.LSIOWorkerPlugin`, the plugin's engine of that worker; otherwise
    (no plugin, no distributed, or an explicit ``kind``) the process's engine of that kind,
    created on first use and shared by all threads.

    Parameters
    ----------
    kind : {"auto", "io_uring", "threads"}, optional
        Default ``lsio.engine``. "auto" uses io_uring when it works here and otherwise the
        thread engine, logging the reason once; "io_uring" raises
        :class:`~dask_lsio.errors.EngineUnavailableError` when it cannot run.

    Returns
    -------
    Engine
    """
    if kind is None:
        for lookup in _lookups:
            engine = lookup()
            if engine is not None:
                return engine
    kind = _kind(kind)
    with _lock:
        engine = _engines.get(kind)
        if engine is None or engine.closed:
            engine = _engines[kind] = _create(kind)
        return engine


def engine_in_use() -> Engine | None:
    """The engine :func:`get_engine` would return, if it exists already; None where it would
    be created (callers that only count things need not start one)."""
    for lookup in _lookups:
        engine = lookup()
        if engine is not None:
            return engine
    with _lock:
        engine = _engines.get(_kind(None))
    return None if engine is None or engine.closed else engine


def register_lookup(lookup: Callable[[], Engine | None]) -> None:
    """Make :func:`get_engine` (without ``kind``) ask ``lookup`` first: it returns the engine
    the calling thread should use (e.g. its distributed worker's), or None."""
    with _lock:
        if lookup not in _lookups:
            _lookups.append(lookup)


def new_engine(kind: str | None = None, *, queue_depth: int | None = None,
               iowq_max_workers: int | None = None, submit_threads: int | None = None,
               threads: int | None = None, direct_io: bool | None = None,
               decode_threads: int | None = None) -> Engine:
    """A new engine of ``kind`` (default ``lsio.engine``) that the caller owns and closes.

    The io_uring options (``queue_depth``, ``iowq_max_workers``, ``submit_threads``) apply
    to io_uring engines and ``threads`` to thread engines (where "auto" picks either, the
    other kind's are not used); defaults come from ``lsio.*``."""
    common = {"direct_io": direct_io, "decode_threads": decode_threads}
    kind = _kind(kind)
    if kind == "io_uring":
        return _create(kind, uring={"queue_depth": queue_depth,
                                    "iowq_max_workers": iowq_max_workers,
                                    "submit_threads": submit_threads}, **common)
    return _create(kind, threads=threads, **common)


def _kind(kind: str | None) -> str:
    kind = kind or config.get("engine")
    if kind not in KINDS:
        raise ValueError(f"lsio.engine must be one of {KINDS}, got {kind!r}")
    return _resolve_auto() if kind == "auto" else kind


def _resolve_auto() -> str:
    st = uring_status()
    if st.available:
        return "io_uring"
    if "threads" not in _engines:
        logger.warning("dask-lsio uses the thread engine: %s", st.reason)
    return "threads"


def _create(kind: str, uring: dict | None = None, threads: int | None = None,
            direct_io: bool | None = None, decode_threads: int | None = None) -> Engine:
    if kind == "io_uring":
        st = uring_status()
        if not st.available:
            raise EngineUnavailableError(f"the io_uring engine cannot run here: {st.reason}")
        from ._uring import IoUringEngine

        return IoUringEngine(direct_io=direct_io, decode_threads=decode_threads,
                             **(uring or {}))
    from ._threads import ThreadEngine

    return ThreadEngine(threads=threads, direct_io=direct_io, decode_threads=decode_threads)


def _forget_after_fork() -> None:
    # A child inherits the parent's rings and threads, which do not work there.
    _engines.clear()
    uring_status.cache_clear()


os.register_at_fork(after_in_child=_forget_after_fork)
