"""The load generator of the end-to-end benchmarks: one process holding a share of the clients.

``python benchmarks/loadgen.py PORT COUNT`` opens COUNT WebSocket connections to
``ws://127.0.0.1:PORT/ws`` (``--concurrency`` handshakes at a time), sends each a wshub
``hello`` subscribing to the benchmark stream, waits for every first frame (the welcome), and
says ``{"event": "connected", ...}`` on standard output. From then on it counts the messages it
receives, in 50 ms buckets of Unix time: a frame holding newline-joined messages counts one per
line, and the welcome is not counted. Commands on standard input, one a line:

- ``sample N``: from now on, on one connection in N, time every message: the kernel's receive
  timestamp (``SO_TIMESTAMPNS``) of the read that completed it, minus the publish time in its
  ``"t"`` field. The kernel's timestamp leaves out how long this process took to get to the
  socket, so the latency is the server's, not the load generator's;
- ``report``: print ``{"event": "result", "buckets", "latencies", "closed", ...}``, the counts
  so far;
- ``clear``: forget the counts, latencies and closes so far (a sweep's next point starts from
  nothing, and its reports do not carry every earlier point along);
- ``stop`` (or end of input, or ``--lifetime`` seconds after start): the same, then exit.

``python benchmarks/loadgen.py PORT 1 --resume STREAM --repeats K`` instead measures resuming:
it learns STREAM's epoch and newest offset, then K times reconnects with a position
``--replay`` messages back and times from sending ``hello`` to receiving the last replayed one.

The client is a hand-written epoll loop and frame parser, not a WebSocket library: it counts
newlines in place (``bytes.count`` over the payload, no copy) and parses only frame headers, so
one process keeps up with hundreds of thousands of messages per second, and every server meets
the same client. Client frames are masked with a zero key (valid; the XOR is a no-op).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import resource
import select
import socket
import struct
import sys
import time
from array import array
from typing import Any

import orjson

BUCKETS_PER_SECOND = 20
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
READ_SIZE = 1 << 18
_TIMESTAMP = re.compile(rb'"t":(\d+)')
_ANCILLARY = socket.CMSG_SPACE(16)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame with a zero mask key."""
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


def hello(client_id: str, subscribe: dict[str, Any]) -> bytes:
    """A wshub ``hello`` frame subscribing to ``subscribe`` (stream -> position or None)."""
    return client_frame(
        1, orjson.dumps({"type": "hello", "client_id": client_id, "subscribe": subscribe})
    )


class Counters:
    """What one load-generator process has seen: deliveries per bucket, latencies, closes."""

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.published_at = array("q")  # ns, for each timed message
        self.latencies = array("q")  # ns
        self.closed: dict[int, int] = {}  # close code (1006: the link broke) -> connections
        self.sample_every = 0

    def close(self, code: int) -> None:
        """Count a connection closed with ``code``."""
        self.closed[code] = self.closed.get(code, 0) + 1

    def clear(self) -> None:
        """Forget everything counted so far (``sample_every`` stays)."""
        self.buckets.clear()
        del self.published_at[:]
        del self.latencies[:]
        self.closed.clear()


