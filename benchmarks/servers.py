"""The servers of the end-to-end benchmarks, one per process: wshub and its references.

``python benchmarks/servers.py KIND`` serves on 127.0.0.1 (a free port) and is driven by
``benchmarks/e2e.py`` through its standard input, one command a line; it answers each with one
JSON line on standard output:

- (at start) ``{"event": "ready", "port": P}`` once it listens;
- ``publish RATE SECONDS``: publish for SECONDS, as fast as it can when RATE is 0, else RATE
  messages per second; answers ``{"event": "published", "count", "start", "end"}`` (Unix
  seconds) when done;
- ``connections``: ``{"event": "connections", "count": N}``, the clients it holds;
- ``fill STREAM N`` (wshub only): publish N messages to STREAM at once;
- ``quit`` or end of input: exit at once. So does ``--lifetime`` seconds after start.

KIND is one of:

- ``wshub``: ``wshub.serve_websocket`` inside ``open_hub``; one publisher task calls
  ``hub.publish`` in a loop (which checkpoints on every call);
- ``wshub-fast``: ``wshub.servers.fast.serve_fast`` (wsproto and h11 on sockets the hub owns,
  what ``wshub serve --server fast`` runs) inside ``open_hub``, the same publisher;
- ``wshub-fast-gc-freeze``: ``wshub-fast`` with ``gc.freeze()`` once it listens, so what
  start-up made (modules, config, the hub) is never traversed by the collector again (issue
  14's A/B: does it trim p99?);
- ``wshub-redis``: ``wshub-fast`` on the Redis broker at ``$WSHUB_BENCH_REDIS_URL``; several
  of them on one Redis are the workers of one service (``benchmarks/redis_broker.py``). For
  it and ``wshub-fast``, ``$WSHUB_BENCH_PUBLISHERS`` = N makes "as fast as it can" N
  publisher tasks at once (a lone publisher on Redis waits one round trip per message);
- ``wshub-serve``: the ``wshub serve`` command itself (its default fast server, memory broker),
  run in this process by ``wshub.cli.main(["serve", "--config", FILE, "--host", "127.0.0.1",
  "--port", "0"])``: the command's own argument parsing, configuration layers, logging and
  signal handling. FILE holds the settings of the other wshub kinds (and no ``WSHUB_*``
  variable reaches the command, so FILE alone configures it). The only addition is the
  publisher: ``wshub.cli_serve.open_hub`` is wrapped so that, once the command's hub is open,
  the same publisher task as ``wshub-fast`` runs in the hub's nursery (the same Trio loop,
  the same ``hub.publish`` calls); the port comes from the command's start-up log line;
- ``wshub-hypercorn``: ``wshub.asgi.create_app`` under ``hypercorn.trio.serve``, configured
  as ``wshub serve`` does; the publisher runs in the same Trio loop through ``app.hub``;
- ``trio-websocket``: the ceiling of the embedded stack. Every connection has a task that
  sends one pre-built frame of ``BATCH`` messages joined with newlines, again and again;
- ``hypercorn``: the same for a raw ASGI app under hypercorn's Trio worker;
- ``websockets``: the ``websockets`` library's asyncio server, one ``websockets.broadcast()``
  per message from a publisher that yields (``asyncio.sleep(0)``) after each;
- ``websockets-batched``: the fair peer, the same server given wshub's batching. Publishing
  appends the message to one pending list; a flush task sends what is pending in frames of up
  to ``BATCH`` messages joined with newlines, one ``websockets.broadcast()`` per frame (each
  frame built once for every client), then lets the publisher run alone for ``WRITE_DELAY``
  before it flushes again. Like wshub's flush tick, the first message after a quiet spell goes
  out at once, and under load the batches grow with what came in during the pause;
- ``raw-socket``: the physical floor of a fan-out in Python, no framework at all: a
  ``selectors`` loop with a hand-written handshake, then every message framed once and written
  with one non-blocking ``socket.send()`` per client from a single loop (a client whose socket
  is full keeps the rest in its own buffer until it is writable). At a rate, messages that
  come due while a fan-out runs go out together in the next frame, stamped with their due
  time; as fast as it can (rate 0), it sends the pre-built batch frame to every client with
  nothing pending, round after round.

Every message carries ``time.time_ns()`` at publish in ``data.t`` (the pre-built frames of the
two ceilings carry a constant), and is about the size of a wshub ``message`` frame with a
100-byte payload. Every server first sends ``{"type":"welcome"}``-like frame to a new
connection (wshub its real ``welcome``), so the load generator knows it is subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import resource
import selectors
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

PAYLOAD_BYTES = 100  # the JSON of ``data``
BATCH = 64  # messages per pre-built frame of the ceilings; wshub's limits.max_batch default
WRITE_DELAY = 0.003  # the batched websockets peer's pause; wshub's limits.write_delay default
STREAM = "bench"
WELCOME = '{"type":"welcome"}'
_PAD = "x" * (PAYLOAD_BYTES - len(orjson.dumps({"t": time.time_ns(), "seq": 100000, "pad": ""})))


def payload(seq: int, at: int = 0) -> dict[str, Any]:
    """The ``data`` of message ``seq``: its publish time (``at`` or now) in ``t``, ~100 bytes."""
    return {"t": at or time.time_ns(), "seq": seq, "pad": _PAD}


def envelope(seq: int, at: int = 0) -> str:
    """A frame shaped like wshub's ``message`` (what the references send)."""
    data = payload(seq, at)
    return orjson.dumps(
        {
            "type": "message",
            "stream": STREAM,
            "offset": seq,
            "id": f"{seq:016x}",
            "data": data,
            "ts": data["t"] // 1_000_000,
        }
    ).decode()


