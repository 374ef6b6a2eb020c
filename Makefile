# dask-lsio: `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: setup demo test bench clean

setup: $(STAMP)

C_SOURCES := $(filter-out %_ext.c,$(wildcard dask_lsio/*/_*.c dask_lsio/*/_*.h)) dask_lsio/_cffi_build.py

$(STAMP): pyproject.toml setup.py $(C_SOURCES)
	bash scripts/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The peers the read benchmark compares against (zarrs, tensorstore).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

# The main job on sample data it generates: the laptop example, then the benchmarks in quick mode.
demo: $(BENCH_STAMP)
	$(PY) -m dask_lsio info
	$(PY) examples/laptop.py
	$(PY) benchmarks/bench_io.py --quick
	$(PY) benchmarks/bench_read.py --quick
	$(PY) benchmarks/bench_write.py --quick
	$(PY) benchmarks/bench_cluster.py --quick

# Our tests, then the suites of the projects we plug into, run against our code.
test: setup
	$(PY) -m dask_lsio info
	$(PY) -m pytest -q
	bash scripts/zarr-suite.sh $(PY)
	bash scripts/xarray-suite.sh $(PY)
	bash scripts/dask-suite.sh $(PY)

# The full benchmarks (many minutes; cold-cache runs need root).
bench: $(BENCH_STAMP)
	$(PY) benchmarks/bench_io.py
	$(PY) benchmarks/bench_read.py
	$(PY) benchmarks/bench_write.py
	$(PY) benchmarks/bench_cluster.py

clean:
	rm -rf $(VENV) build *.egg-info dask_lsio/*/_*_ext*.so dask_lsio/*/_*_ext.c
