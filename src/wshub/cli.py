"""The ``wshub`` command: ``serve``, ``check-config``, ``tail``, ``publish`` and ``token``.

``tail`` and ``publish``, the commands that act as a client of a running hub, are in
``wshub.cli_clients``.

Each subcommand is a function that adds its parser and sets ``run`` (``args -> exit code``);
``SUBCOMMANDS`` lists them, so a new one is one line there. One error style everywhere
(``cli_clients.complain``): one line on stderr, ``wshub COMMAND: what is wrong; what to do``,
exit status 2 for bad input or configuration and 1 for a failure at run time, never a
traceback for either.

``wshub serve`` runs wshub's own server (``servers/fast.py``: wsproto and h11 on Trio sockets)
on one port, or with ``--server hypercorn`` the ASGI app under hypercorn's trio worker
(``--workers N``: N such processes on one listening socket, see ``servers/workers.py``). On
SIGINT or SIGTERM it drains the hub (every client gets 1001 once its queue is flushed, within
``shutdown.grace``) before the server stops; under hypercorn that happens in its shutdown
trigger, so hypercorn's own deadline (which would close WebSockets with 1011) never cuts a
connection the hub still serves.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit, urlunsplit

import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import Framework

from wshub.cli_clients import add_publish_command, add_tail_command, complain
from wshub.core.config import ConfigError, HubConfig
from wshub.core.protocol import is_valid_client_id
from wshub.hub.auth import TokenVerifier, mint_dev_token
from wshub.hub.hub import open_hub
from wshub.logs import add_log_arguments, configure_logging
from wshub.servers.asgi import HubApp, create_app
from wshub.servers.fast import serve_fast
from wshub.servers.workers import listen, run_workers

__all__ = [
    "SUBCOMMANDS",
    "add_config_arguments",
    "build_serve_config",
    "hypercorn_config",
    "main",
    "serve",
    "serve_fast_until_signal",
]

logger = logging.getLogger("wshub.cli")

# Seconds hypercorn may still take, after the hub has drained, for in-flight HTTP requests
# and the TCP close of WebSockets that already received their 1001.
HYPERCORN_GRACE = 1.0
# Seconds more before ``wshub serve`` gives up on connections stuck in a socket write.
FORCE_EXIT_MARGIN = 1.0

_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


# --------------------------------------------------------------------------- serve


def build_serve_config(
    *,
    config_file: str | None = None,
    preset: str | None = None,
    host: str | None = None,
    port: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> HubConfig:
    """The configuration ``wshub serve`` runs with; raises ConfigError.

    Layers, lowest first: the preset (``preset``, else ``WSHUB_PRESET``, else the file's own
    ``preset`` key, else ``development`` when there is no file, else ``production``), the file
    (``config_file``, else ``WSHUB_CONFIG``), the ``WSHUB_SECTION__KEY`` variables, then
    ``host`` and ``port``.
    """
    env = dict(os.environ if environ is None else environ)
    if config_file is not None:
        env["WSHUB_CONFIG"] = config_file
    if preset is not None:
        env["WSHUB_PRESET"] = preset
    elif not env.get("WSHUB_PRESET") and not env.get("WSHUB_CONFIG"):
        # Only without a file: a file without a preset key starts from production, as
        # everywhere else, so a deployment file never quietly gets development's open doors.
        env["WSHUB_PRESET"] = "development"
    config = HubConfig.from_env(env)
    server: dict[str, Any] = {}
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    return config.merged({"server": server}) if server else config


def hypercorn_config(config: HubConfig) -> HypercornConfig:
    """Hypercorn's settings for serving ``config``: one bind, wshub's message limit."""
    host, port = config.server.host, config.server.port
    hypercorn = HypercornConfig()
    hypercorn.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hypercorn.worker_class = "trio"
    hypercorn.websocket_max_message_size = config.limits.max_message_bytes
    hypercorn.graceful_timeout = HYPERCORN_GRACE
    hypercorn.accesslog = None
    hypercorn.errorlog = logging.getLogger("hypercorn.error")  # through our logging setup
    return hypercorn


def _urls(bind: str, path: str) -> str:
    base = bind.removeprefix("http://")
    return (
        f"wshub listening on {bind}: websocket ws://{base}{path}, "
        f"dashboard {bind}/dashboard, metrics {bind}/metrics"
    )


async def serve(
    app: HubApp,
    config: HypercornConfig,
    *,
    force_exit_after: float | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with hypercorn until SIGINT or SIGTERM, then drain and stop.

    ``await nursery.start(serve, app, config)`` returns the bound addresses
    (``["http://127.0.0.1:8765"]``, with the real port when the config asks for port 0),
    once the hub runs and the socket listens. One line with the URLs is logged then too.

    Hypercorn shields its socket writes from cancellation, so a peer that stopped reading
    keeps its connection task, and hypercorn with it, alive past any deadline. With
    ``force_exit_after`` the process exits (status 1) that many seconds after the drain if
    hypercorn has not stopped by then; ``wshub serve`` uses it, embedders decide for themselves.
    """
    drained = trio.Event()
    # Catch the signals before the socket listens, so none arrives while nobody handles it.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def drain_on_signal() -> None:
            async for number in signals:
                logger.info("%s received: draining", signal.Signals(number).name)
                break
            await app.hub.drain()
            logger.info("drained; stopping")
            drained.set()

        async with trio.open_nursery() as nursery:

            async def run_hypercorn(*, task_status: trio.TaskStatus[list[str]]) -> None:
                # Hypercorn types ASGI events as TypedDicts; the app takes plain mappings.
                framework = cast(Framework, app)
                await hypercorn_serve(
                    framework, config, shutdown_trigger=drain_on_signal, task_status=task_status
                )
                nursery.cancel_scope.cancel()  # stopped: the watchdog is not needed

            if force_exit_after is not None:
                nursery.start_soon(_exit_if_stuck, drained, force_exit_after)
            binds: list[str] = await nursery.start(run_hypercorn)
            for bind in binds:
                logger.info("%s", _urls(bind, app.hub.config.server.path))
            task_status.started(binds)


