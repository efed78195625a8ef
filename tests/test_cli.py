"""The ``wshub`` command: configuration layers, check-config, and ``wshub serve`` for real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as connect_sync

import wshub.cli
from serve_helpers import SUBPROTOCOL, Server, hello, objects, receive_objects, wshub_serve
from wshub.cli import main
from wshub.cli_serve import build_serve_config

KEY = "cli-key"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- check-config


def test_check_config_prints_the_resolved_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write(
        tmp_path / "wshub.toml",
        'preset = "testing"\n[limits]\nmax_queue = 42\n[admin]\napi_key = "secret"\n'
        '[auth]\njwt_secret = "a-jwt-secret-of-at-least-32-bytes"\n',
    )
    assert main(["check-config", file]) == 0
    out = capsys.readouterr().out
    resolved = json.loads(out)
    assert resolved["limits"]["max_queue"] == 42
    assert resolved["server"]["port"] == 0  # from the testing preset
    assert resolved["admin"]["api_key"] == "<redacted>"  # never printed
    assert resolved["auth"]["jwt_secret"] == "<redacted>"
    assert "a-jwt-secret" not in out
    sections = (
        "server limits history dedup breaker heartbeat metrics cleanup shutdown health admin"
        " broker auth"
    )
    assert list(resolved) == sections.split()


def test_check_config_never_prints_the_redis_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = '[broker]\nkind = "redis"\nurl = "rediss://app:s3cret@cache.internal:6380/2"\n'
    assert main(["check-config", write(tmp_path / "wshub.toml", text)]) == 0
    output = capsys.readouterr().out
    assert "s3cret" not in output
    url = json.loads(output)["broker"]["url"]
    assert url == "rediss://app:<redacted>@cache.internal:6380/2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nmax_queue = -3\n", "limits.max_queue must be an integer >= 1, got -3"),
        ("[limits]\nmax_queues = 3\n", "unknown key limits.max_queues"),
        ('preset = "staging"\n', "preset must be one of development, production, testing"),
        ("[limits\n", "is not valid TOML"),
        (
            '[auth]\njwt_public_key = "/nonexistent/key.pem"\njwt_algorithms = ["RS256"]\n',
            "auth.jwt_public_key: cannot read '/nonexistent/key.pem': No such file or directory",
        ),
    ],
)
def test_check_config_refuses_a_bad_file_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    file = write(tmp_path / "bad.toml", text)
    assert main(["check-config", file]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("wshub check-config: ")
    assert message in captured.err


def test_check_config_as_a_process_exits_2_for_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    done = subprocess.run(
        [sys.executable, "-m", "wshub.cli", "check-config", str(missing)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert f"cannot read config file {str(missing)!r}" in done.stderr


def test_check_config_reads_the_environment_as_serve_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("WSHUB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WSHUB_LIMITS__MAX_QUEUE", "ten")
    file = write(tmp_path / "wshub.toml", "[limits]\nmax_queue = 42\n")
    assert main(["check-config", file]) == 2
    assert main(["serve", "--config", file]) == 2  # what serve refuses, check-config refuses
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0] == "wshub check-config: WSHUB_LIMITS__MAX_QUEUE: cannot parse 'ten' as int"
    assert err[1].startswith("wshub serve: WSHUB_LIMITS__MAX_QUEUE: cannot parse 'ten' as int")


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        ([], {}),  # no file: development, as serve
        (["FILE"], {}),
        (["FILE"], {"WSHUB_LIMITS__MAX_QUEUE": "77", "WSHUB_ADMIN__API_KEY": "k"}),
        ([], {"WSHUB_CONFIG": "FILE", "WSHUB_PRESET": "testing"}),
        (["--config", "FILE", "--preset", "production", "--port", "9100"], {}),
    ],
)
def test_check_config_prints_exactly_what_serve_would_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    environ: dict[str, str],
) -> None:
    file = write(tmp_path / "wshub.toml", 'preset = "testing"\n[history]\nsize = 9\n')
    # serve takes the file as --config FILE, check-config also as a plain FILE.
    serve_argv = ["--config", file] if argv[:1] == ["FILE"] else argv
    argv = [file if arg == "FILE" else arg for arg in argv]
    serve_argv = [file if arg == "FILE" else arg for arg in serve_argv]
    environ = {name: file if value == "FILE" else value for name, value in environ.items()}
    for name in [name for name in os.environ if name.startswith("WSHUB_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config", *argv]) == 0
    printed = json.loads(capsys.readouterr().out)
    args = wshub.cli._parser().parse_args(["serve", *serve_argv])
    expected = build_serve_config(
        config_file=args.config, preset=args.preset, host=args.host, port=args.port
    ).to_dict()
    if expected["admin"]["api_key"] is not None:
        expected["admin"]["api_key"] = "<redacted>"
    assert printed == expected


# --------------------------------------------------------------------------- serve: arguments


def test_serve_refuses_more_than_one_worker_with_the_memory_broker() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wshub.cli", "serve", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--workers 2 refused: broker.kind is 'memory'" in done.stderr
    assert 'Set broker.kind = "redis" (WSHUB_BROKER__KIND=redis)' in done.stderr


@pytest.mark.parametrize("server_kind", ["hypercorn", "fast"])
def test_two_workers_on_redis_serve_one_service_and_drain_on_sigterm(
    tmp_path: Path, redis: Any, server_kind: str
) -> None:
    env = {
        "WSHUB_BROKER__KIND": "redis",
        "WSHUB_BROKER__URL": redis.url,
        "WSHUB_ADMIN__API_KEY": "k",
    }
    args = ("--workers", "2", "--server", server_kind)
    server = wshub_serve(tmp_path / "serve.log", *args, env=env)
    try:
        deadline = time.monotonic() + 20
        while server.log().count("wshub listening on") < 2:  # both workers are up
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert "2 workers (pids" in server.log()
        opened = contextlib.ExitStack()
        clients = [
            opened.enter_context(connect_sync(f"{server.ws}/ws", open_timeout=5)) for _ in range(6)
        ]
        for number, ws in enumerate(clients):
            ws.send(hello(f"w{number}", {"news": None}))
            assert receive_objects(ws, 1)[0]["type"] == "welcome"
        for n in range(3):
            reply = httpx.post(
                f"{server.http}/api/publish",
                json={"stream": "news", "data": n},
                headers={"authorization": "Bearer k"},
                timeout=5,
            )
            assert reply.json()["offset"] == n + 1
        for ws in clients:  # whichever worker each landed on, each gets all three, in order
            assert [m["offset"] for m in receive_objects(ws, 3)] == [1, 2, 3]
        server.stop(signal.SIGTERM, timeout=20)
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                ws.recv(5)
            assert ws.close_code == 1001
        opened.close()
        assert server.process.returncode == 0
    finally:
        server.stop(signal.SIGKILL)


def test_serve_exits_1_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "wshub.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}: [Errno 98] Address already in use" in done.stderr


def test_serve_refuses_a_bad_config_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write(tmp_path / "bad.toml", "[server]\nport = 70000\n")
    assert main(["serve", "--config", file]) == 2
    assert "server.port must be an integer from 0 to 65535" in capsys.readouterr().err


def test_usage_errors_and_help_return_their_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 2
    assert main(["serve", "--preset", "staging"]) == 2
    assert main(["--help"]) == 0
    assert "check-config" in capsys.readouterr().out


def test_serve_config_layers_preset_file_environment_then_flags(tmp_path: Path) -> None:
    no_preset = write(tmp_path / "plain.toml", "[limits]\nmax_queue = 11\n")
    testing = write(tmp_path / "testing.toml", 'preset = "testing"\n[limits]\nmax_queue = 12\n')

    alone = build_serve_config(environ={})
    assert alone.server.allow_anonymous  # development without a file
    assert alone.shutdown.grace == 3.0

    from_file = build_serve_config(config_file=no_preset, environ={})
    assert from_file.limits.max_queue == 11
    assert not from_file.server.allow_anonymous  # a file without a preset starts at production

    assert build_serve_config(config_file=testing, environ={}).server.port == 0
    chosen = build_serve_config(config_file=testing, preset="production", environ={})
    assert (chosen.server.port, chosen.limits.max_queue) == (8765, 12)  # the flag wins

    environ = {
        "WSHUB_CONFIG": testing,
        "WSHUB_LIMITS__MAX_QUEUE": "13",
        "WSHUB_SERVER__PORT": "9000",
        "WSHUB_SERVER__HOST": "0.0.0.0",
    }
    layered = build_serve_config(port=9100, environ=environ)
    assert layered.limits.max_queue == 13  # the environment over the file
    assert (layered.server.host, layered.server.port) == ("0.0.0.0", 9100)  # the flag over both
    assert build_serve_config(environ={"WSHUB_PRESET": "testing"}).limits.max_queue == 100


# --------------------------------------------------------------------------- serve: for real


#: ``wshub serve --server KIND``: both servers drain the same way.
SERVERS = ["hypercorn", "fast"]


@pytest.mark.parametrize("kind", SERVERS)
def test_serve_logs_its_urls_and_drains_on_sigint(tmp_path: Path, kind: str) -> None:
    config = write(tmp_path / "wshub.toml", 'preset = "development"\n[server]\npath = "/hub"\n')
    server = wshub_serve(tmp_path / "serve.log", "--config", config, "--server", kind)
    try:
        base = f"127.0.0.1:{server.port}"
        line = (
            f"wshub listening on http://{base}: websocket ws://{base}/hub, "
            f"dashboard http://{base}/dashboard, metrics http://{base}/metrics"
        )
        assert line in server.log()
        with connect_sync(f"{server.ws}/hub", open_timeout=5) as ws:
            ws.send(hello("sigint-1"))
            assert receive_objects(ws, 1)[0]["type"] == "welcome"
            server.stop(signal.SIGINT)
            with pytest.raises(ConnectionClosed):
                ws.recv(5)
            assert ws.close_code == 1001
        assert server.process.returncode == 0
        assert "SIGINT received: draining" in server.log()
    finally:
        server.stop(signal.SIGKILL)


CLIENTS = 200
GRACE = 0.5


async def _subscriber(url: str, number: int, limit: asyncio.Semaphore) -> ClientConnection:
    async with limit:  # a few at a time: the listen backlog is 100
        websocket = await connect(url, subprotocols=[SUBPROTOCOL], open_timeout=10)
        await websocket.send(hello(f"client-{number}", {"news": None}))
        welcome = objects(await asyncio.wait_for(websocket.recv(), 10))
        assert welcome[0]["type"] == "welcome"
        return websocket


async def _until_closed(websocket: ClientConnection) -> tuple[int | None, list[Any]]:
    received: list[Any] = []
    try:
        while True:
            received.extend(objects(await asyncio.wait_for(websocket.recv(), 10)))
    except ConnectionClosed:
        return websocket.close_code, received


async def _drain_scenario(server: Server) -> tuple[list[tuple[int | None, list[Any]]], float]:
    limit = asyncio.Semaphore(50)
    url = f"{server.ws}/ws"
    clients = await asyncio.gather(*(_subscriber(url, n, limit) for n in range(CLIENTS)))
    async with httpx.AsyncClient() as http:
        health = await http.get(f"{server.http}/health/websocket")
        assert health.json()["connections"]["active"] == CLIENTS
        body = {"stream": "news", "data": "last words", "id": "bye"}
        reply = await http.post(
            f"{server.http}/api/publish", json=body, headers={"authorization": f"Bearer {KEY}"}
        )
        assert reply.status_code == 200
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    outcomes = await asyncio.gather(*(_until_closed(client) for client in clients))
    await asyncio.to_thread(server.process.wait, 10)
    return outcomes, time.monotonic() - start


@pytest.mark.parametrize("kind", SERVERS)
def test_sigterm_drains_every_client_with_1001_and_exits_within_the_grace(
    tmp_path: Path, kind: str
) -> None:
    env = {
        "WSHUB_SHUTDOWN__GRACE": str(GRACE),
        "WSHUB_ADMIN__API_KEY": KEY,
        "WSHUB_METRICS__LOG": "false",
    }
    server = wshub_serve(tmp_path / "serve.log", "--server", kind, env=env)
    try:
        outcomes, elapsed = asyncio.run(_drain_scenario(server))
        assert server.process.returncode == 0, server.log()
        # The message queued before the signal is flushed first, then each client gets 1001.
        for code, received in outcomes:
            assert code == 1001
            assert [(m["type"], m["id"]) for m in received] == [("message", "bye")]
        assert elapsed < GRACE + 1.0, f"exited after {elapsed:.2f} s"
        assert "SIGTERM received: draining" in server.log()
    finally:
        server.stop(signal.SIGKILL)


def test_a_peer_that_stopped_reading_cannot_keep_serve_running(tmp_path: Path) -> None:
    env = {
        "WSHUB_SHUTDOWN__GRACE": str(GRACE),
        "WSHUB_ADMIN__API_KEY": KEY,
        "WSHUB_METRICS__LOG": "false",
    }
    server = wshub_serve(tmp_path / "serve.log", "--server", "hypercorn", env=env)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    auth = {"authorization": f"Bearer {KEY}"}
    try:
        # max_queue=1: the client stops reading its socket once one frame waits unread.
        with connect_sync(f"{server.ws}/ws", sock=stalled, max_queue=1, close_timeout=1) as ws:
            ws.send(hello("stalled", {"news": None}))
            assert objects(ws.recv(5))[0]["type"] == "welcome"
            with httpx.Client(base_url=server.http, headers=auth) as http:
                for n in range(400):
                    http.post("/api/publish", json={"stream": "news", "data": [n, "x" * 60_000]})
                    # Ten messages still queued: the writer is blocked in hypercorn's
                    # socket write (a free writer takes its queue every few milliseconds).
                    queues = http.get("/health/websocket").json()["queues"]
                    if queues["depth"] >= 10:
                        break
                else:
                    pytest.fail("the peer never stalled")
            elapsed = server.stop(signal.SIGTERM, timeout=20)
        # The drain waits out the grace and the close timeout (3 s), hypercorn its own
        # second, then wshub serve gives up on the stuck write a second later.
        assert server.process.returncode == 1
        assert elapsed < GRACE + 3.0 + 2.0 + 2.5, f"exited after {elapsed:.2f} s"
        assert "a peer that stopped reading holds a socket write" in server.log()
    finally:
        server.stop(signal.SIGKILL)


def test_a_peer_that_stopped_reading_is_cut_by_the_fast_server_drain(tmp_path: Path) -> None:
    env = {
        "WSHUB_SHUTDOWN__GRACE": str(GRACE),
        "WSHUB_ADMIN__API_KEY": KEY,
        "WSHUB_METRICS__LOG": "false",
    }
    server = wshub_serve(tmp_path / "serve.log", "--server", "fast", env=env)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    auth = {"authorization": f"Bearer {KEY}"}
    try:
        with connect_sync(f"{server.ws}/ws", sock=stalled, max_queue=1, close_timeout=1) as ws:
            ws.send(hello("stalled", {"news": None}))
            assert objects(ws.recv(5))[0]["type"] == "welcome"
            with httpx.Client(base_url=server.http, headers=auth) as http:
                for n in range(400):
                    http.post("/api/publish", json={"stream": "news", "data": [n, "x" * 60_000]})
                    queues = http.get("/health/websocket").json()["queues"]
                    if queues["depth"] >= 10:  # the writer waits on the full socket
                        break
                else:
                    pytest.fail("the peer never stalled")
            elapsed = server.stop(signal.SIGTERM, timeout=20)
        # The fast server's writes can be cancelled: the drain cuts the stuck write at the
        # grace (the frame cannot finish) and the process exits cleanly, no forced exit.
        assert server.process.returncode == 0, server.log()
        assert elapsed < GRACE + 3.0 + 2.0, f"exited after {elapsed:.2f} s"
        assert "Traceback" not in server.log()
    finally:
        server.stop(signal.SIGKILL)


# --------------------------------------------------------------------------- tail, publish


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``wshub ARGS`` as a process, its output captured."""
    argv = [sys.executable, "-m", "wshub.cli", *args]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env={**clean, **(env or {})}
    )