def batch_frame() -> str:
    """The pre-built frame of the two ceilings: ``BATCH`` messages joined with newlines."""
    return "\n".join(envelope(100_000 + i) for i in range(BATCH))


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to its hard limit (thousands of sockets)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def say(event: str, **fields: Any) -> None:
    """Answer the orchestrator with one JSON line."""
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


def quit_now() -> None:
    """Exit at once: benchmark servers have nothing to flush, and hypercorn may hold writes."""
    sys.stdout.flush()
    os._exit(0)


# ------------------------------------------------------------------------------------- Trio

Publisher = Callable[[float, float], Awaitable[int]]


async def _trio_control(
    publish: Publisher, connections: Callable[[], int], fill: Callable[[str, int], Awaitable[None]]
) -> None:
    import trio

    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    while True:
        chunk = await stdin.receive_some(4096)
        if not chunk:
            quit_now()
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            command, *args = line.decode().split()
            if command == "publish":
                start = time.time()
                count = await publish(float(args[0]), float(args[1]))
                say("published", count=count, start=start, end=time.time())
            elif command == "connections":
                say("connections", count=connections())
            elif command == "fill":
                await fill(args[0], int(args[1]))
                say("filled", count=int(args[1]))
            else:
                quit_now()


async def _paced(rate: float, seconds: float, step: Callable[[int, int], Awaitable[None]]) -> int:
    """Call ``step(seq, at)`` for ``seconds``: as fast as it goes (rate 0) or ``rate`` per second.

    At a rate, ``at`` is the Unix time (ns) the message was due, so a publisher held up by the
    server counts in the latency; as fast as it goes, ``at`` is 0 (stamped when built).
    """
    import trio

    now = trio.current_time()
    deadline, due, interval = now + seconds, now, 1 / rate if rate else 0.0
    wall = time.time_ns() - int(now * 1e9)
    count = 0
    while trio.current_time() < deadline:
        count += 1
        await step(count, wall + int(due * 1e9) if interval else 0)
        if interval:
            due += interval
            await trio.sleep_until(due)
    return count


# What every wshub kind runs with, over the production preset (``wshub-serve`` as a TOML file).
WSHUB_SETTINGS: dict[str, dict[str, Any]] = {
    "server": {"allow_anonymous": True},
    "limits": {"max_queue": 10_000, "max_connections": 20_000},
    "heartbeat": {"interval": 3600.0, "timeout": 60.0},
}


def _wshub_config() -> Any:
    from wshub import HubConfig

    return HubConfig.production().merged(WSHUB_SETTINGS)


def wshub_toml() -> str:
    """``WSHUB_SETTINGS`` over the production preset, as a ``wshub serve --config`` file."""

    def value(item: Any) -> str:
        return ("true" if item else "false") if isinstance(item, bool) else repr(item)

    lines = ['preset = "production"']
    for section, keys in WSHUB_SETTINGS.items():
        lines += ["", f"[{section}]", *(f"{key} = {value(v)}" for key, v in keys.items())]
    return "\n".join(lines) + "\n"


