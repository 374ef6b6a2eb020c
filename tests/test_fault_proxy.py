"""The fault proxy of the object-store tests (tests/fault_proxy.py), itself tested with plain
``http.client`` and boto3 against the moto S3 server: it forwards requests faithfully on
keep-alive connections, each knob (error rate, reset rate, delay, fail_next, down, outage)
does what it says and is counted, the same seed gives the same faults, and closing it
leaves no thread or listening socket behind."""

from __future__ import annotations

import http.client
import threading
import time

import pytest

from fault_proxy import FaultProxy
from s3_fixtures import ACCESS_KEY, REGION, SECRET, boto3_client

pytest.importorskip("boto3")


def signed(conn: http.client.HTTPConnection, method: str, path: str, body=b"") -> dict:
    """SigV4 headers of a request (moto answers unsigned ones 403, as S3 would)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=f"http://{conn.host}:{conn.port}{path}", data=body)
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET), "s3", REGION).add_auth(req)
    return dict(req.headers.items())


def get(conn: http.client.HTTPConnection, path: str, method: str = "GET", body=None):
    """(status, body) of one signed request on ``conn`` (an http.client error is
    returned)."""
    try:
        conn.request(method, path, body=body, headers=signed(conn, method, path, body or b""))
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (http.client.HTTPException, OSError) as e:
        conn.close()
        return e, b""


def test_forwards_requests_and_keeps_connections(s3, fault_proxy):
    direct, proxied = boto3_client(s3.endpoint_url), boto3_client(fault_proxy.endpoint_url)
    payload = bytes(range(256)) * 300
    proxied.put_object(Bucket=s3.bucket, Key="a/b", Body=payload)
    assert direct.get_object(Bucket=s3.bucket, Key="a/b")["Body"].read() == payload
    assert proxied.get_object(Bucket=s3.bucket, Key="a/b", Range="bytes=10-19")[
        "Body"].read() == payload[10:20]
    assert proxied.head_object(Bucket=s3.bucket, Key="a/b")["ContentLength"] == len(payload)
    listed = proxied.list_objects_v2(Bucket=s3.bucket, Prefix="a/")["Contents"]
    assert [o["Key"] for o in listed] == ["a/b"]
    with pytest.raises(proxied.exceptions.ClientError, match="404"):
        proxied.head_object(Bucket=s3.bucket, Key="missing")
    proxied.delete_object(Bucket=s3.bucket, Key="a/b")
    assert "Contents" not in direct.list_objects_v2(Bucket=s3.bucket)
    assert fault_proxy.access_keys == {ACCESS_KEY}
    assert fault_proxy.forwarded == fault_proxy.requests == 6 and fault_proxy.errors == 0

    conn = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=10)
    assert get(conn, f"/{s3.bucket}/x", "PUT", b"abc")[0] == 200
    sock = conn.sock
    for _ in range(3):
        assert get(conn, f"/{s3.bucket}/x") == (200, b"abc")
    assert conn.sock is sock  # one connection for all (keep-alive)
    conn.close()


def test_chunked_request_bodies_are_forwarded_whole(s3, fault_proxy):
    conn = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=10)
    headers = signed(conn, "PUT", f"/{s3.bucket}/chunked", b"hello chunked world")
    conn.request("PUT", f"/{s3.bucket}/chunked", body=iter([b"hello ", b"chunked ", b"world"]),
                 headers=headers, encode_chunked=True)
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"")
    assert get(conn, f"/{s3.bucket}/chunked") == (200, b"hello chunked world")
    conn.close()


def statuses(proxy: FaultProxy, path: str, n: int) -> list:
    """The outcome of ``n`` sequential GETs (a status, or the exception's type)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    out = []
    for _ in range(n):
        status, _ = get(conn, path)
        out.append(status if isinstance(status, int) else type(status))
    conn.close()
    return out


def test_error_rate_is_seeded_and_counted(s3, s3_server):
    boto3_client(s3_server).put_object(Bucket=s3.bucket, Key="k", Body=b"v")
    runs = []
    for _ in range(2):
        with FaultProxy(s3_server, seed=7, error_rate=0.3) as proxy:
            runs.append(statuses(proxy, f"/{s3.bucket}/k", 60))
            assert proxy.errors == runs[-1].count(503) and proxy.requests == 60
            assert proxy.statuses[503] == proxy.errors
    assert runs[0] == runs[1]  # the same seed, the same faults
    assert set(runs[0]) == {200, 503} and 5 < runs[0].count(503) < 35
    with FaultProxy(s3_server, seed=8, error_rate=0.3) as proxy:
        assert statuses(proxy, f"/{s3.bucket}/k", 60) != runs[0]


def test_injected_errors_are_s3_errors(s3, fault_proxy):
    client = boto3_client(fault_proxy.endpoint_url)
    client.put_object(Bucket=s3.bucket, Key="k", Body=b"v")
    fault_proxy.fail_next(2, 403)
    for _ in range(2):
        with pytest.raises(client.exceptions.ClientError) as info:
            client.get_object(Bucket=s3.bucket, Key="k")
        assert info.value.response["Error"]["Code"] == "AccessDenied"
    assert client.get_object(Bucket=s3.bucket, Key="k")["Body"].read() == b"v"
    fault_proxy.error_rate = 1.0
    with pytest.raises(client.exceptions.ClientError) as info:
        client.get_object(Bucket=s3.bucket, Key="k")
    assert info.value.response["Error"]["Code"] == "SlowDown"
    fault_proxy.error_rate = 0.0
    fault_proxy.fail_next(1, 500)
    with pytest.raises(client.exceptions.ClientError, match="500"):
        client.head_object(Bucket=s3.bucket, Key="k")  # (a HEAD answered without a body)
    assert client.head_object(Bucket=s3.bucket, Key="k")["ContentLength"] == 1
    assert fault_proxy.errors == 4 and fault_proxy.statuses[403] == 2


def test_resets_close_connections_without_a_response(s3, s3_server):
    boto3_client(s3_server).put_object(Bucket=s3.bucket, Key="k", Body=b"v")
    with FaultProxy(s3_server, seed=3, reset_rate=0.4) as proxy:
        got = statuses(proxy, f"/{s3.bucket}/k", 40)
        failed = [s for s in got if s != 200]
        assert failed and len(failed) == proxy.resets and proxy.errors == 0
        assert all(issubclass(s, (ConnectionError, http.client.HTTPException)) for s in failed)
        assert proxy.forwarded == got.count(200)


def test_delay_holds_each_response(s3, fault_proxy):
    boto3_client(s3.endpoint_url).put_object(Bucket=s3.bucket, Key="k", Body=b"v")
    fault_proxy.delay = 2.0
    impatient = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=0.2)
    status, _ = get(impatient, f"/{s3.bucket}/k")
    assert isinstance(status, TimeoutError)  # no answer within a tenth of the delay
    fault_proxy.delay = 0.0
    assert statuses(fault_proxy, f"/{s3.bucket}/k", 1) == [200]


