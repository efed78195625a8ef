"""``wshub serve``: its options, the configuration it runs with, and the two servers it runs.

``wshub serve`` runs wshub's own server (``servers/fast.py``: wsproto and h11 on Trio sockets)
on one port, or with ``--server hypercorn`` the ASGI app under hypercorn's trio worker
(``--workers N``: N such processes on one listening socket, see ``servers/workers.py``). On
SIGINT or SIGTERM it drains the hub (every client gets 1001 once its queue is flushed, within
``shutdown.grace``) before the server stops; under hypercorn that happens in its shutdown
trigger, so hypercorn's own deadline (which would close WebSockets with 1011) never cuts a
connection the hub still serves.

``check-config`` and ``token`` (in ``wshub.cli``) read the configuration the way ``serve``
does, through ``build_serve_config`` and ``add_config_arguments``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
from collections.abc import Mapping
from functools import partial
from typing import Any, TypeAlias, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import Framework

from wshub.cli_clients import complain
from wshub.core.config import ConfigError, HubConfig
from wshub.hub.auth import TokenVerifier
from wshub.hub.hub import open_hub
from wshub.logs import add_log_arguments, configure_logging
from wshub.servers.asgi import HubApp, create_app
from wshub.servers.fast import serve_fast
from wshub.servers.workers import listen, run_workers

__all__ = [
    "FORCE_EXIT_MARGIN",
    "HYPERCORN_GRACE",
    "add_config_arguments",
    "add_serve_command",
    "build_serve_config",
    "checked_config",
    "hypercorn_config",
    "serve",
    "serve_fast_until_signal",
]

# The command's logger: the start-up line reads ``wshub.cli: wshub listening on ...``
# (docs/operations.md), whichever module of the command logs it.
logger = logging.getLogger("wshub.cli")

# Seconds hypercorn may still take, after the hub has drained, for in-flight HTTP requests
# and the TCP close of WebSockets that already received their 1001.
HYPERCORN_GRACE = 1.0
# Seconds more before ``wshub serve`` gives up on connections stuck in a socket write.
FORCE_EXIT_MARGIN = 1.0

_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


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
        config = checked_config(args)
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


def checked_config(args: argparse.Namespace) -> HubConfig:
    """What ``serve`` runs with for these arguments (``--config``, ``--preset``, ``--host``,
    ``--port``) and the environment, its key file read and checked; raises ConfigError."""
    config = build_serve_config(
        config_file=args.config, preset=args.preset, host=args.host, port=args.port
    )
    TokenVerifier.from_config(config.auth)
    return config
