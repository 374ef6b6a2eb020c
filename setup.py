"""Build the C extensions whose libraries are present; without them the package still installs
and runs (``python -m dask_lsio info`` says what is missing and why).

- ``dask_lsio.io._uring_ext``, the io_uring engine, needs liburing (liburing-dev); without
  it the thread engine is used.
- ``dask_lsio.zarr._kernel_ext``, the decode kernel, needs c-blosc, liblz4, libzstd and zlib
  (libblosc-dev, liblz4-dev, libzstd-dev, zlib1g-dev); without it chunks are decoded with
  numcodecs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from setuptools import setup

URING_PROBE = """#include <liburing.h>
int main(void){struct io_uring r; return io_uring_queue_init(1,&r,0) < 0;}
"""
KERNEL_PROBE = """#include <blosc.h>
#include <lz4.h>
#include <zstd.h>
#include <zlib.h>
int main(void){size_t n; return blosc_cbuffer_validate("", 0, &n) + (int)ZSTD_versionNumber()
    + (zlibVersion() == 0) + LZ4_versionNumber();}
"""


def _links(name: str, src: str, libs: list[str]) -> bool:
    """True when ``src`` compiles and links with ``libs`` here (and LSIO_NO_<name> is unset)."""
    if os.environ.get(f"LSIO_NO_{name}"):
        return False
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        c_file = os.path.join(tmp, "probe.c")
        with open(c_file, "w") as f:
            f.write(src)
        cmd = [cc, c_file, "-o", os.path.join(tmp, "probe"), *(f"-l{lib}" for lib in libs)]
        try:
            done = subprocess.run(cmd, capture_output=True)
        except OSError:
            return False
    return done.returncode == 0


modules = []
if _links("URING", URING_PROBE, ["uring"]):
    modules.append("dask_lsio/_cffi_build.py:uring_ffi")
else:
    sys.stderr.write(
        "dask-lsio: liburing headers not found (apt-get install liburing-dev); "
        "building without the io_uring engine, the thread engine will be used\n"
    )
if _links("KERNEL", KERNEL_PROBE, ["blosc", "lz4", "zstd", "z"]):
    modules.append("dask_lsio/_cffi_build.py:kernel_ffi")
else:
    sys.stderr.write(
        "dask-lsio: c-blosc/lz4/zstd/zlib headers not found (apt-get install libblosc-dev "
        "liblz4-dev libzstd-dev zlib1g-dev); building without the decode kernel, numcodecs "
        "decodes\n"
    )
setup(cffi_modules=modules)
