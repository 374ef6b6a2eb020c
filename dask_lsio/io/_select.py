"""Which engine a process uses: ``get_engine`` and the io_uring probe behind "auto"."""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
import tempfile
import threading
from dataclasses import dataclass

from .. import config
from ..build import missing_reason
from ..errors import BatchIOError, EngineUnavailableError
from .engine import Engine
from .requests import ReadRequest

logger = logging.getLogger("dask_lsio")
KINDS = ("auto", "io_uring", "threads")
PLUGIN_NAME = "dask-lsio"  # the worker plugin's name in ``worker.plugins``
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


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
        engine = _worker_engine()
        if engine is not None:
            return engine
    kind = _kind(kind)
    with _lock:
        engine = _engines.get(kind)
        if engine is None or engine.closed:
            engine = _engines[kind] = _create(kind)
        return engine


def new_engine(kind: str | None = None, **options) -> Engine:
    """A new engine of ``kind`` (default ``lsio.engine``) that the caller owns and closes;
    options the kind does not take (``queue_depth`` for threads ...) are ignored."""
    return _create(_kind(kind), **options)


def _kind(kind: str | None) -> str:
    kind = kind or config.get("engine")
    if kind not in KINDS:
        raise ValueError(f"lsio.engine must be one of {KINDS}, got {kind!r}")
    return _resolve_auto() if kind == "auto" else kind


def _worker_engine() -> Engine | None:
    """The plugin engine of the distributed worker running this task, if any."""
    worker_mod = sys.modules.get("distributed.worker")  # not imported: no worker here
    # (another thread may be importing it right now: no worker runs in this process yet)
    get_worker = getattr(worker_mod, "get_worker", None)
    if get_worker is None:
        return None
    try:
        worker = get_worker()
    except ValueError:  # not inside a task on a worker
        return None
    plugin = worker.plugins.get(PLUGIN_NAME)
    engine = plugin.engine(worker) if plugin is not None else None
    return engine if engine is not None and not engine.closed else None


def _resolve_auto() -> str:
    st = uring_status()
    if st.available:
        return "io_uring"
    if "threads" not in _engines:
        logger.warning("dask-lsio uses the thread engine: %s", st.reason)
    return "threads"


def _create(kind: str, queue_depth: int | None = None, threads: int | None = None,
            **common) -> Engine:
    if kind == "io_uring":
        st = uring_status()
        if not st.available:
            raise EngineUnavailableError(f"the io_uring engine cannot run here: {st.reason}")
        from ._uring import IoUringEngine

        return IoUringEngine(queue_depth=queue_depth, **common)
    from ._threads import ThreadEngine

    return ThreadEngine(threads=threads, **common)


def _forget_after_fork() -> None:
    # A child inherits the parent's rings and threads, which do not work there.
    _engines.clear()
    uring_status.cache_clear()


os.register_at_fork(after_in_child=_forget_after_fork)
