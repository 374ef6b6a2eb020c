"""Fixtures of a real S3 server on loopback, for the object-store tests (a pytest plugin,
loaded by ``conftest.py``).

- ``s3_server`` (session): moto's ``ThreadedMotoServer`` on ``127.0.0.1`` at a free port, as
  zarr-python's own suite runs it; AWS credentials in the environment point at nothing real
  (and differ from the ones the fixtures hand out, so a test can tell which were used).
- ``s3`` (function): a fresh bucket on it, as an :class:`S3Bucket`: ``url``
  (``"s3://<bucket>"``), ``storage_options`` (endpoint, key, the planted :data:`SECRET`,
  region) and ``zarr_store()``, zarr-python's own store on the same bucket (the oracle).
  Its objects and the bucket are removed after the test. ``s3_module``: one bucket for
  the tests of a module, for data written once and only read.
- ``fault_proxy`` / ``faulty_s3`` (function): a :class:`fault_proxy.FaultProxy` in front of
  the server, and the same bucket as ``s3`` seen through it (``faulty_s3.proxy``).

Everything skips, saying why, where moto (or obstore, boto3, s3fs for what needs them) is
not installed.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

SECRET = "SECRET-d8f3e1c07a2b4f9e91c6"  # planted in storage_options: must never be shown
ACCESS_KEY = "testing-key"
REGION = "us-east-1"
ENV = {"AWS_ACCESS_KEY_ID": "env-testing-key", "AWS_SECRET_ACCESS_KEY": "env-testing-secret",
       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}
UNSET = ["AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
         "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT", "AWS_ALLOW_HTTP"]


@dataclass(frozen=True)
class S3Bucket:
    """One bucket on the test S3 server, as the tests address it.

    Attributes
    ----------
    endpoint_url : str
        Where requests go (the server, or a fault proxy in front of it).
    bucket : str
    proxy : FaultProxy or None
        The proxy ``endpoint_url`` points at, if any.
    """

    endpoint_url: str
    bucket: str
    proxy: Any = field(default=None, compare=False, repr=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    @property
    def storage_options(self) -> dict[str, str]:
        """A new dict every time (code under test may not change the fixture's)."""
        return {"endpoint_url": self.endpoint_url, "key": ACCESS_KEY, "secret": SECRET,
                "region": REGION}

    def zarr_store(self, path: str = "", kind: str = "obstore", read_only: bool = False):
        """zarr-python's store on ``path`` in the bucket: a ``zarr.storage.ObjectStore``
        (obstore's S3Store over plain HTTP) or ``zarr.storage.FsspecStore`` (s3fs)."""
        import zarr

        path = path.strip("/")
        if kind == "obstore":
            obs = pytest.importorskip("obstore.store")
            s3 = obs.S3Store(self.bucket, prefix=path or None, endpoint=self.endpoint_url,
                             access_key_id=ACCESS_KEY, secret_access_key=SECRET, region=REGION,
                             client_options={"allow_http": True})
            return zarr.storage.ObjectStore(s3, read_only=read_only)
        if kind == "fsspec":
            pytest.importorskip("s3fs")
            options = {"endpoint_url": self.endpoint_url, "key": ACCESS_KEY, "secret": SECRET,
                       "client_kwargs": {"region_name": REGION}}
            return zarr.storage.FsspecStore.from_url(f"s3://{self.bucket}/{path}".rstrip("/"),
                                                     storage_options=options,
                                                     read_only=read_only)
        raise ValueError(f"kind must be 'obstore' or 'fsspec', got {kind!r}")

    def through(self, proxy) -> S3Bucket:
        """The same bucket, through ``proxy``."""
        return S3Bucket(proxy.endpoint_url, self.bucket, proxy)


def boto3_client(endpoint_url: str):
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET, region_name=REGION,
                        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))


@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL of a moto S3 server on loopback (one for the session)."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed: "
                                     "the object-store tests need its S3 server")
    saved = {k: os.environ.get(k) for k in [*ENV, *UNSET]}
    os.environ.update(ENV)
    for k in UNSET:
        os.environ.pop(k, None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def _s3_admin(s3_server):
    return boto3_client(s3_server)


def _bucket(server: str, admin) -> Iterator[S3Bucket]:
    """A new bucket while the generator runs; then its objects and it are removed."""
    name = f"lsio-{uuid.uuid4().hex[:16]}"  # (bucket names: lowercase, 3 to 63 characters)
    admin.create_bucket(Bucket=name)
    yield S3Bucket(server, name)
    keys = [o["Key"] for page in admin.get_paginator("list_objects_v2").paginate(Bucket=name)
            for o in page.get("Contents", [])]
    for i in range(0, len(keys), 1000):
        admin.delete_objects(Bucket=name, Delete={
            "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
    admin.delete_bucket(Bucket=name)


@pytest.fixture
def s3(s3_server, _s3_admin) -> Iterator[S3Bucket]:
    """A new, empty bucket (removed with its objects after the test)."""
    yield from _bucket(s3_server, _s3_admin)


@pytest.fixture(scope="module")
def s3_module(s3_server, _s3_admin) -> Iterator[S3Bucket]:
    """A bucket shared by the tests of a module (for data they only read)."""
    yield from _bucket(s3_server, _s3_admin)


@pytest.fixture
def fault_proxy(s3_server):
    """A fault-injecting proxy in front of the S3 server (no faults until a test sets some)."""
    from fault_proxy import FaultProxy

    with FaultProxy(s3_server, seed=1234) as proxy:
        yield proxy


@pytest.fixture
def faulty_s3(s3, fault_proxy) -> S3Bucket:
    """The bucket of ``s3`` through ``fault_proxy`` (``faulty_s3.proxy``)."""
    return s3.through(fault_proxy)
