"""``wshub tail`` and ``wshub publish``: the commands that act as a client of a running hub.

Each adds its parser and sets ``run`` (``args -> exit code``), as the commands in
``wshub.cli`` do; ``wshub.cli.SUBCOMMANDS`` lists them all.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import TypeAlias

import orjson
import trio

from wshub.core.protocol import is_valid_client_id, stream_kind

__all__ = ["add_publish_command", "add_tail_command"]

_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _token_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--token",
        help=f"{what}: a JWT (e.g. from `wshub token`) or the admin key",
    )


def _run_tail(args: argparse.Namespace) -> int:
    from wshub.client.client import ClientError
    from wshub.tools import tail

    if not is_valid_client_id(args.client_id):
        print(f"wshub tail: invalid --client-id {args.client_id!r}", file=sys.stderr)
        return 2
    for stream in args.stream:
        if stream_kind(stream) is None:
            print(f"wshub tail: invalid --stream {stream!r}", file=sys.stderr)
            return 2
    if args.from_offset is not None and args.from_offset < 0:
        print("wshub tail: --from must be an offset >= 0", file=sys.stderr)
        return 2
    try:
        trio.run(
            partial(
                tail,
                args.url,
                args.client_id,
                args.stream,
                from_offset=args.from_offset,
                max_attempts=args.max_attempts,
                token=args.token,
            )
        )
    except KeyboardInterrupt:
        return 0
    except ClientError as error:
        print(f"wshub tail: {error}", file=sys.stderr)
        return 1
    return 0


def add_tail_command(subparsers: _Subparsers) -> None:
    """``wshub tail URL --client-id ID --stream S [--from OFFSET]``."""
    parser = subparsers.add_parser(
        "tail",
        help="print a stream's messages as JSON lines, resuming through drops",
        description="Connect to the hub's WebSocket URL and print every message (and every "
        "gap the hub reports) as one JSON object per line until interrupted.",
    )
    parser.add_argument("url", metavar="URL", help="e.g. ws://127.0.0.1:8765/ws")
    parser.add_argument("--client-id", required=True, help="the client id to connect as")
    parser.add_argument(
        "--stream", action="append", required=True, help="a stream to follow (repeatable)"
    )
    parser.add_argument(
        "--from",
        dest="from_offset",
        type=int,
        metavar="OFFSET",
        help="start after this offset (0: all the history still holds); default: new ones",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=8,
        help="give up after this many failed connection attempts in a row (default 8)",
    )
    _token_option(parser, "the hello's credential")
    parser.set_defaults(run=_run_tail)


def _run_publish(args: argparse.Namespace) -> int:
    from wshub.tools import PublishHTTPError, publish_http

    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError as error:
        print(f"wshub publish: DATA is not valid JSON: {error}", file=sys.stderr)
        return 2
    if stream_kind(args.stream) not in ("topic", "personal"):
        print(f"wshub publish: invalid STREAM {args.stream!r}", file=sys.stderr)
        return 2
    base_url = args.url.rstrip("/")
    credential = args.token if args.token is not None else args.api_key
    try:
        answer = trio.run(
            partial(publish_http, base_url, args.stream, data, id=args.id, api_key=credential)
        )
    except PublishHTTPError as error:
        print(f"wshub publish: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(answer).decode() + "\n")
    return 0


def add_publish_command(subparsers: _Subparsers) -> None:
    """``wshub publish URL STREAM DATA [--id K] [--api-key KEY | --token JWT]``."""
    parser = subparsers.add_parser(
        "publish",
        help="publish one message through POST /api/publish",
        description="Publish DATA (JSON) to STREAM through the hub's HTTP API and print the "
        "answer (stream, offset, id, duplicate). Exit 1 when the hub refuses or is unreachable.",
    )
    parser.add_argument("url", metavar="URL", help="the hub's base URL, e.g. http://127.0.0.1:8765")
    parser.add_argument("stream", metavar="STREAM")
    parser.add_argument("data", metavar="DATA", help="the message, as JSON")
    parser.add_argument("--id", help="idempotency key (default: the hash of stream and data)")
    credentials = parser.add_mutually_exclusive_group()
    credentials.add_argument(
        "--api-key",
        default=os.environ.get("WSHUB_ADMIN__API_KEY"),
        help="the hub's admin.api_key (default: $WSHUB_ADMIN__API_KEY, the server's variable)",
    )
    credentials.add_argument(
        "--token", help="a JWT whose rights allow publishing to STREAM (with [auth])"
    )
    parser.set_defaults(run=_run_publish)
