"""Worker processes: a reader in a process of its own, persistent or for one run.

A persistent :class:`Worker` runs ``python bench_NAME.py --worker READER`` and is driven over
a pipe, one JSON line per request and per reply (:func:`serve` is its side): global settings
(zarr's codec pipeline, dask config, thread pools) cannot leak from one reader to another,
each process's memory is its own, and a baseline reader imports the other dask_lsio
(:mod:`harness.sides`). :func:`run_once` runs one task in a fresh process instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Protocol

from .sides import CURRENT, Side


class Handler(Protocol):
    """What a worker serves: ``handle(request)`` returns the reply (a JSON-able dict). A
    handler may also have ``close()``, called when the parent says "quit"."""

    def handle(self, request: dict) -> dict: ...


def reason(e: BaseException) -> str:
    """A one-line account of an exception, for a "not available" row."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:160]


class Worker:
    """A reader's persistent worker process; ``error`` is set when it could not start.

    Parameters
    ----------
    script : Path
        The benchmark script; it must call :func:`serve` for ``--worker NAME``.
    name : str
        The reader it serves (without a side suffix).
    side : Side
        Whose dask_lsio it imports.
    label : str, optional
        Its row label (default: ``side.reader(name)``).
    """

    def __init__(self, script: Path, name: str, side: Side = CURRENT, label: str = "") -> None:
        self.name = label or side.reader(name)
        self.proc = subprocess.Popen(
            [side.python, str(script), "--worker", name], env=side.env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.info: dict = {}
        self.error = ""

    def wait_ready(self) -> None:
        """Wait for the worker's greeting: its reader's settings, or why it cannot run.
        (Separate from ``__init__``, so that all workers start at once.)"""
        hello = self._receive()
        self.info = hello.get("info", {})
        self.error = hello.get("error", "")

    def _receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            return {"ok": False, "error": f"worker exited with code {code}"}
        return json.loads(line)

    def request(self, op: str, **fields: object) -> dict:
        """Run one operation in the worker and return its reply."""
        if self.proc.poll() is not None:
            return {"ok": False, "error": f"worker exited with code {self.proc.returncode}"}
        self.proc.stdin.write(json.dumps({"op": op} | fields) + "\n")
        return self._receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def start_all(workers: list[Worker]) -> list[Worker]:
    """Wait until every worker (started at once) has greeted; returns them."""
    for w in workers:
        w.wait_ready()
    return workers


def serve(setup: Callable[[], tuple[Handler, dict]]) -> None:
    """The worker's side: set up the reader, greet, then answer requests until "quit".

    ``setup()`` returns the handler and the reader's versions and settings; raising makes
    the reader "not available" (the greeting says why). A failed request answers
    ``{"ok": False, "error": ...}`` and the worker goes on.
    """
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the protocol

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")

    try:
        handler, info = setup()
        send({"ok": True, "info": info})
    except Exception as e:  # noqa: BLE001  (any failure makes the reader unavailable)
        send({"ok": False, "error": reason(e)})
        return
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        try:
            send(handler.handle(request))
        except Exception as e:  # noqa: BLE001
            send({"ok": False, "error": reason(e)})
    close = getattr(handler, "close", None)
    if close is not None:
        close()


def answer_once(task: str, run_task: Callable[[dict], dict]) -> None:
    """The worker side of :func:`run_once`: run the JSON ``task`` and print its result (or
    ``{"error": ...}``: any failure makes the row "not available") as a line of JSON."""
    try:
        out = run_task(json.loads(task))
    except Exception as e:  # noqa: BLE001
        out = {"error": reason(e)}
    print(json.dumps(out))


def run_once(script: Path, task: dict, side: Side = CURRENT) -> dict:
    """Run ``task`` in a fresh process (``script --worker JSON``, which prints its result as
    the last line of JSON); a failure becomes ``{"error": ...}``."""
    proc = subprocess.run([side.python, str(script), "--worker", json.dumps(task)],
                          env=side.env(), capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
