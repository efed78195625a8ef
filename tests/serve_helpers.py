"""Real servers in subprocesses for the ASGI and CLI tests, and small WebSocket helpers.

A server's output goes to a log file (a file never blocks the server the way a full pipe
would); readiness is the line that names the bound port, then ``GET /health`` answering 200,
both polled against a deadline. Stopping sends a signal and waits, bounded, for the exit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection
from websockets.typing import Subprotocol

SUBPROTOCOL = Subprotocol("wshub.v1")

#: How long a server may take to start (imports, hypercorn's spawned worker) on a busy machine.
START_DEADLINE = 20.0

WSHUB_SERVE_READY = re.compile(r"wshub listening on http://127\.0\.0\.1:(\d+)")
HYPERCORN_READY = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


class Server:
    """A server process on ``127.0.0.1:port``, logging to ``log_path``."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.port = 0

    @property
    def http(self) -> str:
        """``http://127.0.0.1:port``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        """``ws://127.0.0.1:port``."""
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, ready: re.Pattern[str], deadline: float = START_DEADLINE) -> None:
        """Wait for the line naming the port, then for ``/health`` to answer 200."""
        end = time.monotonic() + deadline
        while (match := ready.search(self.log())) is None:
            self._check_alive(end)
            time.sleep(0.02)
        self.port = int(match.group(1))
        while True:
            try:
                if httpx.get(f"{self.http}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            self._check_alive(end)
            time.sleep(0.02)

    def _check_alive(self, end: float) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.log()}")
        if time.monotonic() > end:
            raise AssertionError(f"the server was not ready in time:\n{self.log()}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> float:
        """Send ``signum`` and wait for the exit; returns the seconds it took."""
        if self.process.poll() is not None:
            return 0.0
        start = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            message = f"the server did not exit within {timeout} s:\n{self.log()}"
            raise AssertionError(message) from None
        return time.monotonic() - start


def _environment(env: Mapping[str, str]) -> dict[str, str]:
    # The tests' own WSHUB_* variables must not leak into the servers they start.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    return {**clean, "PYTHONUNBUFFERED": "1", **env}


def start(
    argv: Sequence[str], env: Mapping[str, str], log_path: Path, ready: re.Pattern[str]
) -> Server:
    """Start ``argv`` and wait until it serves; the caller must ``stop()`` it."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, env=_environment(env)
        )
    server = Server(process, log_path)
    try:
        server.wait_ready(ready)
    except BaseException:
        server.process.kill()
        server.process.wait()
        raise
    return server


def wshub_serve(log_path: Path, *args: str, env: Mapping[str, str] | None = None) -> Server:
    """``wshub serve --host 127.0.0.1 --port 0 ARGS`` with ``env``, started and ready."""
    argv = [sys.executable, "-m", "wshub.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    return start([*argv, *args], env or {}, log_path, WSHUB_SERVE_READY)


def hypercorn(log_path: Path, *args: str, env: Mapping[str, str] | None = None) -> Server:
    """``hypercorn --worker-class trio ARGS wshub.asgi:app`` on a free port, ready."""
    argv = [sys.executable, "-m", "hypercorn", "--worker-class", "trio"]
    argv += ["--bind", "127.0.0.1:0", *args, "wshub.asgi:app"]
    return start(argv, env or {}, log_path, HYPERCORN_READY)


# --------------------------------------------------------------------------- WebSocket


def hello(client_id: str, subscribe: Mapping[str, Any] | None = None) -> str:
    """A ``hello`` frame."""
    return json.dumps({"type": "hello", "client_id": client_id, "subscribe": subscribe or {}})


def objects(frame: str | bytes) -> list[dict[str, Any]]:
    """The JSON objects of one frame (a ``wshub.v1`` batch holds several, one per line)."""
    text = frame.decode() if isinstance(frame, bytes) else frame
    return [json.loads(line) for line in text.split("\n") if line]


def receive_objects(websocket: ClientConnection, count: int, timeout: float = 5.0) -> list[Any]:
    """The next ``count`` objects, across frames."""
    received: list[Any] = []
    while len(received) < count:
        received.extend(objects(websocket.recv(timeout)))
    assert len(received) == count, received
    return received
