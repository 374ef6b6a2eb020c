#!/usr/bin/env bash
# Run dask's zarr tests with dask.array.from_zarr / to_zarr (and Array.to_zarr) routed to
# dask_lsio.from_zarr / to_zarr (see dask_suite_plugin.py for the tests adjusted, and why).
# Usage: scripts/dask-suite.sh [python] (default: the repo's .venv/bin/python).
set -euo pipefail
source "$(dirname "$0")/suite-common.sh"
# --runslow: test_zarr_sharding_roundtrip is marked slow. -p no:asyncio: dask does not use
# pytest-asyncio, whose config deprecation warning dask's filterwarnings=error would raise.
run_suite "${1:-}" dask dask -- -p no:asyncio -p dask_suite_plugin --runslow -k zarr \
    dask/array/tests/test_array_core.py dask/array/tests/test_xarray.py \
    dask/tests/test_distributed.py