async def _control_wshub(hub: Any, port: int, publishers: int = 1) -> None:
    import trio

    async def publish_one(seq: int, at: int) -> None:
        await hub.publish(STREAM, payload(seq, at))

    async def publish(rate: float, seconds: float) -> int:
        if rate or publishers == 1:
            return await _paced(rate, seconds, publish_one)
        counts: list[int] = []

        async def one(task: int) -> None:
            async def step(seq: int, at: int) -> None:
                await publish_one(seq * publishers + task, at)

            counts.append(await _paced(0, seconds, step))

        async with trio.open_nursery() as nursery:  # concurrent publishes share round trips
            for task in range(publishers):
                nursery.start_soon(one, task)
        return sum(counts)

    async def fill(stream: str, count: int) -> None:
        for seq in range(count):
            await hub.publish(stream, payload(seq))

    say("ready", port=port)
    await _trio_control(publish, lambda: hub.connection_count, fill)


async def _serve_wshub(lifetime: float) -> None:
    import trio

    from wshub import open_hub, serve_websocket

    with trio.move_on_after(lifetime):
        async with open_hub(_wshub_config()) as hub, trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
            await _control_wshub(hub, server.port)
    quit_now()


async def _serve_wshub_fast(lifetime: float, freeze: bool = False) -> None:
    import gc

    import trio

    from wshub import open_hub
    from wshub.servers.fast import serve_fast

    with trio.move_on_after(lifetime):
        async with open_hub(_wshub_config()) as hub, trio.open_nursery() as nursery:
            server = await nursery.start(serve_fast, hub, "127.0.0.1", 0)
            if freeze:  # everything made at start-up leaves the collector's generations
                gc.collect()
                gc.freeze()
            await _control_wshub(hub, server.port, _publishers())
    quit_now()


def _publishers() -> int:
    """``$WSHUB_BENCH_PUBLISHERS``: publisher tasks publishing as fast as they can (default 1)."""
    import os

    return int(os.environ.get("WSHUB_BENCH_PUBLISHERS", "1"))


async def _serve_wshub_redis(lifetime: float) -> None:
    """``wshub-fast`` on the Redis broker at ``$WSHUB_BENCH_REDIS_URL`` (one worker of many)."""
    import os

    import trio

    from wshub import open_hub
    from wshub.servers.fast import serve_fast

    url = os.environ["WSHUB_BENCH_REDIS_URL"]
    config = _wshub_config().merged({"broker": {"kind": "redis", "url": url}})
    with trio.move_on_after(lifetime):
        async with open_hub(config) as hub, trio.open_nursery() as nursery:
            server = await nursery.start(serve_fast, hub, "127.0.0.1", 0)
            await _control_wshub(hub, server.port, _publishers())
    quit_now()


def _serve_wshub_serve(lifetime: float) -> None:
    """``wshub serve`` itself in this process, with the publisher of the other wshub kinds."""
    import logging
    import re
    import tempfile
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    import trio

    import wshub.cli_serve
    from wshub import HubConfig
    from wshub.cli import main as wshub_main
    from wshub.hub.hub import Hub, open_hub  # what ``wshub.cli_serve`` calls

    listening = re.compile(r"wshub listening on http://\S+:(\d+): ")
    port: list[int] = []
    bound = trio.Event()

    class PortFromLog(logging.Handler):
        """Reads the bound port from the command's start-up line (docs/operations.md)."""

        def emit(self, record: logging.LogRecord) -> None:
            match = listening.search(record.getMessage())
            if match and not port:
                port.append(int(match[1]))
                bound.set()  # logged from the Trio thread, inside the command's trio.run

    async def control(hub: Hub) -> None:
        with trio.move_on_after(lifetime):
            await bound.wait()
            await _control_wshub(hub, port[0])
        quit_now()

    @asynccontextmanager
    async def open_hub_with_publisher(
        config: HubConfig | None = None, **hooks: Any
    ) -> AsyncIterator[Hub]:
        async with open_hub(config, **hooks) as hub:
            hub.nursery.start_soon(control, hub)
            yield hub

    for name in [name for name in os.environ if name.startswith("WSHUB_")]:
        del os.environ[name]  # FILE alone configures it, as the other kinds' code does
    logging.getLogger("wshub.cli").addHandler(PortFromLog())
    wshub.cli_serve.open_hub = open_hub_with_publisher  # type: ignore[attr-defined]
    with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="wshub-bench-") as file:
        file.write(wshub_toml())
        file.flush()
        code = wshub_main(["serve", "--config", file.name, "--host", "127.0.0.1", "--port", "0"])
    say("exited", code=code)  # only when the command failed before serving (control exits)
    quit_now()


