#!/usr/bin/env bash
# Run part of zarr-python's own test suite with LSIOCodecPipeline as the codec pipeline
# (as the zarrs pipeline project does): the tests of the installed zarr version, from its
# sdist on PyPI. Usage: scripts/zarr-suite.sh [python] (default .venv/bin/python).
set -euo pipefail
PY=${1:-.venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=$($PY -c "import zarr; print(zarr.__version__)")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
$PY -m pip install -q pytest-asyncio
$PY -m pip download -q "zarr==$VERSION" --no-binary :all: --no-deps -d "$WORK"
tar xzf "$WORK"/zarr-"$VERSION".tar.gz -C "$WORK"
cd "$WORK/zarr-$VERSION"
# zarr's conftest resets zarr.config around every test; the environment survives the reset
ZARR_CODEC_PIPELINE__PATH=dask_lsio.zarr.LSIOCodecPipeline PYTHONPATH="$HERE" \
    $PY -m pytest -q -p no:cacheprovider -p zarr_suite_plugin -o addopts="" \
    tests/test_indexing.py tests/test_array.py tests/test_codecs tests/test_v2.py \
    tests/test_api.py tests/test_group.py
