"""Build the two C extensions, the io_uring engine against the system liburing where its -dev
package is installed, else against the sources bundled in third_party/, the decode kernel
against the bundled sources, and record what was built in ``dask_lsio/_build_info.py`` (``BUILD_INFO``, for run time to say what is missing and why).

- ``dask_lsio.io._uring_ext``, the io_uring engine: liburing (liburing-dev), else the bundled
  liburing (Linux only). Without it the thread engine is used.
- ``dask_lsio.zarr._kernel_ext``, the decode kernel: the bundled c-blosc with its own lz4,
  zstd and zlib (numcodecs' sources; with ``LSIO_SYSTEM_KERNEL=1``, the system's c-blosc,
  liblz4, libzstd and zlib where libblosc-dev liblz4-dev libzstd-dev zlib1g-dev are
  installed). Without it chunks are decoded with numcodecs.

Bundled sources are compiled into a static archive and linked into the extension with their
symbols hidden: the extension then needs nothing beyond libc. Only a C compiler is required;
without one the package installs without the extensions, and the build trace says so.

Environment:
- ``LSIO_BUNDLED=1`` (or ``uring``, ``kernel``, comma-separated): use the bundled sources even
  where the system libraries are installed (testing).
- ``LSIO_SYSTEM_KERNEL=1``: build the decode kernel against the system libraries where they
  are installed (by default it is built from the bundled sources, those numcodecs is built
  from: see ``KERNEL_BUNDLED``).
- ``LSIO_NO_URING=1``, ``LSIO_NO_KERNEL=1``: do not build that extension.
- ``LSIO_REQUIRE_EXTENSIONS=1``: fail the build when an extension that is not disabled or
  unsupported here could not be built (CI).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import pprint
import sys
import time
import warnings
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.errors import BaseError, CCompilerError, SetupError

TOP = Path(__file__).resolve().parent
WHAT = {"uring": "io_uring engine", "kernel": "decode kernel"}
WITHOUT = {
    "uring": "the thread engine is used (slower, most of all on many small files)",
    "kernel": "chunks are decoded by numcodecs in Python (several times slower)",
}


def _load_cffi_build():
    """dask_lsio/_cffi_build.py, loaded by path (importing dask_lsio would need its deps)."""
    spec = importlib.util.spec_from_file_location("_lsio_cffi_build",
                                                  TOP / "dask_lsio" / "_cffi_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _new_compiler():
    """The C compiler build_ext will use (CC, CFLAGS, LDSHARED... as distutils reads them)."""
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    return cc


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "no", "false")


# Why the decode kernel is built from third_party/ whatever the system has: numcodecs (what
# zarr-python decodes with) is built from those very sources, and on damaged chunks that a
# codec's checks let through, the output is whatever that version of the library makes of
# them (zstd 1.5.4 and 1.5.6 decode some corrupt frames to different bytes, without an
# error), while c-blosc's checks grew from 1.21.3 to 1.21.7: other versions would return
# values where zarr-python raises, or other values than it.
KERNEL_BUNDLED = ("the decode kernel is built from the c-blosc, lz4, zstd and zlib sources "
                  "numcodecs is built from, to decode (and refuse) exactly what numcodecs does "
                  "(LSIO_SYSTEM_KERNEL=1: the system libraries)")


def _forced_bundled() -> set[str]:
    value = os.environ.get("LSIO_BUNDLED", "").strip().lower()
    if value in ("", "0", "no", "false"):
        return set()
    if value in ("1", "yes", "true", "all"):
        return set(WHAT)
    return {v.strip() for v in value.split(",") if v.strip()} & set(WHAT)


def _reinstall_hint() -> str:
    return ("then reinstall dask-lsio from source, bypassing pip's cache of the wheel built "
            "without it (a checkout: pip install --force-reinstall --no-deps --no-cache-dir .; "
            "from PyPI: pip install --force-reinstall --no-deps --no-cache-dir --no-binary "
            "dask-lsio dask-lsio)")


def _plan():
    """What to build, and how, for each extension (no output: setup.py runs several times per
    install; build_py and build_ext report once)."""
    cb = _load_cffi_build()
    cc = _new_compiler()
    forced = _forced_bundled()
    compiler_ok = cb.try_build(cc, "int main(void){return 0;}\n", [])
    compiler_name = " ".join(cc.compiler_so[:1]) if getattr(cc, "compiler_so", None) else "cc"
    plan = {}
    for name, t in cb.TARGETS.items():
        bundle = cb.BUNDLES[name]
        entry = {
            "module": t.module,
            "status": None,  # built | failed | disabled | unsupported
            "source": None,  # system | bundled | None
            "libraries": {},  # library -> version (as the headers state it)
            "system_missing": [],  # Debian packages whose headers/libraries were not found
            "forced_bundled": name in forced,
            "reason": "",
            "fix": "",
            "bundle_seconds": None,  # compiling the bundled sources took this long
        }
        plan[name] = entry
        header = "".join(f"#include <{h}>\n" for h in t.headers)
        if _flag(f"LSIO_NO_{name.upper()}"):
            entry.update(status="disabled",
                         reason=f"LSIO_NO_{name.upper()} was set when dask-lsio was built",
                         fix=f"unset LSIO_NO_{name.upper()}, {_reinstall_hint()}")
            continue
        if name == "uring" and not sys.platform.startswith("linux"):
            entry.update(status="unsupported", reason="io_uring is Linux only")
            continue
        if not compiler_ok:
            entry.update(
                status="failed",
                reason=f"no working C compiler ({compiler_name}) when dask-lsio was built",
                fix="install a C compiler (Debian/Ubuntu: apt-get install gcc; Fedora: dnf "
                    "install gcc; conda: conda install -c conda-forge c-compiler), "
                    + _reinstall_hint())
            continue
        # the kernel takes the system libraries only when asked to (see KERNEL_BUNDLED)
        system = name not in forced and (name != "kernel" or _flag("LSIO_SYSTEM_KERNEL"))
        if system and cb.try_build(cc, header + t.probe, t.libraries):
            entry.update(source="system")
            continue
        if system:
            entry["system_missing"] = list(t.debian)
        if not bundle.present():
            entry.update(
                status="failed",
                reason=("the system libraries were not found and this source tree lacks the "
                        "bundled sources (third_party/)" if system else
                        "this source tree lacks the bundled sources (third_party/)"),
                fix=(f"install {' '.join(t.debian)} (Debian/Ubuntu)"
                     + ("" if system else " and set LSIO_SYSTEM_KERNEL=1") + ", "
                     + _reinstall_hint()))
            continue
        entry.update(source="bundled", libraries=dict(bundle.versions),
                     reason=("LSIO_BUNDLED was set" if name in forced else
                             KERNEL_BUNDLED if not system else
                             f"{' '.join(t.debian)} not found: built against the bundled "
                             "sources"))
    return plan, cb


PLAN, CB = _plan()
_REPORTED = False


def _system_versions(name: str) -> dict[str, str]:
    versions = CB.header_versions(_new_compiler(), name)
    if versions.get("liburing") == "unknown":  # liburing < 2.4 has no io_uring_version.h
        import subprocess

        try:
            done = subprocess.run(["pkg-config", "--modversion", "liburing"],
                                  capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip():
                versions["liburing"] = done.stdout.strip()
        except OSError:
            pass
    return versions


def _write_build_info(package_dirs: list[str]) -> None:
    """Write dask_lsio/_build_info.py into each of ``package_dirs``."""
    for name, entry in PLAN.items():
        if entry["source"] == "system" and not entry["libraries"]:
            entry["libraries"] = _system_versions(name)
    info = {
        "format": 1,
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "extensions": PLAN,
    }
    text = (
        '"""What setup.py built: generated at build time, do not edit (see setup.py).\n\n'
        "BUILD_INFO['extensions'][name] for name in ('uring', 'kernel'): module; status\n"
        "(built, failed, disabled, unsupported; None if the build never got to it); source\n"
        "(system, bundled or None); libraries {name: version}; system_missing (Debian -dev\n"
        "packages not found); forced_bundled; reason; fix (what to do when not built);\n"
        "bundle_seconds (compiling the bundled sources).\n"
        '"""\n\n'
        f"BUILD_INFO = {pprint.pformat(info, sort_dicts=False, width=96)}\n"
    )
    for d in package_dirs:
        path = Path(d) / "_build_info.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


