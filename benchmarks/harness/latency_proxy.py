"""A loopback TCP proxy that adds latency: what the cloud benchmark's readers see at 20 ms.

This kernel has no ``netem``, so latency is added in user space. The proxy listens on
127.0.0.1 and opens one connection to the upstream server (the S3 gateway) for each
connection it accepts. Bytes from the client go upstream at once; bytes coming back are
held for ``delay_ms`` and then written to the client, in order. Each request therefore waits
one extra ``delay_ms`` between sending and its first byte of answer, as against a far away
server, while bandwidth is unchanged (the bytes of a large answer arrive ``delay_ms`` late,
not ``delay_ms`` apart). Connecting costs no delay (real clients keep their connections).

It works at the TCP level, without parsing HTTP: an asyncio ``Protocol`` per side, and per
connection one queue of (due time, bytes) drained by a single timer, so no connection ever
waits for another and the proxy does a few microseconds of work per chunk of up to 256 KiB.
Back-pressure passes through (a side that cannot write pauses reading the other). It runs in
a process of its own (:class:`LatencyProxy` starts ``python latency_proxy.py``), so the
readers' Python threads never share its interpreter. Its cost, measured on the 2-core VM:
~0.2 of a core at 900 requests/s of 40 kB objects; 0.5-0.9 of a core at 350 MB/s of 9 MB
objects, with no loss of throughput against the server itself (the server is the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
from pathlib import Path


class _Downstream(asyncio.Protocol):
    """The client's connection to the proxy; it opens and owns the upstream one."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream_addr = upstream
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # client bytes that came before upstream was open
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- the client's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        loop.create_task(self._connect(loop))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            up, _ = await loop.create_connection(lambda: _Upstream(self), *self.upstream_addr)
        except OSError:
            self.transport.close()
            return
        if self.closed:
            up.close()
            return
        self.up = up  # type: ignore[assignment]
        for data in self.pending:
            up.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.up is None:
            self.pending.append(data)
        else:
            self.up.write(data)  # requests go out at once: the delay is on the way back

    def eof_received(self) -> bool:
        if self.up is not None and self.up.can_write_eof():
            self.up.write_eof()
        return True  # keep our side open for the delayed answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.up is not None:
            self.up.close()

    def pause_writing(self) -> None:  # the client reads slowly: stop reading upstream
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    # -- the server's answers, delayed
    def delayed(self, data: bytes | None) -> None:
        """Write ``data`` to the client ``delay`` seconds from now (None: then close)."""
        loop = asyncio.get_running_loop()
        self.queue.append((loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        """Write every queued chunk that is due, in order; re-arm for the next one."""
        self.timer = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                self.transport.close()
                return
            self.transport.write(data)
        if self.queue:
            self.timer = loop.call_at(self.queue[0][0], self._flush)


class _Upstream(asyncio.Protocol):
    """The proxy's connection to the server, on behalf of one client connection."""

    def __init__(self, down: _Downstream) -> None:
        self.down = down
        self.ended = False

    def data_received(self, data: bytes) -> None:
        self.down.delayed(data)

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        """The server is done: close the client's connection after the last answer."""
        if not self.ended and not self.down.closed:
            self.ended = True
            self.down.delayed(None)

    def pause_writing(self) -> None:  # the server reads slowly: stop reading the client
        self.down.transport.pause_reading()

    def resume_writing(self) -> None:
        self.down.transport.resume_reading()


async def serve(upstream: tuple[str, int], delay_ms: float, port: int = 0) -> None:
    """Proxy 127.0.0.1:``port`` (0: any free port) to ``upstream``, adding ``delay_ms`` to
    every answer; prints the port it listens on, then runs until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Downstream(upstream, delay_ms / 1000),
                                      "127.0.0.1", port, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


class LatencyProxy:
    """The proxy in a process of its own; a context manager whose ``port`` is where to
    connect instead of ``upstream``.

    Parameters
    ----------
    upstream_port : int
        The server's port on 127.0.0.1.
    delay_ms : float
        Added to every answer.
    """

    def __init__(self, upstream_port: int, delay_ms: float) -> None:
        self.upstream_port = upstream_port
        self.delay_ms = delay_ms
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> "LatencyProxy":
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(self.upstream_port),
             str(self.delay_ms)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError("the latency proxy did not start")
        self.port = int(line)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> "LatencyProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    p = argparse.ArgumentParser(description="loopback TCP proxy delaying every answer")
    p.add_argument("upstream_port", type=int)
    p.add_argument("delay_ms", type=float)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    try:
        asyncio.run(serve(("127.0.0.1", a.upstream_port), a.delay_ms, a.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