def test_publish_and_tail_through_a_running_hub(tmp_path: Path) -> None:
    server = wshub_serve(tmp_path / "serve.log", env={"WSHUB_ADMIN__API_KEY": "secret"})
    tail_out = tmp_path / "tail.jsonl"
    try:
        with tail_out.open("w") as out:
            tail = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wshub.cli",
                    "tail",
                    f"{server.ws}/ws",
                    "--client-id",
                    "tailer",
                    "--stream",
                    "news",
                    "--from",
                    "0",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            first = run_cli(
                "publish", server.http, "news", '{"n": 1}', "--id", "k1", "--api-key", "secret"
            )
            assert first.returncode == 0, first.stderr
            assert orjson.loads(first.stdout) == {
                "stream": "news",
                "offset": 1,
                "id": "k1",
                "duplicate": False,
            }
            # The key from the variable the hub itself reads.
            again = run_cli(
                "publish",
                server.http,
                "news",
                '{"n": 1}',
                "--id",
                "k1",
                env={"WSHUB_ADMIN__API_KEY": "secret"},
            )
            assert orjson.loads(again.stdout)["duplicate"] is True
            # What the hub refuses as given is bad input: exit 2, one line saying what to do.
            keyless = run_cli("publish", server.http, "news", "2")
            assert keyless.returncode == 2
            assert keyless.stderr.count("\n") == 1, keyless.stderr
            assert "answered 401" in keyless.stderr
            assert "--api-key or in WSHUB_ADMIN__API_KEY" in keyless.stderr
            wrong = run_cli("publish", server.http, "news", "2", "--api-key", "guess")
            assert wrong.returncode == 2
            assert (
                "answered 403" in wrong.stderr and "is not the hub's admin.api_key" in wrong.stderr
            )
            reused = run_cli(
                "publish", server.http, "news", '{"n": 2}', "--id", "k1", "--api-key", "secret"
            )
            assert (reused.returncode, reused.stderr.count("\n")) == (2, 1), reused.stderr
            assert "answered 409" in reused.stderr and "give new data a new id" in reused.stderr
            assert "Traceback" not in keyless.stderr + wrong.stderr + reused.stderr
            deadline = time.monotonic() + 10
            while not tail_out.read_text().strip():
                assert time.monotonic() < deadline, "tail printed nothing"
                assert tail.poll() is None, tail_out.read_text()
                time.sleep(0.05)
            line = orjson.loads(tail_out.read_text().splitlines()[0])
            assert (line["type"], line["stream"], line["offset"]) == ("message", "news", 1)
            assert line["data"] == {"n": 1}
        finally:
            tail.terminate()
            tail.wait(10)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("publish", "http://127.0.0.1:1", "news", "{bad"), 2, "DATA is not valid JSON"),
        (("publish", "http://127.0.0.1:1", "$sys.metrics", "1"), 2, "invalid STREAM"),
        (("publish", "http://127.0.0.1:1", "news", "1"), 1, "cannot reach the hub"),
        (("publish", "http://127.0.0.1:1", "news", "1"), 1, "is a hub serving there?"),
        (
            ("publish", "ws://127.0.0.1:1/ws", "news", "1"),
            2,
            "give the hub's HTTP address, http://127.0.0.1:1, not its WebSocket",
        ),
        (
            ("tail", "http://127.0.0.1:1", "--client-id", "a", "--stream", "n"),
            2,
            "is not a ws/wss URL; did you mean ws://127.0.0.1:1/ws?",
        ),
        (
            ("tail", "https://hub.example/ws", "--client-id", "a", "--stream", "n"),
            2,
            "did you mean wss://hub.example/ws?",
        ),
        (("tail", "ws://[::1", "--client-id", "a", "--stream", "n"), 2, "is not valid"),
        (("tail", "ws://h:port/ws", "--client-id", "a", "--stream", "n"), 2, "is not valid"),
        (
            ("tail", "ws://127.0.0.1:1/ws", "--client-id", "a", "--stream", "bad stream"),
            2,
            "invalid --stream 'bad stream'",
        ),
        (
            (
                "tail",
                "ws://127.0.0.1:1/ws",
                "--client-id",
                "a",
                "--stream",
                "n",
                "--max-attempts",
                "0",
            ),
            2,
            "--max-attempts must be >= 1",
        ),
        (
            ("tail", "ws://127.0.0.1:1/ws", "--client-id", "bad id", "--stream", "n"),
            2,
            "invalid --client-id",
        ),
        (
            ("tail", "ws://127.0.0.1:1/ws", "--client-id", "a", "--stream", "n", "--from", "-1"),
            2,
            "--from must be an offset >= 0",
        ),
        (
            (
                "tail",
                "ws://127.0.0.1:1/ws",
                "--client-id",
                "a",
                "--stream",
                "n",
                "--max-attempts",
                "1",
            ),
            1,
            "gave up after 1 failed connection attempt",
        ),
    ],
)
def test_tail_and_publish_fail_clearly(args: tuple[str, ...], code: int, message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == code
    assert message in result.stderr
    # One line: what is wrong and what to do; never a traceback.
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"wshub {args[0]}: ")
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- token

