"""Engine selection: config, explicit kinds, the fallback where io_uring cannot run, and
``python -m dask_lsio info``."""

from __future__ import annotations

import os
import subprocess
import sys

import dask.config
import pytest

import dask_lsio
from dask_lsio.errors import EngineUnavailableError
from dask_lsio.io import Engine, get_engine, uring_status


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_get_engine_is_per_process_and_configurable():
    with dask.config.set({"lsio.engine": "threads"}):
        eng = get_engine()
        assert eng.kind == "threads"
        assert get_engine() is eng
    assert get_engine("threads") is eng
    assert isinstance(get_engine(), Engine)
    assert dask_lsio.get_engine is get_engine
    with pytest.raises(ValueError, match="lsio.engine"):
        get_engine("fast")


def test_auto_picks_io_uring_where_it_works():
    if not uring_status().available:
        pytest.skip(uring_status().reason)
    assert get_engine("auto").kind == "io_uring"
    assert get_engine("io_uring").ring_flags & (1 << 12)  # SINGLE_ISSUER on Linux >= 6.1


def test_config_from_environment():
    out = run_python(
        "import dask_lsio, dask; print(dask.config.get('lsio.engine'), dask_lsio.get_engine().kind)",
        env={"DASK_LSIO__ENGINE": "threads"},
    )
    assert out.stdout.split() == ["threads", "threads"], out.stderr


FALLBACK = """
import sys, logging, types
logging.basicConfig(level=logging.WARNING)
sys.modules["dask_lsio.io._uring_ext"] = None   # as if built without liburing
record = types.ModuleType("dask_lsio._build_info")  # setup.py's record of such a build
record.BUILD_INFO = {"format": 1, "extensions": {"uring": {
    "status": "failed", "reason": "liburing-dev not found and no C compiler for the bundled "
    "sources", "fix": "install a C compiler (apt-get install gcc), then reinstall"}}}
sys.modules["dask_lsio._build_info"] = record
import dask_lsio
from dask_lsio.errors import EngineUnavailableError
print("kind", dask_lsio.get_engine().kind)
try:
    dask_lsio.get_engine("io_uring")
except EngineUnavailableError as e:
    print("raised", e)
"""


def test_fallback_when_built_without_liburing():
    out = run_python(FALLBACK)
    assert "kind threads" in out.stdout, out.stderr
    assert "raised the io_uring engine cannot run here" in out.stdout
    assert "liburing-dev not found" in out.stdout and "apt-get install gcc" in out.stdout
    assert "uses the thread engine" in out.stderr  # logged once, with the reason
    info = run_python(FALLBACK.split("import dask_lsio")[0] + "from dask_lsio.__main__ import main; main(['info'])")
    assert "engine: threads" in info.stdout
    assert "built without its io_uring engine" in info.stdout
    assert "io_uring engine: not built: liburing-dev not found" in info.stdout


def test_a_built_engine_that_cannot_load_says_how_to_fix_it():
    """Built against a system liburing since removed: reinstall with the bundled sources."""
    code = FALLBACK.split("record = ")[0] + "import dask_lsio\nprint(dask_lsio.io.uring_status().reason)"
    out = run_python(code)
    assert "was built but cannot be loaded" in out.stdout and "LSIO_BUNDLED=1" in out.stdout


SYSCTL = "/proc/sys/kernel/io_uring_disabled"


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(SYSCTL), reason="needs root and the sysctl")
def test_fallback_when_kernel_disables_io_uring():
    """kernel.io_uring_disabled=2 makes io_uring_setup fail with EPERM for everyone."""
    with open(SYSCTL) as f:
        old = f.read().strip()
    try:
        with open(SYSCTL, "w") as f:
            f.write("2")
        out = run_python(FALLBACK.replace('sys.modules["dask_lsio.io._uring_ext"] = None', ""))
    finally:
        with open(SYSCTL, "w") as f:
            f.write(old)
    assert "kind threads" in out.stdout, out.stderr
    assert "io_uring_disabled=2" in out.stdout


def test_explicit_io_uring_raises_when_unavailable(monkeypatch):
    from dask_lsio.io import _select

    monkeypatch.setattr(_select, "_engines", {})
    monkeypatch.setattr(
        _select, "uring_status",
        lambda: _select.UringStatus(False, "a seccomp filter blocks it", "6.x", "0"),
    )
    with pytest.raises(EngineUnavailableError, match="seccomp"):
        get_engine("io_uring")


def test_info_command():
    out = subprocess.run(
        [sys.executable, "-m", "dask_lsio", "info"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert f"dask-lsio {dask_lsio.__version__}" in out.stdout
    kind = get_engine().kind
    assert f"engine: {kind}" in out.stdout
    assert "io_uring:" in out.stdout
