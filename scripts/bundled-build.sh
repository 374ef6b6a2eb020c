#!/usr/bin/env bash
# The build a user without root gets: both C extensions compiled from the sources bundled in
# third_party/ (LSIO_BUNDLED=1), in a copy of this checkout, then checked: they link nothing
# but libc, `dask-lsio info` reports io_uring and the C kernel built from the bundled
# sources, and the read/kernel tests pass against them.
# Usage: scripts/bundled-build.sh [python] (default: the repo's .venv/bin/python).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
source "$HERE/scripts/suite-common.sh"
PY=$(suite_python "${1:-}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git -C "$HERE" ls-files -z --cached --others --exclude-standard \
    | (cd "$HERE" && xargs -0 cp --parents -t "$WORK" 2>/dev/null || true)
cd "$WORK"
time LSIO_BUNDLED=1 LSIO_REQUIRE_EXTENSIONS=1 "$PY" setup.py -q build_ext --inplace 2>&1 \
    | grep -v "^copying\|^running" || true
for so in dask_lsio/io/_uring_ext*.so dask_lsio/zarr/_kernel_ext*.so; do
    if ldd "$so" | grep -E "uring|blosc|lz4|zstd|libz\." ; then
        echo "bundled-build: $so links a system codec/uring library" >&2
        exit 1
    fi
done
export PYTHONPATH="$WORK" LSIO_REQUIRE_URING=1
"$PY" -m dask_lsio info | tee info.txt
grep -q "^engine: io_uring" info.txt
grep -q "^io_uring engine: built against the bundled sources" info.txt
grep -q "^decode kernel: built against the bundled sources" info.txt
"$PY" -c "import dask_lsio, sys; assert dask_lsio.__file__.startswith('$WORK'), dask_lsio.__file__"
"$PY" -m pytest -q -p no:cacheprovider tests/test_kernel.py tests/test_io_read.py \
    tests/test_from_zarr.py tests/test_boxes.py
