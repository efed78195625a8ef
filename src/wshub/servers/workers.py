"""``wshub serve --workers N``: N processes serving one listening socket.

Theory of operation:
- The parent binds and listens once, then starts N ``wshub serve`` processes that inherit the
  socket (``--listen-fd``) and accept from it: the kernel hands each new connection to one of
  them. Each worker runs its own hub with its own node name; they are one service only through
  the Redis broker (offsets, history and de-duplication live there), which is why the caller
  refuses more than one worker with the memory broker.
- The parent forwards SIGINT and SIGTERM to every worker; each drains its own clients (1001
  after their queues are flushed, within ``shutdown.grace``) and exits. The parent exits when
  all have, with the first non-zero status among them. A worker that dies on its own stops the
  others: a supervisor (systemd, Kubernetes) restarts the whole service, never half of it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

__all__ = ["listen", "run_workers"]

logger = logging.getLogger("wshub.workers")


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket that child processes can inherit (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog)
    sock.set_inheritable(True)
    return sock


def run_workers(count: int, sock: socket.socket, worker_arguments: Sequence[str]) -> int:
    """Run ``count`` workers on ``sock`` until they exit; returns the exit status.

    Each worker is ``python -m wshub.cli serve *worker_arguments --listen-fd FD``, with this
    process's environment (so ``WSHUB_*`` variables reach every worker alike).
    """
    fd = sock.fileno()
    command = [sys.executable, "-m", "wshub.cli", "serve", *worker_arguments]
    command += ["--listen-fd", str(fd)]
    workers = [subprocess.Popen(command, pass_fds=(fd,)) for _ in range(count)]
    stopping = False

    def forward(number: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    previous = {
        number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)
    }
    host, port = sock.getsockname()[:2]
    logger.info(
        "%d workers (pids %s) serving http://%s:%d",
        count,
        " ".join(str(w.pid) for w in workers),
        host,
        port,
    )
    status = 0
    try:
        remaining = {worker.pid: worker for worker in workers}
        while remaining:
            pid, code = os.wait()
            worker = remaining.pop(pid, None)
            if worker is None:
                continue
            worker.returncode = os.waitstatus_to_exitcode(code)
            if worker.returncode != 0 and status == 0:
                status = worker.returncode if worker.returncode > 0 else 1
            if not stopping:
                logger.error("worker %d exited with %d: stopping the others", pid, code)
                forward(signal.SIGTERM, None)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        sock.close()
    return status