def _package_dirs(cmd) -> list[str]:
    """Where dask_lsio/ is for this build: build_lib and, for editable/in-place builds, the
    source tree."""
    dirs = [os.path.join(cmd.get_finalized_command("build").build_lib, "dask_lsio")]
    if getattr(cmd, "editable_mode", False) or getattr(cmd, "inplace", False):
        dirs.append(str(TOP / "dask_lsio"))
    return dirs


def _report() -> None:
    """Say once what was built; loudly when something could not be."""
    global _REPORTED
    if _REPORTED:
        return
    _REPORTED = True
    missing = []
    for name, e in PLAN.items():
        libs = ", ".join(f"{k} {v}" for k, v in e["libraries"].items())
        if e["status"] == "built":
            how = ("the system libraries" if e["source"] == "system" else
                   "the bundled sources (third_party/)")
            print(f"dask-lsio: {WHAT[name]} ({e['module']}) built against {how}"
                  + (f": {libs}" if libs else "")
                  + (f" [{e['reason']}]" if e["source"] == "bundled" else ""), file=sys.stderr)
        elif e["status"] in ("unsupported", "disabled"):
            print(f"dask-lsio: {WHAT[name]} not built: {e['reason']}", file=sys.stderr)
        else:
            missing.append(name)
    if not missing:
        return
    bar = "=" * 78
    out = [bar]
    for name in missing:
        e = PLAN[name]
        out += [f"dask-lsio WARNING: the {WHAT[name]} ({e['module']}) was NOT built:",
                f"  {e['reason'] or 'the build did not reach it'}",
                f"  Without it {WITHOUT[name]}."]
        if e["fix"]:
            out.append(f"  Fix: {e['fix']}")
    out.append(bar)
    # a warning, not a print: pip (>= 25) shows a build backend's warnings without -v
    warnings.warn("\n".join(out), stacklevel=1)
    if _flag("LSIO_REQUIRE_EXTENSIONS"):
        raise SetupError("LSIO_REQUIRE_EXTENSIONS is set and the "
                         + " and the ".join(WHAT[n] for n in missing) + " could not be built")


