"""cffi (API mode) builder for the decode kernel, run at install time by setup.py.

Not imported at run time. ``python dask_lsio/zarr/_kernel_build.py`` builds the extension in
place, which is handy while working on the C code.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).parent
TOP = HERE.parent.parent
HEADER = HERE / "_kernel.h"
SOURCE = HERE / "_kernel.c"


def _cdef_text() -> str:
    """The header without preprocessor includes, which cffi's parser does not read."""
    lines = HEADER.read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("#include"))


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "dask_lsio.zarr._kernel_ext",
    '#include "_kernel.h"',
    sources=[str(SOURCE.relative_to(TOP))],
    include_dirs=[str(HERE.relative_to(TOP))],
    libraries=["blosc", "zstd", "z"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
)

if __name__ == "__main__":
    import os

    os.chdir(TOP)
    ffibuilder.compile(verbose=True)
