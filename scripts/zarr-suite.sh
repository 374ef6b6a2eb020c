#!/usr/bin/env bash
# Run part of zarr-python's own test suite with LSIOCodecPipeline as the codec pipeline
# (as the zarrs pipeline project does), counting the reads and writes it handles itself.
# Usage: scripts/zarr-suite.sh [python] (default: the repo's .venv/bin/python).
set -euo pipefail
source "$(dirname "$0")/suite-common.sh"
# zarr's conftest resets zarr.config around every test; the environment survives the reset
run_suite "${1:-}" zarr zarr ZARR_CODEC_PIPELINE__PATH=dask_lsio.zarr.LSIOCodecPipeline -- \
    -p zarr_suite_plugin tests/test_indexing.py tests/test_array.py tests/test_codecs \
    tests/test_v2.py tests/test_api.py tests/test_group.py