class BuildPy(build_py):
    """Also writes dask_lsio/_build_info.py (build_ext rewrites it with the outcome)."""

    def run(self):
        super().run()
        if not self.distribution.has_ext_modules():  # build_ext will not run
            _write_build_info(_package_dirs(self))
            _report()


class BuildExt(build_ext):
    """Compiles the bundled sources an extension needs, then the extensions; a bundle that
    does not compile here leaves its extension out (recorded and reported), never the
    install."""

    def build_extensions(self):
        # always relink: the extension's own sources do not change when it switches between
        # the system and the bundled libraries, and setuptools would keep the old build
        # (while the build record said otherwise); the bundled objects stay cached
        self.force = True
        by_module = {e["module"]: n for n, e in PLAN.items()}
        for ext in list(self.extensions):
            name = by_module.get(ext.name)
            if name is None or PLAN[name]["source"] != "bundled":
                continue
            start = time.monotonic()
            try:
                jobs = self.parallel if type(self.parallel) is int and self.parallel > 0 else None
                # objects kept in build/ (not build_temp, a fresh temporary directory for
                # editable installs), so rebuilds do not compile the libraries again
                inc, archive, link_args = CB.compile_bundle(name, self.compiler,
                                                            str(TOP / "build"), jobs=jobs)
            except (CCompilerError, BaseError, OSError) as err:
                detail = str(err).strip().splitlines()
                PLAN[name].update(
                    status="failed",
                    reason="the bundled sources did not compile here: "
                           + (detail[-1] if detail else type(err).__name__),
                    fix=f"install {' '.join(CB.TARGETS[name].debian)} (Debian/Ubuntu) or a "
                        "working C compiler, " + _reinstall_hint())
                self.extensions.remove(ext)
                continue
            PLAN[name]["bundle_seconds"] = round(time.monotonic() - start, 1)
            ext.include_dirs.extend(inc)
            ext.extra_objects.append(archive)
            ext.extra_link_args.extend(link_args)
        super().build_extensions()
        for ext in self.extensions:
            name = by_module.get(ext.name)
            if name is not None:
                PLAN[name]["status"] = "built"

    def run(self):
        super().run()
        _write_build_info(_package_dirs(self))
        _report()


modules = [
    f"dask_lsio/_cffi_build.py:{name}_ffi_{entry['source']}"
    for name, entry in PLAN.items()
    if entry["source"] is not None
]
setup(cffi_modules=modules, cmdclass={"build_py": BuildPy, "build_ext": BuildExt})
