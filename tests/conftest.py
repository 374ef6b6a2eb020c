"""Shared fixtures: every engine test runs on both engines.

io_uring tests skip where io_uring cannot run, unless LSIO_REQUIRE_URING=1 (set by .ci/run
on our machines, which have it), where a missing io_uring fails loudly instead.
The S3 fixtures (a moto server on loopback, buckets, a fault proxy) are in s3_fixtures.py.
"""

from __future__ import annotations

import contextlib
import os

import pytest

from dask_lsio.io import IoUringEngine, ThreadEngine, uring_status

pytest_plugins = ["s3_fixtures"]  # s3_server, s3, fault_proxy, faulty_s3

ENGINES = ["io_uring", "threads"]


def make_engine(kind: str, **kwargs):
    if kind == "io_uring":
        st = uring_status()
        if not st.available:
            if os.environ.get("LSIO_REQUIRE_URING") == "1":
                pytest.fail(f"io_uring is required here but unavailable: {st.reason}")
            pytest.skip(f"io_uring unavailable: {st.reason}")
        return IoUringEngine(**kwargs)
    return ThreadEngine(**kwargs)


@pytest.fixture(params=ENGINES)
def engine_kind(request) -> str:
    return request.param


@pytest.fixture
def engine(engine_kind):
    eng = make_engine(engine_kind)
    yield eng
    eng.close()


def write_files(directory, sizes, seed=0) -> dict[str, bytes]:
    """Files of random bytes named f0, f1, ... with the given sizes; returns path -> bytes."""
    rng = __import__("numpy").random.default_rng(seed)
    out = {}
    for i, n in enumerate(sizes):
        path = os.path.join(directory, f"f{i}")
        data = rng.bytes(int(n))
        with open(path, "wb") as f:
            f.write(data)
        out[path] = data
    return out


@pytest.fixture
def loopback_cluster():
    """Start a real distributed.LocalCluster on loopback (worker processes, one thread each,
    no dashboard, unless overridden; in-process workers with ``processes=False``) and a
    Client on it:
    ``with loopback_cluster(n_workers=2) as (cluster, client): ...``."""
    distributed = pytest.importorskip("distributed")

    @contextlib.contextmanager
    def start(**options):
        options = {"processes": True, "threads_per_worker": 1, "dashboard_address": None} | options
        if options["processes"]:  # (in-process workers talk over inproc://, not TCP)
            options.setdefault("host", "127.0.0.1")
        with distributed.LocalCluster(**options) as cluster, \
                distributed.Client(cluster) as client:
            yield cluster, client

    return start
