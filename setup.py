"""Build the io_uring extension when liburing's headers are present; otherwise install a
package that runs on the thread engine and says why (``python -m dask_lsio info``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from setuptools import setup


def _liburing_available() -> bool:
    """True when a program using liburing compiles and links here."""
    if os.environ.get("LSIO_NO_URING"):
        return False
    cc = os.environ.get("CC", "cc")
    src = "#include <liburing.h>\nint main(void){struct io_uring r; return io_uring_queue_init(1,&r,0) < 0;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        c_file = os.path.join(tmp, "probe.c")
        with open(c_file, "w") as f:
            f.write(src)
        try:
            done = subprocess.run(
                [cc, c_file, "-o", os.path.join(tmp, "probe"), "-luring"],
                capture_output=True,
            )
        except OSError:
            return False
    return done.returncode == 0


if _liburing_available():
    setup(cffi_modules=["dask_lsio/io/_uring_build.py:ffibuilder"])
else:
    sys.stderr.write(
        "dask-lsio: liburing headers not found (apt-get install liburing-dev); "
        "building without the io_uring engine, the thread engine will be used\n"
    )
    setup()
