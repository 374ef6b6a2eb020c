"""A fault-injecting HTTP/1.1 reverse proxy on loopback, for object-store tests.

:class:`FaultProxy` listens on ``127.0.0.1`` (a free port), forwards each request's method,
path, headers and body to an upstream HTTP server (moto's S3 server in the tests) and returns
its response, on keep-alive connections with ``Content-Length`` bodies (a chunked request
body is forwarded de-chunked). One thread serves each client connection, with its own
keep-alive connection upstream.

Knobs, settable at any time from any thread:

- ``error_rate``: the fraction of requests answered ``503 SlowDown`` (an S3 XML error)
  without being forwarded;
- ``reset_rate``: the fraction whose connection is reset (RST) without a response;
- ``delay``: seconds slept before each response;
- ``fail_next(n, status)``: the next ``n`` requests are answered ``status`` unforwarded;
- ``down``: every request (and every new connection) is dropped without a response, as
  while a server restarts; ``outage(after, seconds)`` goes down once ``after`` more
  requests have arrived, for ``seconds``.

Which requests the rates hit is drawn from a seeded ``random.Random`` in arrival order, one
draw per request: the same seed gives the same count of faults among the first N requests.
Counters: ``requests`` (every request received), ``errors`` (answered with an injected
status), ``resets``, ``refused`` (dropped while down), ``forwarded``; ``statuses`` counts
the statuses sent, ``log`` holds ``(method, path, outcome)`` per request, ``access_keys``
the access key ids seen in ``Authorization`` headers.
"""

from __future__ import annotations

import collections
import http.client
import random
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "expect", "content-length"}
S3_CODES = {400: "BadRequest", 403: "AccessDenied", 404: "NoSuchKey", 409: "Conflict",
            412: "PreconditionFailed", 429: "SlowDown", 500: "InternalError",
            502: "BadGateway", 503: "SlowDown", 504: "GatewayTimeout"}
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def error_body(status: int, n: int) -> bytes:
    """An S3-style XML error document for an injected ``status``."""
    code = S3_CODES.get(status, "InjectedFault")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>'
            f"injected by the fault proxy</Message><RequestId>fault-{n}</RequestId></Error>"
            ).encode()


class FaultProxy:
    """A reverse proxy to ``upstream`` (``"http://host:port"``) that injects faults.

    Use as a context manager, or call :meth:`close`; ``endpoint_url`` is where it listens.
    """

    def __init__(self, upstream: str, seed: int = 0, error_rate: float = 0.0,
                 reset_rate: float = 0.0, delay: float = 0.0) -> None:
        m = re.fullmatch(r"http://([^:/]+):(\d+)/?", upstream)
        if not m:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = (m.group(1), int(m.group(2)))
        self.error_rate = error_rate
        self.reset_rate = reset_rate
        self.delay = delay
        self._down = False
        self.requests = self.errors = self.resets = self.refused = self.forwarded = 0
        self.statuses: collections.Counter = collections.Counter()
        self.log: collections.deque = collections.deque(maxlen=100_000)
        self.access_keys: set[str] = set()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._fail: list[int] = []  # statuses of the next requests
        self._outage: tuple[int, float] | None = None  # (at request count, seconds)
        self._up_at: float | None = None
        self._conns: set[socket.socket] = set()
        self._closing = threading.Event()  # wakes responses held by ``delay``
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.port = self._server.server_address[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()

    # -- knobs ---------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` (replacing what was queued)."""
        with self._lock:
            self._fail = [int(status)] * int(n)

    def outage(self, after: int, seconds: float) -> None:
        """Go down once ``after`` more requests have arrived, and come back ``seconds``
        later (the ``after + 1``-th request is the first one dropped)."""
        with self._lock:
            self._outage = (self.requests + int(after), float(seconds))

    def clear(self) -> None:
        """No faults from now on (counters are kept)."""
        with self._lock:
            self._fail = []
            self._outage = None
            self._up_at = None
            self.error_rate = self.reset_rate = self.delay = 0.0
            self._down = False

    @property
    def down(self) -> bool:
        """Whether every request and new connection is dropped (settable)."""
        with self._lock:
            return self._down_now()

    @down.setter
    def down(self, value: bool) -> None:
        with self._lock:
            self._down, self._up_at = bool(value), None

    def _down_now(self) -> bool:  # (with the lock held)
        if self._up_at is not None and time.monotonic() >= self._up_at:
            self._down, self._up_at = False, None
        return self._down

    def _decide(self, method: str, path: str, auth: str | None) -> tuple[str, int]:
        """What to do with the request that just arrived: ("forward" | "error" | "reset" |
        "refuse", status)."""
        with self._lock:
            self.requests += 1
            if auth and (m := _CREDENTIAL.search(auth)):
                self.access_keys.add(m.group(1))
            if self._outage is not None and self.requests > self._outage[0]:
                self._down = True
                self._up_at = time.monotonic() + self._outage[1]
                self._outage = None
            u = self._rng.random()  # one draw per request, whatever is decided
            if self._down_now():
                self.refused += 1
                what = ("refuse", 0)
            elif self._fail:
                self.errors += 1
                what = ("error", self._fail.pop(0))
            elif u < self.error_rate:
                self.errors += 1
                what = ("error", 503)
            elif u < self.error_rate + self.reset_rate:
                self.resets += 1
                what = ("reset", 0)
            else:
                self.forwarded += 1
                what = ("forward", 0)
            self.log.append((method, path, what[0] if what[0] != "error" else what[1]))
            return what

    def _sent(self, status: int) -> None:
        with self._lock:
            self.statuses[status] += 1

    # -- life ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening, drop every connection and join every thread started."""
        self._closing.set()
        self._server.shutdown()  # no new connections from here on
        deadline = time.monotonic() + 30
        while any(t.is_alive() for t in list(getattr(self._server, "_threads", ())))\
                and time.monotonic() < deadline:
            with self._lock:
                conns = list(self._conns)
            for sock in conns:  # idle keep-alive readers wake up to an end of stream
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            time.sleep(0.01)
        self._server.server_close()  # joins the connection threads
        self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<FaultProxy {self.endpoint_url} -> {self.upstream[0]}:{self.upstream[1]} "
                f"requests={self.requests} errors={self.errors} resets={self.resets} "
                f"refused={self.refused}>")


