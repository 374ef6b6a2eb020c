"""cffi (API mode) builder for the io_uring core, run at install time by setup.py.

Not imported at run time. ``python dask_lsio/io/_uring_build.py`` builds the extension in
place, which is handy while working on the C code.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).parent
HEADER = HERE / "_uring.h"
SOURCE = HERE / "_uring.c"


def _cdef_text() -> str:
    """The header without preprocessor includes, which cffi's parser does not read."""
    lines = HEADER.read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("#include"))


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "dask_lsio.io._uring_ext",
    '#include "_uring.h"',
    sources=[str(SOURCE.relative_to(HERE.parent.parent))],
    include_dirs=[str(HERE.relative_to(HERE.parent.parent))],
    libraries=["uring"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
)

if __name__ == "__main__":
    import os

    os.chdir(HERE.parent.parent)
    ffibuilder.compile(verbose=True)
