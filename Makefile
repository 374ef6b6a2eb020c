# dask-lsio: `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py dask_lsio/io/_uring.c dask_lsio/io/_uring.h dask_lsio/io/_uring_build.py
	bash scripts/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The main job on a sample dataset it generates (until from_zarr lands: the IO benchmark).
demo: setup
	$(PY) -m dask_lsio info
	$(PY) benchmarks/bench_io.py --quick

test: setup
	$(PY) -m dask_lsio info
	$(PY) -m pytest -q

# The full IO benchmark (several minutes; cold-cache runs need root).
bench: setup
	$(PY) benchmarks/bench_io.py

clean:
	rm -rf $(VENV) build *.egg-info dask_lsio/io/_uring_ext*.so