class Client:
    """One WebSocket connection: handshake, then parse frames and count (maybe time) messages."""

    def __init__(self, counters: Counters, index: int, port: int) -> None:
        self.counters = counters
        self.index = index
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.fd = self.sock.fileno()
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wshub.v1\r\n\r\n".encode()
        )
        self.open = True
        self.pending = b""  # an incomplete frame header
        self.remaining = 0  # payload bytes still to come in the current frame
        self.opcode = 0
        self.fin = True
        self.lines = 0  # newlines so far in the current message
        self.body = bytearray()  # the current message, when kept
        self.keep = False  # keep every message's body in ``messages`` (resume)
        self.messages: list[bytes] = []
        self.received = 0  # messages, the welcome included

    def finish_handshake(self) -> None:
        """Read the 101 answer (blocking); bytes after it are parsed as frames."""
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            answer += chunk
        head, rest = answer.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            raise ConnectionError(f"handshake refused: {status}")
        if rest:
            self.feed(rest, 0)

    def wait_for(self, messages: int) -> None:
        """Read (blocking) until ``messages`` messages in all have arrived."""
        while self.received < messages:
            self.read()

    def read(self) -> int:
        """One read: parse it; returns the messages it completed (the welcome not counted)."""
        if self.counters.sample_every and self.index % self.counters.sample_every == 0:
            data, ancillary, _, _ = self.sock.recvmsg(READ_SIZE, _ANCILLARY)
            stamp = 0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    stamp = seconds * 1_000_000_000 + nanoseconds
            stamp = stamp or time.time_ns()
        else:
            data, stamp = self.sock.recv(READ_SIZE), 0
        if not data:
            if self.open:
                self.open = False
                self.counters.close(1006)
            return 0
        return self.feed(data, stamp)

    def feed(self, data: bytes, stamp: int) -> int:
        """Walk the frames in ``data``; with ``stamp``, time the messages it completes."""
        if self.pending:
            data = self.pending + data
            self.pending = b""
        keep = stamp or self.keep
        size = len(data)
        pos = 0
        delivered = 0
        while pos < size:
            remaining = self.remaining
            if remaining:
                end = pos + remaining if pos + remaining < size else size
                if self.opcode < 8:
                    self.lines += data.count(b"\n", pos, end)
                    if keep:
                        self.body += data[pos:end]
                else:
                    self.body += data[pos:end]
                self.remaining = remaining - (end - pos)
                pos = end
                if self.remaining:
                    break
            else:
                if size - pos < 2:
                    self.pending = data[pos:]
                    break
                first, second = data[pos], data[pos + 1]
                length, start = second & 0x7F, pos + 2
                if length == 126:
                    start = pos + 4
                    length = int.from_bytes(data[pos + 2 : start], "big")
                elif length == 127:
                    start = pos + 10
                    length = int.from_bytes(data[pos + 2 : start], "big")
                if start > size:
                    self.pending = data[pos:]
                    break
                pos = start
                self.remaining = length
                if first & 0x0F:  # not a continuation
                    self.opcode = first & 0x0F
                self.fin = bool(first & 0x80)
                if length:
                    continue
            # A frame has ended.
            if self.opcode >= 8:
                self.control_frame()
            elif self.fin:
                self.received += 1
                count, self.lines = self.lines + 1, 0
                if self.keep:
                    self.messages.append(bytes(self.body))
                elif self.received > 1:  # the first message is the welcome
                    delivered += count
                    if stamp:
                        counters = self.counters
                        for match in _TIMESTAMP.finditer(self.body):
                            published = int(match[1])
                            counters.published_at.append(published)
                            counters.latencies.append(stamp - published)
                self.body.clear()
        return delivered

    def control_frame(self) -> None:
        """Answer a ping; answer and record a close."""
        body, opcode = bytes(self.body), self.opcode
        self.body.clear()
        self.opcode = 0
        if opcode == 9:
            self.sock.send(client_frame(10, body))
        elif opcode == 8 and self.open:
            self.open = False
            self.counters.close(int.from_bytes(body[:2], "big") if len(body) >= 2 else 1005)
            self.sock.send(client_frame(8, body[:2]))

    def close(self) -> None:
        """Close the socket (the benchmark is over: no closing handshake)."""
        self.open = False
        self.sock.close()


def _say(event: str, **fields: Any) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


def _report(counters: Counters, connections: int) -> None:
    _say(
        "result",
        buckets={str(k): v for k, v in counters.buckets.items()},
        bucket_hz=BUCKETS_PER_SECOND,
        published_at=counters.published_at.tolist(),
        latencies=counters.latencies.tolist(),
        closed={str(k): v for k, v in counters.closed.items()},
        connections=connections,
    )


def connect(args: argparse.Namespace, counters: Counters) -> list[Client]:
    """Open, upgrade, hello and wait for the welcome, ``args.concurrency`` at a time."""
    clients: list[Client] = []
    for first in range(0, args.count, args.concurrency):
        batch = [
            Client(counters, i, args.port)
            for i in range(first, min(args.count, first + args.concurrency))
        ]
        for client in batch:
            client.finish_handshake()
            name = f"{args.prefix}{args.first + client.index}"
            client.sock.sendall(hello(name, {args.stream: None}))
        for client in batch:
            client.wait_for(1)
        clients.extend(batch)
    return clients