async def _serve_wshub_hypercorn(lifetime: float) -> None:
    import trio
    from hypercorn.trio import serve

    from wshub.cli_serve import hypercorn_config
    from wshub.servers.asgi import create_app

    config = _wshub_config()
    app = create_app(config)
    settings = hypercorn_config(config.merged({"server": {"port": 0}}))
    settings.backlog = 4096
    with trio.move_on_after(lifetime):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, app, settings)
            await _control_wshub(app.hub, int(binds[0].rsplit(":", 1)[1]))
    quit_now()


class _Flood:
    """The ceilings' shared state: what every connection's sender task sends, and when.

    Publishing as fast as possible (rate 0), each sender sends the pre-built batch frame again
    and again until the deadline. At a given rate (the latency floor), each message is one
    frame, sent once by every sender: the stack's own cost of fanning one message out.
    """

    def __init__(self) -> None:
        import trio

        self.go = trio.Event()  # replaced by every publish; senders wait on the current one
        self.until = 0.0
        self.message = ""  # when paced: the message of the latest publish
        self.sent = 0  # messages
        self.connections = 0
        self.frame = batch_frame()

    async def publish(self, rate: float, seconds: float) -> int:
        import trio

        self.sent = 0
        if rate:

            async def one(seq: int, at: int) -> None:
                self.message = envelope(seq, at)
                go, self.go = self.go, trio.Event()
                go.set()

            await _paced(rate, seconds, one)
            self.message = ""
            return self.sent
        self.until = trio.current_time() + seconds
        go, self.go = self.go, trio.Event()
        go.set()
        await trio.sleep_until(self.until)
        return self.sent

    async def sender(self, send: Callable[[str], Awaitable[None]]) -> None:
        import trio

        frame = self.frame
        while True:
            await self.go.wait()
            if self.message:
                await send(self.message)
                self.sent += 1
                continue
            until = self.until
            while trio.current_time() < until:
                await send(frame)
                self.sent += BATCH


async def _no_fill(stream: str, count: int) -> None:
    raise ValueError("only wshub has streams to fill")


async def _serve_trio_websocket(lifetime: float) -> None:
    import trio
    from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

    flood = _Flood()

    async def handle(request: WebSocketRequest) -> None:
        websocket = await request.accept()
        flood.connections += 1
        try:
            await websocket.send_message(WELCOME)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood.sender, websocket.send_message)
                while True:
                    await websocket.get_message()
        except* ConnectionClosed:
            pass
        finally:
            flood.connections -= 1

    with trio.move_on_after(lifetime):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handle, "127.0.0.1", 0, None)
            say("ready", port=server.port)
            await _trio_control(flood.publish, lambda: flood.connections, _no_fill)
    quit_now()


async def _serve_hypercorn(lifetime: float) -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    flood = _Flood()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        flood.connections += 1
        try:

            async def send_text(text: str) -> None:
                await send({"type": "websocket.send", "text": text})

            await send_text(WELCOME)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood.sender, send_text)
                while (await receive())["type"] != "websocket.disconnect":
                    pass
                nursery.cancel_scope.cancel()
        finally:
            flood.connections -= 1

    settings = Config()
    settings.bind = ["127.0.0.1:0"]
    settings.backlog = 4096
    settings.accesslog = None
    with trio.move_on_after(lifetime):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, app, settings)
            say("ready", port=int(binds[0].rsplit(":", 1)[1]))
            await _trio_control(flood.publish, lambda: flood.connections, _no_fill)
    quit_now()


# ---------------------------------------------------------------------------------- asyncio