class _Server(ThreadingMixIn, HTTPServer):
    daemon_threads = False  # joined by server_close
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128
    proxy: FaultProxy

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.to_reset: set[socket.socket] = set()
        self.reset_lock = threading.Lock()

    def verify_request(self, request, client_address) -> bool:
        with self.proxy._lock:
            if not self.proxy._down_now():
                return True
            self.proxy.refused += 1  # a new connection while down: dropped unread
        self.reset(request)
        return False

    def reset(self, sock: socket.socket) -> None:
        """Have ``sock`` closed with a reset (RST), not an orderly shutdown (FIN)."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        with self.reset_lock:
            self.to_reset.add(sock)

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], OSError):  # a client gone is no news
            super().handle_error(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.reset_lock:
            abort = request in self.to_reset
            self.to_reset.discard(request)
        if abort:
            self.close_request(request)
        else:
            super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 60  # an idle client connection is closed after this long
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.proxy = self.server.proxy
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream: http.client.HTTPConnection | None = None
        with self.proxy._lock:
            self.proxy._conns.add(self.connection)

    def finish(self) -> None:
        with self.proxy._lock:
            self.proxy._conns.discard(self.connection)
        if self.upstream is not None:
            self.upstream.close()
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _any(self) -> None:
        body = self._read_body()
        action, status = self.proxy._decide(self.command, self.path,
                                            self.headers.get("Authorization"))
        if action in ("refuse", "reset"):
            self.server.reset(self.connection)
            self.close_connection = True
            return
        if self.proxy.delay:
            self.proxy._closing.wait(self.proxy.delay)
        if action == "error":
            payload = error_body(status, self.proxy.requests)
            self._respond(status, None, [("Content-Type", "application/xml")],
                          b"" if self.command == "HEAD" else payload, len(payload))
            return
        try:
            status, reason, headers, data = self._forward(body)
        except OSError as e:
            payload = f"fault proxy: upstream failed: {e}".encode()
            self._respond(502, None, [("Content-Type", "text/plain")], payload, len(payload))
            return
        length = next((v for k, v in headers if k.lower() == "content-length"), None)
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        self._respond(status, reason, [(k, v) for k, v in headers
                                       if k.lower() not in HOP_BY_HOP],
                      b"" if no_body else data,
                      (int(length) if length is not None else None) if no_body else len(data))

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _any

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        for attempt in (0, 1):  # a kept connection upstream may have been closed meanwhile
            if self.upstream is None:
                self.upstream = http.client.HTTPConnection(*self.proxy.upstream, timeout=60)
            try:
                self.upstream.putrequest(self.command, self.path, skip_host=True,
                                         skip_accept_encoding=True)
                for k, v in headers:
                    self.upstream.putheader(k, v)
                if body or self.command in ("PUT", "POST", "PATCH"):
                    self.upstream.putheader("Content-Length", str(len(body)))
                self.upstream.endheaders(body or None)
                resp = self.upstream.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.upstream.close()
                    self.upstream = None
                return resp.status, resp.reason, resp.getheaders(), data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.upstream.close()
                self.upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _respond(self, status: int, reason: str | None, headers, data: bytes,
                 length: int | None) -> None:
        self.send_response_only(status, reason)
        for k, v in headers:
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(data)  # one write: no wait for a delayed ACK (Nagle)
        self.flush_headers()
        self.proxy._sent(status)