async def _exit_if_stuck(drained: trio.Event, seconds: float) -> None:
    await drained.wait()
    await trio.sleep(seconds)
    logger.error(
        "hypercorn has not stopped %.1f s after the drain: a peer that stopped reading holds "
        "a socket write; exiting without it",
        seconds,
    )
    logging.shutdown()
    os._exit(1)


async def serve_fast_until_signal(
    config: HubConfig,
    *,
    listen_fd: int | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``config`` with the fast server until SIGINT or SIGTERM, then drain and stop.

    ``await nursery.start(serve_fast_until_signal, config)`` returns the bound address
    (``["http://127.0.0.1:8765"]``, the real port with port 0) and logs the URLs, as ``serve``.
    With ``listen_fd`` it accepts from that inherited, listening socket (a worker of
    ``wshub serve --workers N``) instead of binding.
    The drain sends 1001 to every client once its queue is flushed; a peer that stopped
    reading is cut at ``shutdown.grace`` (this server's writes can be cancelled).
    """
    host, port = config.server.host, config.server.port
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_hub(config) as hub:
            sock = None if listen_fd is None else socket.socket(fileno=listen_fd)
            server = await hub.nursery.start(partial(serve_fast, hub, host, port, sock=sock))
            bind = (
                f"http://[{host}]:{server.port}" if ":" in host else f"http://{host}:{server.port}"
            )
            logger.info("%s", _urls(bind, config.server.path))
            task_status.started([bind])
            async for number in signals:
                logger.info("%s received: draining", signal.Signals(number).name)
                break
        logger.info("drained; stopping")  # leaving open_hub drained it, then stopped serving


def _run_serve(args: argparse.Namespace) -> int:
    if args.workers < 1:
        return complain("serve", f"--workers must be at least 1, got {args.workers}")
    try:
        config = _checked_config(args)
    except ConfigError as error:
        return complain("serve", f"{error}; `wshub check-config` shows what serve would load")
    if args.workers > 1 and config.broker.kind != "redis":
        return complain(
            "serve",
            f"--workers {args.workers} refused: broker.kind is {config.broker.kind!r}, so each "
            "worker would keep its own streams (other offsets, history and de-duplication in "
            'each). Set broker.kind = "redis" (WSHUB_BROKER__KIND=redis) to serve one service '
            "from several workers.",
        )
    configure_logging(args.log_level, args.log_format)
    if args.workers > 1:
        try:
            sock = listen(config.server.host, config.server.port)
        except OSError as error:
            logger.error("cannot serve on %s:%d: %s", config.server.host, config.server.port, error)
            return 1
        return run_workers(args.workers, sock, _worker_arguments(args, sock.getsockname()[1]))
    hypercorn = hypercorn_config(config)
    if args.listen_fd is not None:  # a worker of ``--workers N``: the parent listens
        hypercorn.bind = [f"fd://{args.listen_fd}"]
    try:
        if args.server == "fast":
            trio.run(partial(serve_fast_until_signal, config, listen_fd=args.listen_fd))
        else:
            trio.run(
                partial(serve, force_exit_after=HYPERCORN_GRACE + FORCE_EXIT_MARGIN),
                create_app(config),
                hypercorn,
            )
    except Exception as error:
        cause = _sole_os_error(error)
        if cause is None:
            raise
        logger.error("cannot serve on %s:%d: %s", config.server.host, config.server.port, cause)
        return 1
    return 0


def _worker_arguments(args: argparse.Namespace, port: int) -> list[str]:
    """The ``serve`` arguments of each worker: the same configuration, on the bound port."""
    arguments = ["--port", str(port), "--server", args.server]
    arguments += ["--log-level", args.log_level, "--log-format", args.log_format]
    given = (("--config", args.config), ("--preset", args.preset), ("--host", args.host))
    for flag, value in given:
        if value is not None:
            arguments += [flag, value]
    return arguments


def _sole_os_error(error: BaseException) -> OSError | None:
    """The OSError (such as "address already in use") inside nested one-error groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, OSError) else None


def add_serve_command(subparsers: _Subparsers) -> None:
    """``wshub serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve the hub (WebSocket and HTTP on one port)",
        description="Serve /ws, /health, /metrics, /api/* and /dashboard on one port. "
        "SIGINT or SIGTERM drains the hub (clients get 1001) and exits.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config file (or WSHUB_CONFIG)")
    add_config_arguments(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on one port (more than 1 needs broker.kind = redis)",
    )
    parser.add_argument(
        "--server",
        choices=("fast", "hypercorn"),
        default="fast",
        help="wshub's own server (wsproto and h11; the default), or hypercorn's trio worker",
    )
    add_log_arguments(parser)
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # a worker's socket
    parser.set_defaults(run=_run_serve)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the configuration, shared by ``serve`` and ``check-config``."""
    parser.add_argument("--host", help="address to bind (default: server.host)")
    parser.add_argument("--port", type=int, help="port to bind, 0 for any free port")
    parser.add_argument(
        "--preset",
        choices=HubConfig.PRESETS,
        help="preset under the file (default: WSHUB_PRESET, else the file's preset key, "
        "else production with a file and development without)",
    )


def _checked_config(args: argparse.Namespace) -> HubConfig:
    """What ``serve`` runs with for these arguments and the environment, its key file read
    and checked; raises ConfigError."""
    config = build_serve_config(
        config_file=args.config, preset=args.preset, host=args.host, port=args.port
    )
    TokenVerifier.from_config(config.auth)
    return config


# --------------------------------------------------------------------------- check-config


def _redacted(config: HubConfig) -> dict[str, dict[str, Any]]:
    data = config.to_dict()
    for section, key in (("admin", "api_key"), ("auth", "jwt_secret")):
        if data[section][key] is not None:
            data[section][key] = "<redacted>"
    url = urlsplit(data["broker"]["url"])
    if url.password is not None:
        login = f"{url.username or ''}:<redacted>@{url.hostname}"
        netloc = login + (f":{url.port}" if url.port is not None else "")
        data["broker"]["url"] = urlunsplit(url._replace(netloc=netloc))
    return data


def _run_check_config(args: argparse.Namespace) -> int:
    if args.file is not None and args.config is not None and args.file != args.config:
        return complain("check-config", "give the file once, as FILE or as --config")
    args.config = args.file if args.file is not None else args.config
    try:
        config = _checked_config(args)
    except ConfigError as error:
        return complain("check-config", str(error))
    sys.stdout.write(orjson.dumps(_redacted(config), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def add_check_config_command(subparsers: _Subparsers) -> None:
    """``wshub check-config [FILE] [--preset NAME] [--host H] [--port P]``."""
    parser = subparsers.add_parser(
        "check-config",
        help="validate what `wshub serve` would load and print it as JSON",
        description="Build the configuration exactly as `wshub serve` would with the same "
        "options: the preset, the file (FILE, else WSHUB_CONFIG), every WSHUB_SECTION__KEY "
        "variable, then --host and --port; print it as JSON, or exit 2 with the error, which "
        "names the key or the variable. admin.api_key, auth.jwt_secret and the password in "
        "broker.url are printed as "
        "<redacted>; the file named by auth.jwt_public_key is read and checked.",
    )
    parser.add_argument("file", metavar="FILE", nargs="?", help="TOML config file")
    parser.add_argument("--config", metavar="FILE", help="the same as FILE, as serve spells it")
    add_config_arguments(parser)
    parser.set_defaults(run=_run_check_config)


# --------------------------------------------------------------------------- token


def _run_token(args: argparse.Namespace) -> int:
    if not is_valid_client_id(args.sub):
        return complain("token", f"invalid --sub {args.sub!r}: use 1-128 of A-Z a-z 0-9 _ . : -")
    if not args.ttl > 0:
        return complain("token", f"--ttl must be > 0 seconds, got {args.ttl:g}")
    try:
        config = build_serve_config(config_file=args.config, preset=args.preset)
        signed = mint_dev_token(
            config.auth,
            args.sub,
            ttl=args.ttl,
            subscribe=args.subscribe,
            publish=args.publish,
            admin=args.admin,
        )
    except ConfigError as error:
        return complain("token", str(error))
    sys.stdout.write(signed + "\n")
    return 0


def add_token_command(subparsers: _Subparsers) -> None:
    """``wshub token --sub ID [--subscribe P]... [--publish P]... [--admin] [--ttl S]``."""
    parser = subparsers.add_parser(
        "token",
        help="mint a development JWT from the configured auth.jwt_secret",
        description="Print a JWT for client SUB signed with auth.jwt_secret (HS256, or the "
        "first HS algorithm auth.jwt_algorithms lists), carrying auth.jwt_audience and "
        "auth.jwt_issuer when configured. The configuration is read as `wshub serve` reads it "
        "(--config, --preset, WSHUB_* variables). For development: a deployment's tokens come "
        "from its own backend.",
    )
    parser.add_argument("--sub", required=True, help="the client id the token is for")
    parser.add_argument(
        "--subscribe",
        action="append",
        default=[],
        metavar="PATTERN",
        help="a topic (or prefix ending in *) it may subscribe to (repeatable)",
    )
    parser.add_argument(
        "--publish",
        action="append",
        default=[],
        metavar="PATTERN",
        help="a topic (or prefix ending in *) it may publish to (repeatable)",
    )
    parser.add_argument("--admin", action="store_true", help="grant the admin right")
    parser.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)"
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config file (or WSHUB_CONFIG)")
    parser.add_argument("--preset", choices=HubConfig.PRESETS, help="as for `wshub serve`")
    parser.set_defaults(run=_run_token)


# --------------------------------------------------------------------------- main

#: The subcommands, in help order: each adds its parser and sets ``run``.
SUBCOMMANDS: Sequence[Callable[[_Subparsers], None]] = (
    add_serve_command,
    add_check_config_command,
    add_tail_command,
    add_publish_command,
    add_token_command,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wshub", description="A resilient WebSocket hub.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in SUBCOMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wshub`` command with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error (2)
        return exit.code if isinstance(exit.code, int) else 2
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