async def _serve_websockets(lifetime: float, *, batched: bool = False) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: set[ServerConnection] = set()
    pending: list[str] = []  # batched: published, not yet flushed
    wake = asyncio.Event()  # batched: set by a publish that found nothing pending

    def send(text: str) -> None:
        if not batched:
            broadcast(clients, text)
            return
        if not pending:
            wake.set()
        pending.append(text)

    async def flush() -> None:
        """The batched peer's flush task: wshub's flush tick on ``websockets.broadcast``."""
        while True:
            await wake.wait()
            wake.clear()
            while pending:
                for first in range(0, len(pending), BATCH):
                    broadcast(clients, "\n".join(pending[first : first + BATCH]))
                pending.clear()
                await asyncio.sleep(WRITE_DELAY)  # the publisher runs alone; batches grow

    async def handle(websocket: ServerConnection) -> None:
        clients.add(websocket)
        try:
            await websocket.send(WELCOME)
            await websocket.wait_closed()
        finally:
            clients.discard(websocket)

    async def publish(rate: float, seconds: float) -> int:
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline, due, interval = now + seconds, now, 1 / rate if rate else 0.0
        wall = time.time_ns() - int(now * 1e9)  # stamps the due time, as _paced does
        count = 0
        while loop.time() < deadline:
            count += 1
            send(envelope(count, wall + int(due * 1e9) if interval else 0))
            if interval:
                due += interval
                await asyncio.sleep(max(0.0, due - loop.time()))
            else:
                await asyncio.sleep(0)
        return count

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with (
        asyncio.timeout(lifetime),
        serve(handle, "127.0.0.1", 0, ping_interval=None, compression=None, backlog=4096) as server,
    ):
        flusher = asyncio.create_task(flush())  # waits for the first message (when batched)
        say("ready", port=server.sockets[0].getsockname()[1])
        while line := await reader.readline():
            command, *args = line.decode().split()
            if command == "publish":
                start = time.time()
                count = await publish(float(args[0]), float(args[1]))
                say("published", count=count, start=start, end=time.time())
            elif command == "connections":
                say("connections", count=len(clients))
            else:
                break
        flusher.cancel()
    quit_now()