def test_down_refuses_everything_until_up(s3, fault_proxy):
    boto3_client(s3.endpoint_url).put_object(Bucket=s3.bucket, Key="k", Body=b"v")
    kept = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=10)
    assert get(kept, f"/{s3.bucket}/k") == (200, b"v")
    fault_proxy.down = True
    status, _ = get(kept, f"/{s3.bucket}/k")  # a kept connection: dropped
    assert not isinstance(status, int)
    assert all(s != 200 for s in statuses(fault_proxy, f"/{s3.bucket}/k", 3))  # new ones too
    assert fault_proxy.refused >= 4 and fault_proxy.forwarded == 1
    fault_proxy.down = False
    assert statuses(fault_proxy, f"/{s3.bucket}/k", 2) == [200, 200]


def test_an_outage_starts_after_some_requests_and_ends(s3, fault_proxy):
    boto3_client(s3.endpoint_url).put_object(Bucket=s3.bucket, Key="k", Body=b"v")
    fault_proxy.outage(after=2, seconds=0.3)
    got = statuses(fault_proxy, f"/{s3.bucket}/k", 3)
    assert got[:2] == [200, 200] and got[2] != 200
    deadline = time.monotonic() + 30
    while statuses(fault_proxy, f"/{s3.bucket}/k", 1) != [200]:
        assert time.monotonic() < deadline, "the proxy never came back up"
        time.sleep(0.05)
    assert not fault_proxy.down and fault_proxy.refused >= 1


def test_closing_leaves_no_thread_or_socket(s3, s3_server):
    boto3_client(s3_server).put_object(Bucket=s3.bucket, Key="k", Body=b"v")
    before = set(threading.enumerate())
    proxy = FaultProxy(s3_server, delay=0.0)
    conns = [http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10) for _ in range(4)]
    for c in conns:  # four kept-alive connections, idle when the proxy closes
        assert get(c, f"/{s3.bucket}/k") == (200, b"v")
    busy = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    proxy.delay = 0.5
    waiter = threading.Thread(target=get, args=(busy, f"/{s3.bucket}/k"))
    waiter.start()  # and one whose response is being held
    while proxy.requests < 5:
        time.sleep(0.01)
    assert len(set(threading.enumerate()) - before) >= 6
    proxy.close()
    waiter.join(30)
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5).connect()
    for c in conns + [busy]:
        c.close()
