"""The ``wshub`` command: ``serve``, ``check-config``, ``tail``, ``publish`` and ``token``.

``tail`` and ``publish``, the commands that act as a client of a running hub, are in
``wshub.cli_clients``.

Each subcommand is a function that adds its parser and sets ``run`` (``args -> exit code``);
``SUBCOMMANDS`` lists them, so a new one is one line there. One error style everywhere
(``cli_clients.complain``): one line on stderr, ``wshub COMMAND: what is wrong; what to do``,
exit status 2 for bad input or configuration (a credential or request the hub refuses as given
included) and 1 for a failure at run time (the hub cannot be reached or is unavailable), never
a traceback for either.

``serve``, its options and the two servers it runs are in ``wshub.cli_serve``; ``check-config``
and ``token`` read the configuration exactly as it does. ``build_serve_config``,
``hypercorn_config``, ``serve`` and ``serve_fast_until_signal`` stay importable from here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import orjson

from wshub.cli_clients import add_publish_command, add_tail_command, complain
from wshub.cli_serve import (
    add_config_arguments,
    add_serve_command,
    build_serve_config,
    checked_config,
    hypercorn_config,
    serve,
    serve_fast_until_signal,
)
from wshub.core.config import ConfigError, HubConfig
from wshub.core.protocol import is_valid_client_id
from wshub.hub.auth import mint_dev_token

__all__ = [
    "SUBCOMMANDS",
    "add_config_arguments",
    "build_serve_config",
    "hypercorn_config",
    "main",
    "serve",
    "serve_fast_until_signal",
]

_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


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
        config = checked_config(args)
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