# ------------------------------------------------------------------------------- raw socket

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KEY = re.compile(rb"^sec-websocket-key:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def text_frame(text: str) -> bytes:
    """An unmasked server text frame holding ``text``."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes([0x81, size]) + payload
    if size < 65536:
        return bytes([0x81, 126]) + size.to_bytes(2, "big") + payload
    return bytes([0x81, 127]) + size.to_bytes(8, "big") + payload


class _RawClient:
    """One accepted socket: the upgrade request so far, then what it could not take yet."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.request = b""
        self.open = False  # upgraded
        self.pending = bytearray()  # written by a send() that took only part


class _RawServer:
    """A single-threaded ``selectors`` loop: accept, upgrade, discard input, fan out."""

    def __init__(self, lifetime: float) -> None:
        self.selector = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.stdin = os.dup(sys.stdin.fileno())
        self.selector.register(self.stdin, selectors.EVENT_READ)
        self.commands = b""
        self.clients: list[_RawClient] = []  # upgraded
        self.deadline = time.monotonic() + lifetime
        self.welcome = text_frame(WELCOME)

    def serve(self) -> None:
        """Answer commands until told to quit, or until the lifetime is over."""
        say("ready", port=self.listener.getsockname()[1])
        while time.monotonic() < self.deadline:
            self.poll(self.deadline - time.monotonic())
            while b"\n" in self.commands:
                line, self.commands = self.commands.split(b"\n", 1)
                command, *args = line.decode().split() or ["quit"]
                if command == "publish":
                    start = time.time()
                    count = self.publish(float(args[0]), float(args[1]))
                    say("published", count=count, start=start, end=time.time())
                elif command == "connections":
                    say("connections", count=len(self.clients))
                else:
                    quit_now()
        quit_now()

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, then handle whatever is ready."""
        for key, events in self.selector.select(max(0.0, timeout)):
            if key.fileobj is self.listener:
                self.accept()
            elif key.fileobj == self.stdin:
                chunk = os.read(self.stdin, 4096)
                self.commands += chunk or b"quit\n"
            else:
                client: _RawClient = key.data
                if events & selectors.EVENT_WRITE:
                    self.write(client, b"")
                if events & selectors.EVENT_READ and client.sock.fileno() >= 0:
                    self.read(client)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.selector.register(sock, selectors.EVENT_READ, _RawClient(sock))

    def read(self, client: _RawClient) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
        elif not client.open:  # the upgrade request; a client's frames are read and dropped
            client.request += data
            if b"\r\n\r\n" in client.request:
                match = _KEY.search(client.request)
                if match is None:
                    self.drop(client)
                    return
                accept = base64.b64encode(hashlib.sha1(match[1] + _GUID).digest())
                answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                answer += b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                client.open = True
                client.request = b""
                self.clients.append(client)
                self.write(client, answer + self.welcome)

    def write(self, client: _RawClient, frame: bytes) -> bool:
        """Send ``frame`` after what is pending; False if the client still has bytes pending."""
        pending = client.pending
        if pending:
            pending += frame
            data: bytes | bytearray = pending
        else:
            data = frame
        try:
            sent = client.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.drop(client)
            return False
        if sent == len(data):
            if pending:
                pending.clear()
                self.selector.modify(client.sock, selectors.EVENT_READ, client)
            return True
        if pending:
            del pending[:sent]
        else:
            pending += frame[sent:]
            self.selector.modify(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
        return False

    def drop(self, client: _RawClient) -> None:
        if client.open:
            client.open = False
            self.clients.remove(client)
        self.selector.unregister(client.sock)
        client.sock.close()

    def publish(self, rate: float, seconds: float) -> int:
        """Fan out for ``seconds``: one frame per message at ``rate``, or batches (rate 0)."""
        now = time.monotonic()
        deadline, due = now + seconds, now
        count = 0
        if rate:
            # Each message is due at its own time and stamped with it. One frame each, unless
            # a fan-out outlasts the interval: the messages that came due meanwhile (their
            # wait counts in their latency) go out together in the next frame.
            interval, wall = 1 / rate, time.time_ns() - time.monotonic_ns()
            while now < deadline:
                texts = []
                while due <= now and due < deadline:
                    count += 1
                    texts.append(envelope(count, wall + int(due * 1e9)))
                    due += interval
                frame = text_frame("\n".join(texts))
                for client in list(self.clients):
                    self.write(client, frame)
                while (now := time.monotonic()) < due:
                    self.poll(due - now)
            return count
        frame = text_frame(batch_frame())
        while time.monotonic() < deadline:
            self.poll(0)
            busy = 0
            for client in list(self.clients):
                if client.pending:
                    busy += 1
                elif self.write(client, frame) or client.pending:
                    count += BATCH
            if busy == len(self.clients):  # every socket is full: wait for one to drain
                self.poll(max(0.0, min(0.05, deadline - time.monotonic())))
        return count


KINDS = (
    "wshub",
    "wshub-fast",
    "wshub-redis",
    "wshub-serve",
    "wshub-hypercorn",
    "trio-websocket",
    "hypercorn",
    "websockets",
    "websockets-batched",
    "raw-socket",
    "wshub-fast-gc-freeze",
)


def main() -> None:
    """Serve one KIND until told to quit (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--lifetime", type=float, default=300.0, help="exit after this long")
    args = parser.parse_args()
    raise_fd_limit()
    if args.kind == "raw-socket":
        _RawServer(args.lifetime).serve()
        return
    if args.kind in ("websockets", "websockets-batched"):
        try:
            asyncio.run(_serve_websockets(args.lifetime, batched=args.kind == "websockets-batched"))
        except TimeoutError:
            quit_now()
        return
    if args.kind == "wshub-serve":
        _serve_wshub_serve(args.lifetime)
        return
    import trio

    if args.kind == "wshub":
        trio.run(_serve_wshub, args.lifetime)
    elif args.kind == "wshub-fast":
        trio.run(_serve_wshub_fast, args.lifetime)
    elif args.kind == "wshub-fast-gc-freeze":
        trio.run(_serve_wshub_fast, args.lifetime, True)
    elif args.kind == "wshub-redis":
        trio.run(_serve_wshub_redis, args.lifetime)
    elif args.kind == "wshub-hypercorn":
        trio.run(_serve_wshub_hypercorn, args.lifetime)
    elif args.kind == "trio-websocket":
        trio.run(_serve_trio_websocket, args.lifetime)
    else:
        trio.run(_serve_hypercorn, args.lifetime)


if __name__ == "__main__":
    main()