JWT_SECRET = "a-cli-jwt-secret-that-is-32-bytes-long"


def test_token_mints_what_pyjwt_verifies_with_the_configured_secret() -> None:
    import jwt

    env = {
        "WSHUB_AUTH__JWT_SECRET": JWT_SECRET,
        "WSHUB_AUTH__JWT_AUDIENCE": "wshub",
        "WSHUB_AUTH__JWT_ISSUER": "https://dev.example",
    }
    argv = ["token", "--sub", "alice", "--subscribe", "news", "--publish", "chat.*"]
    before = time.time()
    result = run_cli(*argv, "--ttl", "3600", env=env)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(
        result.stdout.strip(),
        JWT_SECRET,
        algorithms=["HS256"],
        audience="wshub",
        issuer="https://dev.example",
    )
    assert claims["sub"] == "alice"
    assert claims["wshub"] == {"subscribe": ["news"], "publish": ["chat.*"], "admin": False}
    assert int(before) + 3600 <= claims["exp"] <= time.time() + 3600


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--sub", "alice"), {}, "auth.jwt_secret is not configured"),
        (("--sub", "bad id"), {"WSHUB_AUTH__JWT_SECRET": JWT_SECRET}, "invalid --sub 'bad id'"),
        (
            ("--sub", "a", "--ttl", "0"),
            {"WSHUB_AUTH__JWT_SECRET": JWT_SECRET},
            "--ttl must be > 0 seconds",
        ),
        (("--sub", "a"), {"WSHUB_AUTH__JWT_SECRET": "short"}, "at least 32 bytes"),
    ],
)
def test_token_refuses_what_it_cannot_sign(
    args: tuple[str, ...],
    env: dict[str, str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [name for name in os.environ if name.startswith("WSHUB_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["token", *args]) == 2
    assert message in capsys.readouterr().err


def test_serve_refuses_an_unreadable_public_key_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.pem"
    monkeypatch.setenv("WSHUB_AUTH__JWT_PUBLIC_KEY", str(missing))
    monkeypatch.setenv("WSHUB_AUTH__JWT_ALGORITHMS", "RS256")
    assert main(["serve", "--port", "0"]) == 2
    assert capsys.readouterr().err == (
        f"wshub serve: auth.jwt_public_key: cannot read {str(missing)!r}: "
        "No such file or directory; `wshub check-config` shows what serve would load\n"
    )


def test_token_tail_and_publish_through_a_hub_that_requires_tokens(tmp_path: Path) -> None:
    env = {
        "WSHUB_AUTH__JWT_SECRET": JWT_SECRET,
        "WSHUB_SERVER__ALLOW_ANONYMOUS": "false",
        "WSHUB_SERVER__CLIENT_PUBLISH": "false",
    }
    server = wshub_serve(tmp_path / "serve.log", env=env)
    tail_out = tmp_path / "tail.jsonl"
    try:
        reader = run_cli("token", "--sub", "reader", "--subscribe", "news", env=env)
        writer = run_cli("token", "--sub", "writer", "--publish", "news", env=env)
        assert reader.returncode == writer.returncode == 0
        with tail_out.open("w") as out:
            tail = subprocess.Popen(
                [
                    *(sys.executable, "-m", "wshub.cli", "tail", f"{server.ws}/ws"),
                    *("--client-id", "reader", "--stream", "news", "--from", "0"),
                    *("--token", reader.stdout.strip()),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            refused = run_cli("publish", server.http, "news", "1", "--token", reader.stdout.strip())
            assert refused.returncode == 2
            assert "403" in refused.stderr and "publish rights" in refused.stderr
            published = run_cli(
                "publish", server.http, "news", '{"n": 1}', "--token", writer.stdout.strip()
            )
            assert published.returncode == 0, published.stderr
            assert orjson.loads(published.stdout)["offset"] == 1
            deadline = time.monotonic() + 10
            while not tail_out.read_text().strip():
                assert time.monotonic() < deadline, "tail printed nothing"
                assert tail.poll() is None, tail_out.read_text()
                time.sleep(0.05)
            line = orjson.loads(tail_out.read_text().splitlines()[0])
            assert (line["stream"], line["offset"], line["data"]) == ("news", 1, {"n": 1})
        finally:
            tail.terminate()
            tail.wait(10)
        # Refused credentials are bad input (exit 2), with what to pass instead: not "is a hub
        # serving?", since the hub answered.
        tail_news = ("tail", f"{server.ws}/ws", "--stream", "news", "--max-attempts", "1")
        anonymous = run_cli(*tail_news, "--client-id", "x")
        other_id = run_cli(*tail_news, "--client-id", "x", "--token", reader.stdout.strip())
        tail_secret = ("tail", f"{server.ws}/ws", "--stream", "secret", "--max-attempts", "1")
        forbidden = run_cli(*tail_secret, "--client-id", "reader", "--token", reader.stdout.strip())
        for result, reason in [
            (anonymous, "(close 1008): anonymous clients are not allowed"),
            (other_id, "(close 1008): client id 'x' is not the token's subject"),
            (forbidden, "subscription to 'secret' refused (forbidden)"),
        ]:
            assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
            assert result.stderr.startswith("wshub tail: ") and reason in result.stderr
            assert "pass --token with a credential the hub accepts" in result.stderr
            assert "is a hub serving" not in result.stderr and "Traceback" not in result.stderr
    finally:
        server.stop()
