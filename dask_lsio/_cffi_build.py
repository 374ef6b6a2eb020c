"""cffi (API mode) builders of the C extensions, run at install time by setup.py.

Not imported at run time (setup.py names ``uring_ffi`` and ``kernel_ffi`` in
``cffi_modules``, each only when its libraries are present). ``python
dask_lsio/_cffi_build.py`` builds both in place, which is handy while working on the C code.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

TOP = Path(__file__).parent.parent  # the repository: setup.py runs from here


def _builder(module: str, header: Path, source: Path, libraries: list[str]) -> FFI:
    """An FFI for ``module`` built from ``source``, declared by ``header``."""
    ffi = FFI()
    # the header without preprocessor includes, which cffi's parser does not read
    lines = header.read_text().splitlines()
    ffi.cdef("\n".join(line for line in lines if not line.startswith("#include")))
    ffi.set_source(
        module,
        f'#include "{header.name}"',
        sources=[str(source.relative_to(TOP))],
        include_dirs=[str(header.parent.relative_to(TOP))],
        libraries=libraries,
        extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
    )
    return ffi


_IO = TOP / "dask_lsio" / "io"
_ZARR = TOP / "dask_lsio" / "zarr"
# the io_uring engine's core (liburing)
uring_ffi = _builder("dask_lsio.io._uring_ext", _IO / "_uring.h", _IO / "_uring.c", ["uring"])
# the decode kernel (c-blosc, liblz4 for parts of blosc-LZ4 chunks, libzstd, zlib)
kernel_ffi = _builder("dask_lsio.zarr._kernel_ext", _ZARR / "_kernel.h", _ZARR / "_kernel.c",
                      ["blosc", "lz4", "zstd", "z"])

if __name__ == "__main__":
    import os

    os.chdir(TOP)
    for ffi in (uring_ffi, kernel_ffi):
        ffi.compile(verbose=True)
