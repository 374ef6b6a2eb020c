"""cffi (API mode) builders of the C extensions, run at build time by setup.py.

Not imported at run time. Each extension is built one of two ways, chosen by setup.py:

- ``system``: against the system libraries, as before (``-luring``; ``-lblosc -llz4 -lzstd
  -lz``), when their -dev packages are installed;
- ``bundled``: against the library sources in ``third_party/`` (:data:`BUNDLES`, taken from
  PyPI sdists by ``third_party/update.sh``), compiled by :func:`compile_bundle` into a static
  archive that is linked into the extension with its symbols hidden, so the extension needs no
  shared library beyond libc.

setup.py names ``uring_ffi_system``, ``uring_ffi_bundled``, ``kernel_ffi_system`` or
``kernel_ffi_bundled`` in ``cffi_modules``. ``python dask_lsio/_cffi_build.py`` builds both in
place (the engine against the system liburing, the kernel against the bundled sources unless
``LSIO_SYSTEM_KERNEL=1``; with ``LSIO_BUNDLED=1`` both against the bundled sources), which is
handy while working on the C code.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from cffi import FFI

TOP = Path(__file__).parent.parent  # the repository: setup.py runs from here
THIRD_PARTY = TOP / "third_party"
_IO = TOP / "dask_lsio" / "io"
_ZARR = TOP / "dask_lsio" / "zarr"
_X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def _rel(path: Path) -> str:
    """``path`` relative to the repository (distutils places objects by source path)."""
    return str(path.relative_to(TOP))


# (NamedTuples, not dataclasses: cffi runs this file outside sys.modules)
class Bundle(NamedTuple):
    """Library sources in third_party/ compiled into one static archive."""

    name: str  # the archive: lib<name>.a
    versions: dict  # library -> version, for the build trace
    sources: list  # .c and .S files, relative to TOP
    include_dirs: list  # for the sources and for the extension using them
    macros: list = []
    avx2: tuple = ()  # sources compiled with -mavx2 (runtime-dispatched by c-blosc)
    libraries: list = []  # system libraries it needs (libc's)
    generated: str | None = None  # a header written at build time (see _liburing_compat_h)

    def present(self) -> bool:
        return all((TOP / s).is_file() for s in self.sources)


def _blosc_bundle() -> Bundle:
    """c-blosc 1.x with its internal lz4, zlib and zstd, as numcodecs builds it."""
    base = THIRD_PARTY / "c-blosc"
    complibs = base / "internal-complibs"
    lz4 = next(complibs.glob("lz4-*"), complibs / "lz4")
    zlib = next(complibs.glob("zlib-*"), complibs / "zlib")
    zstd = next(complibs.glob("zstd-*"), complibs / "zstd")
    blosc = sorted((base / "blosc").glob("*.c"))
    if not _X86_64:  # the SSE2/AVX2 shuffles are x86 only (c-blosc uses the generic ones)
        blosc = [p for p in blosc if "sse2" not in p.name and "avx2" not in p.name]
    sources = blosc + [lz4 / "lz4.c", lz4 / "lz4hc.c"]
    sources += [zlib / f"{n}.c" for n in ("adler32", "compress", "crc32", "deflate", "inffast",
                                          "inflate", "inftrees", "trees", "uncompr", "zutil")]
    for part in ("common", "compress", "decompress"):
        sources += sorted((zstd / part).glob("*.c"))
    macros: list[tuple[str, str | None]] = [("HAVE_LZ4", "1"), ("HAVE_ZLIB", "1"),
                                            ("HAVE_ZSTD", "1")]
    if _X86_64:
        macros += [("SHUFFLE_SSE2_ENABLED", "1"), ("SHUFFLE_AVX2_ENABLED", "1")]
    if _X86_64 and sys.platform.startswith("linux"):
        sources.append(zstd / "decompress" / "huf_decompress_amd64.S")  # zstd's fast Huffman loop
    else:
        macros.append(("ZSTD_DISABLE_ASM", "1"))
    versions = {"c-blosc": _header_define(base / "blosc" / "blosc.h", "BLOSC_VERSION_STRING"),
                "lz4": lz4.name.partition("-")[2], "zlib": zlib.name.partition("-")[2],
                "zstd": zstd.name.partition("-")[2]}
    return Bundle(
        name="lsio_blosc",
        versions=versions,
        sources=[_rel(p) for p in sources],
        include_dirs=[_rel(d) for d in (base / "blosc", lz4, zlib, zstd, zstd / "common")],
        macros=macros,
        avx2=tuple(_rel(p) for p in sources if "avx2" in p.name),
        libraries=["pthread"] if os.name == "posix" else [],
    )


def _uring_bundle() -> Bundle:
    """liburing, linked against libc (liburing's ``--use-libc``); compat.h is generated."""
    base = THIRD_PARTY / "liburing"
    spec = base / "liburing.spec"
    version = "unknown"
    if spec.is_file():
        m = re.search(r"^Version:\s*(\S+)", spec.read_text(), re.M)
        version = m.group(1) if m else version
    names = ("setup", "queue", "register", "syscall", "version")
    return Bundle(
        name="lsio_uring",
        versions={"liburing": version},
        sources=[_rel(base / "src" / f"{n}.c") for n in names],
        include_dirs=[_rel(base / "src" / "include")],
        macros=[("_GNU_SOURCE", None), ("_LARGEFILE_SOURCE", None),
                ("_FILE_OFFSET_BITS", "64"), ("LIBURING_INTERNAL", None)],
        generated="liburing/compat.h",
    )


def _header_define(header: Path, name: str) -> str:
    """The string a header #defines ``name`` to ("unknown" when absent)."""
    try:
        m = re.search(rf'#define\s+{name}\s+"([^"]*)"', header.read_text())
    except OSError:
        return "unknown"
    return m.group(1) if m else "unknown"


BUNDLES = {"uring": _uring_bundle(), "kernel": _blosc_bundle()}


class Target(NamedTuple):
    """One C extension: its module, its C files and how it links each way."""

    module: str
    header: Path
    source: Path
    libraries: list  # system mode: -l<name>
    debian: list  # the Debian packages that provide them
    probe: str  # a program that compiles and links with them, and only with them
    versions: str  # lines "name EXPR..." that setup.py preprocesses for the version numbers
    headers: list  # the includes of `probe`/`versions`
    more: list = []  # further C files of the extension (beside `source`)


TARGETS = {
    "uring": Target(
        module="dask_lsio.io._uring_ext",
        header=_IO / "_uring.h",
        source=_IO / "_uring.c",
        libraries=["uring"],
        debian=["liburing-dev"],
        probe="int main(void){struct io_uring r; return io_uring_queue_init(1,&r,0) < 0;}\n",
        versions="liburing IO_URING_VERSION_MAJOR . IO_URING_VERSION_MINOR\n",
        headers=["liburing.h"],
        more=[_IO / "_uring_ops.c", _IO / "_uring_batch.c", _IO / "_posix.c"],
    ),
    "kernel": Target(
        module="dask_lsio.zarr._kernel_ext",
        header=_ZARR / "_kernel.h",
        source=_ZARR / "_kernel.c",
        libraries=["blosc", "lz4", "zstd", "z"],
        debian=["libblosc-dev", "liblz4-dev", "libzstd-dev", "zlib1g-dev"],
        probe=(
            "int main(void){size_t n; return blosc_cbuffer_validate(\"\", 0, &n)"
            " + (int)ZSTD_versionNumber() + (zlibVersion() == 0) + LZ4_versionNumber();}\n"
        ),
        versions=(
            "c-blosc BLOSC_VERSION_STRING\n"
            "lz4 LZ4_VERSION_MAJOR . LZ4_VERSION_MINOR . LZ4_VERSION_RELEASE\n"
            "zstd ZSTD_VERSION_MAJOR . ZSTD_VERSION_MINOR . ZSTD_VERSION_RELEASE\n"
            "zlib ZLIB_VERSION\n"
        ),
        headers=["blosc.h", "lz4.h", "zstd.h", "zlib.h"],
        more=[_ZARR / "_kernel_codecs.c", _ZARR / "_kernel_gather.c", _ZARR / "_kernel_lz4.c"],
    ),
}


def _builder(name: str, mode: str, include_dirs: list[str] = (), **extra) -> FFI:
    """An FFI for extension ``name`` ("uring" or "kernel") built in ``mode`` ("system" or
    "bundled"); ``extra`` adds Extension arguments (lists are appended to)."""
    t = TARGETS[name]
    ffi = FFI()
    # the header without preprocessor includes, which cffi's parser does not read
    lines = t.header.read_text().splitlines()
    ffi.cdef("\n".join(line for line in lines if not line.startswith("#include")))
    kwds = dict(
        sources=[_rel(t.source), *(_rel(p) for p in t.more)],
        include_dirs=[_rel(t.header.parent), *include_dirs],
        libraries=list(t.libraries),
        extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
    )
    if mode == "bundled":
        b = BUNDLES[name]
        kwds["include_dirs"] += b.include_dirs
        kwds["libraries"] = list(b.libraries)
    for key, value in extra.items():
        kwds[key] = kwds.get(key, []) + list(value)
    ffi.set_source(t.module, f'#include "{t.header.name}"', **kwds)
    return ffi


# the names setup.py gives cffi_modules (cffi calls them for the FFI)
def uring_ffi_system() -> FFI:
    """The io_uring engine's core, against the system's liburing."""
    return _builder("uring", "system")


def uring_ffi_bundled() -> FFI:
    """The io_uring engine's core, against third_party/liburing."""
    return _builder("uring", "bundled")


def kernel_ffi_system() -> FFI:
    """The decode kernel, against the system's c-blosc, liblz4, libzstd and zlib."""
    return _builder("kernel", "system")


def kernel_ffi_bundled() -> FFI:
    """The decode kernel, against third_party/c-blosc (and its lz4, zlib and zstd)."""
    return _builder("kernel", "bundled")


# ---- compiling a bundle ----------------------------------------------------------------------

def try_build(compiler, code: str, libraries: list[str] | None = None,
              include_dirs: list[str] = ()) -> bool:
    """True when ``code`` compiles with ``compiler`` (a configured distutils CCompiler) and, if
    ``libraries`` is given, links into a program with them. Quiet: the compiler's complaints
    about what is missing are the expected answer here."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        cmd = [*compiler.compiler_so, *(f"-I{d}" for d in include_dirs), src]
        if libraries is None:
            cmd += ["-c", "-o", os.path.join(tmp, "probe.o")]
        else:
            cmd += ["-o", os.path.join(tmp, "probe"), *shlex.split(os.environ.get("LDFLAGS", "")),
                    *(f"-l{lib}" for lib in libraries)]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:  # no compiler
            return False


def header_versions(compiler, name: str, include_dirs: list[str] = ()) -> dict[str, str]:
    """The versions of extension ``name``'s libraries that their headers state here
    (preprocessed with ``compiler``; "unknown" where a header does not say)."""
    import subprocess

    t = TARGETS[name]
    marked = "".join(f"lsio_version {line}\n" for line in t.versions.splitlines())
    code = "".join(f"#include <{h}>\n" for h in t.headers) + marked
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "versions.c")
        with open(src, "w") as f:
            f.write(code)
        cmd = [*compiler.compiler_so, *(f"-I{d}" for d in include_dirs), "-E", "-P", src]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError:
            done = None
    for line in t.versions.splitlines():
        lib = line.split()[0]
        out[lib] = "unknown"
        if done is None or done.returncode:
            continue
        for got in done.stdout.splitlines():
            parts = got.split()
            if len(parts) > 2 and parts[0] == "lsio_version" and parts[1] == lib:
                value = "".join(p.strip('"') for p in parts[2:])
                if re.fullmatch(r"[0-9][0-9A-Za-z.+~-]*", value):
                    out[lib] = value
    return out


def _liburing_compat_h(compiler) -> str:
    """liburing/compat.h as liburing's ./configure writes it for these kernel headers."""
    def has(code: str) -> bool:
        return try_build(compiler, code + "\nint lsio_probe;\n")

    out = ["/* SPDX-License-Identifier: MIT */", "/* generated by dask-lsio's setup.py, as",
           " * liburing's ./configure writes it */",
           "#ifndef LIBURING_COMPAT_H", "#define LIBURING_COMPAT_H", ""]
    if not has("#include <linux/fs.h>\n__kernel_rwf_t lsio_x;"):
        out += ["typedef int __kernel_rwf_t;", ""]
    if has("#include <linux/time_types.h>\nstruct __kernel_timespec lsio_x;"):
        out += ["#include <linux/time_types.h>",
                "/* <linux/time_types.h> is included above and not needed again */",
                "#define UAPI_LINUX_IO_URING_H_SKIP_LINUX_TIME_TYPES_H 1", ""]
    else:
        out += ["#include <stdint.h>", "", "struct __kernel_timespec {",
                "\tint64_t\t\ttv_sec;", "\tlong long\ttv_nsec;", "};", "",
                "/* <linux/time_types.h> is not available, so it can't be included */",
                "#define UAPI_LINUX_IO_URING_H_SKIP_LINUX_TIME_TYPES_H 1", ""]
    if has("#include <string.h>\n#include <linux/openat2.h>\nstruct open_how lsio_x;"):
        out += ["#include <linux/openat2.h>", ""]
    else:
        out += ["#include <inttypes.h>", "", "struct open_how {", "\tuint64_t\tflags;",
                "\tuint64_t\tmode;", "\tuint64_t\tresolve;", "};", ""]
    glibc_statx = has("#define _GNU_SOURCE\n#include <fcntl.h>\n#include <sys/stat.h>\n"
                      "struct statx lsio_x;")
    statx = has("#include <fcntl.h>\n#include <linux/stat.h>\nstruct statx lsio_x;")
    if statx and not glibc_statx:
        out += ["#include <sys/stat.h>", ""]
    if not has("#include <linux/futex.h>\n#include <unistd.h>\nstruct futex_waitv lsio_x;"):
        out += ["#include <inttypes.h>", "", "#define FUTEX_32\t2",
                "#define FUTEX_WAITV_MAX\t128", "", "struct futex_waitv {",
                "\tuint64_t\tval;", "\tuint64_t\tuaddr;", "\tuint32_t\tflags;",
                "\tuint32_t\t__reserved;", "};", ""]
    if not has("#include <sys/wait.h>\nidtype_t lsio_x;"):
        out += ["typedef enum", "{", "  P_ALL,", "  P_PID,", "  P_PGID", "} idtype_t;"]
    out += ["#endif", ""]
    return "\n".join(out)


def compile_bundle(name: str, compiler, build_dir: str, jobs: int | None = None
                   ) -> tuple[list[str], str, list[str]]:
    """Compile the bundle of extension ``name`` with ``compiler`` (a configured distutils
    CCompiler) into a static archive under ``build_dir``, ``jobs`` files at a time. Objects are
    kept per compiler and flags, and reused while newer than their source, so a rebuild (an
    editable install after a change to our C code) does not compile the libraries again.
    Returns the extra include directories the extension needs, the archive, and the link
    arguments that hide the archive's symbols. Raises setuptools' CompileError (or another
    CCompilerError) when the sources do not build here."""
    import hashlib

    b = BUNDLES[name]
    flags = ["-O3", "-g0", "-w"]  # upstream's optimisation; not our code's warnings
    key = hashlib.sha1(repr((compiler.compiler_so, b.macros, flags, sys.platform,
                             platform.machine(), sorted(b.versions.items()))).encode())
    out = Path(build_dir) / "lsio-bundled" / f"{b.name}-{key.hexdigest()[:10]}"
    include_dirs = list(b.include_dirs)
    extra_includes: list[str] = []
    if b.generated:
        gen_dir = out / "include"
        header = gen_dir / b.generated
        header.parent.mkdir(parents=True, exist_ok=True)
        text = _liburing_compat_h(compiler)
        if not header.is_file() or header.read_text() != text:
            header.write_text(text)
        extra_includes.append(str(gen_dir))
        include_dirs = extra_includes + include_dirs
    if ".S" not in compiler.src_extensions:  # zstd's assembly, which gcc and clang take
        compiler.src_extensions = [*compiler.src_extensions, ".S"]
    obj_dir = str(out / "obj")

    def one(src: str) -> str:
        obj = compiler.object_filenames([src], output_dir=obj_dir)[0]
        if os.path.exists(obj) and os.path.getmtime(obj) >= os.path.getmtime(src):
            return obj
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        post = flags + (["-mavx2"] if src in b.avx2 else [])
        return compiler.compile([src], output_dir=obj_dir, macros=b.macros,
                                include_dirs=include_dirs, extra_postargs=post)[0]

    jobs = jobs or min(os.cpu_count() or 1, 8)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        objects = list(pool.map(one, b.sources))
    archive = compiler.library_filename(b.name, output_dir=str(out))
    if os.path.exists(archive):  # `ar -cr` adds to an archive: a member no longer built stays
        os.remove(archive)
    compiler.create_static_lib(objects, b.name, output_dir=str(out))
    # keep the bundled libraries' symbols inside the extension: nothing else binds to them
    # and they never interpose on a system copy loaded by another module
    link_args = ["-Wl,--exclude-libs,ALL"] if sys.platform.startswith("linux") else []
    return extra_includes, archive, link_args


if __name__ == "__main__":
    import setuptools  # noqa: F401  (provides distutils on Python >= 3.12)
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

    os.chdir(TOP)
    off = ("", "0", "no", "false")
    every = "system" if os.environ.get("LSIO_BUNDLED", "").strip().lower() in off else "bundled"
    for name in ("uring", "kernel"):
        extra: dict = {}
        mode = every
        if name == "kernel" and os.environ.get("LSIO_SYSTEM_KERNEL", "").strip().lower() in off:
            mode = "bundled"  # as setup.py builds it (its KERNEL_BUNDLED says why)
        if mode == "bundled":
            cc = new_compiler()
            customize_compiler(cc)
            inc, archive, link_args = compile_bundle(name, cc, "build")
            extra = dict(include_dirs=inc, extra_objects=[archive], extra_link_args=link_args)
        ffi = _builder(name, mode, **extra)
        ffi.compile(verbose=True)