def hold(args: argparse.Namespace) -> None:
    """Connect, then count until told to stop (see the module docstring)."""
    counters = Counters()
    started = time.perf_counter()
    try:
        clients = connect(args, counters)
    except OSError as error:
        _say("connected", connections=0, failed=args.count, errors=[repr(error)], seconds=0)
        return
    seconds = time.perf_counter() - started
    _say("connected", connections=len(clients), failed=0, errors=[], seconds=seconds)
    poller = select.epoll()
    by_fd: dict[int, Client] = {}
    for client in clients:
        client.sock.setblocking(False)
        poller.register(client.fd, select.EPOLLIN)
        by_fd[client.fd] = client
    stdin = sys.stdin.fileno()
    poller.register(stdin, select.EPOLLIN)
    commands = b""
    deadline = time.monotonic() + args.lifetime
    buckets = counters.buckets
    running = True
    while running and time.monotonic() < deadline:
        delivered = 0
        for fd, _ in poller.poll(0.5):
            reader = by_fd.get(fd)
            if reader is not None:
                client = reader
                try:
                    delivered += client.read()
                except BlockingIOError:
                    continue
                except OSError:
                    client.open = False
                if not client.open:
                    poller.unregister(fd)
                    del by_fd[fd]
                continue
            chunk = os.read(stdin, 4096)
            commands += chunk or b"stop\n"
            while b"\n" in commands:
                line, commands = commands.split(b"\n", 1)
                command, *rest = line.decode().split() or ["stop"]
                if command == "sample":
                    counters.sample_every = int(rest[0])
                elif command == "report":
                    _report(counters, len(clients))
                elif command == "clear":
                    counters.clear()
                else:
                    running = False
        if delivered:
            bucket = int(time.time() * BUCKETS_PER_SECOND)
            buckets[bucket] = buckets.get(bucket, 0) + delivered
    _report(counters, len(clients))
    for client in clients:
        client.close()


def resume(args: argparse.Namespace) -> None:
    """Time replays of ``args.replay`` messages of ``args.resume`` to a reconnecting client."""
    counters = Counters()
    client_id = f"{args.prefix}resume"
    first = Client(counters, 0, args.port)
    first.keep = True
    first.finish_handshake()
    first.sock.sendall(hello(client_id, {args.resume: None}))
    first.wait_for(1)
    first.close()
    welcome = orjson.loads(first.messages[0].split(b"\n", 1)[0])
    status = welcome["streams"][args.resume]
    position = {"offset": status["offset"] - args.replay, "epoch": status["epoch"]}
    last = f'"offset":{status["offset"]},'.encode()
    frame = hello(client_id, {args.resume: position})
    timings: list[float] = []
    for _ in range(args.repeats):
        client = Client(counters, 0, args.port)
        client.keep = True
        client.finish_handshake()
        started = time.perf_counter_ns()
        client.sock.sendall(frame)
        lines = 0
        while lines <= args.replay or not client.messages or last not in client.messages[-1]:
            client.read()
            lines = sum(message.count(b"\n") + 1 for message in client.messages)
        timings.append((time.perf_counter_ns() - started) / 1e6)
        client.close()
        time.sleep(0.05)
    _say("resumed", milliseconds=timings, messages=args.replay)


def main() -> None:
    """Hold connections and count (see the module docstring), or time resumes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int, help="connections to open")
    parser.add_argument("--first", type=int, default=0, help="number of the first client id")
    parser.add_argument("--prefix", default="bench-", help="client ids are PREFIX + number")
    parser.add_argument("--stream", default="bench", help="the stream every hello subscribes")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes at a time")
    parser.add_argument("--lifetime", type=float, default=120.0, help="exit after this long")
    parser.add_argument("--resume", metavar="STREAM", help="time resumes of STREAM instead")
    parser.add_argument("--replay", type=int, default=1000, help="messages to replay")
    parser.add_argument("--repeats", type=int, default=20, help="resumes to time")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.resume:
        resume(args)
    else:
        hold(args)


if __name__ == "__main__":
    main()
