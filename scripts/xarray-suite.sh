#!/usr/bin/env bash
# Run xarray's zarr backend tests (xarray/tests/test_backends.py -k Zarr) with
# LSIOCodecPipeline as zarr's codec pipeline for the whole session; the plugin fails the
# session unless zarr arrays on a LocalStore really get it, and counts what it handles.
# Usage: scripts/xarray-suite.sh [python] (default: the repo's .venv/bin/python).
set -euo pipefail
source "$(dirname "$0")/suite-common.sh"
run_suite "${1:-}" xarray xarray ZARR_CODEC_PIPELINE__PATH=dask_lsio.zarr.LSIOCodecPipeline -- \
    -p xarray_suite_plugin xarray/tests/test_backends.py -k Zarr
