"""``wshub tail`` and ``wshub publish``: the commands that act as a client of a running hub.

Each adds its parser and sets ``run`` (``args -> exit code``), as the commands in
``wshub.cli`` do; ``wshub.cli.SUBCOMMANDS`` lists them all. Both check their input before they
connect, and report a problem as every ``wshub`` command does (``complain``): one line, what is
wrong and what to do, exit 2 for bad input, including what the hub refuses as given (a missing
or wrong credential, HTTP 4xx, close 1008: fix the command), and 1 when the hub cannot be
reached or cannot serve it now (HTTP 5xx: retrying may help).
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import TypeAlias
from urllib.parse import urlsplit

import orjson
import trio

from wshub.client.client import ClientError, ClientRejected, SubscribeError
from wshub.core.protocol import is_valid_client_id, stream_kind
from wshub.logs import add_log_arguments, configure_logging
from wshub.tools import PublishHTTPError, publish_http, tail

__all__ = ["API_KEY_VARIABLE", "add_publish_command", "add_tail_command", "complain"]

#: Where ``wshub publish`` finds the key by default: the variable the hub reads it from.
API_KEY_VARIABLE = "WSHUB_ADMIN__API_KEY"

_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def complain(command: str, message: str, status: int = 2) -> int:
    """Print ``wshub COMMAND: message`` on stderr and return ``status`` (2: bad input)."""
    print(f"wshub {command}: {message}", file=sys.stderr)
    return status


def _token_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--token",
        help=f"{what}: a JWT (e.g. from `wshub token`) or the admin key",
    )


def _url_problem(url: str, schemes: tuple[str, ...], example: str) -> str | None:
    """Why ``url`` cannot be used (a sentence that says what to give instead), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError as error:
        return f"URL {url!r} is not valid ({error}); give {example}"
    if parts.scheme not in schemes or not parts.hostname:
        hint = f"give {example}"
        if schemes[0] == "ws" and parts.scheme in ("http", "https") and parts.hostname:
            suggestion = parts._replace(scheme="ws" if parts.scheme == "http" else "wss")
            if suggestion.path in ("", "/"):
                suggestion = suggestion._replace(path="/ws")
            hint = f"did you mean {suggestion.geturl()}?"
        elif schemes[0] == "http" and parts.scheme in ("ws", "wss") and parts.hostname:
            base = parts._replace(scheme="http" if parts.scheme == "ws" else "https", path="")
            hint = f"give the hub's HTTP address, {base.geturl()}, not its WebSocket"
        return f"URL {url!r} is not a {'/'.join(schemes[:2])} URL; {hint}"
    return None


def _run_tail(args: argparse.Namespace) -> int:
    problem = _url_problem(args.url, ("ws", "wss"), "the hub's WebSocket, ws://HOST:PORT/ws")
    if problem is not None:
        return complain("tail", problem)
    if not is_valid_client_id(args.client_id):
        return complain(
            "tail", f"invalid --client-id {args.client_id!r}: use 1-128 of A-Z a-z 0-9 _ . : -"
        )
    for stream in args.stream:
        if stream_kind(stream) is None:
            return complain("tail", f"invalid --stream {stream!r}: see docs/protocol.md, Streams")
    if args.from_offset is not None and args.from_offset < 0:
        return complain("tail", "--from must be an offset >= 0 (0: all the history holds)")
    if args.max_attempts < 1:
        return complain("tail", f"--max-attempts must be >= 1, got {args.max_attempts}")
    configure_logging(args.log_level, args.log_format)
    follow = partial(
        tail,
        args.url,
        args.client_id,
        args.stream,
        from_offset=args.from_offset,
        max_attempts=args.max_attempts,
        token=args.token,
    )
    try:
        trio.run(follow)
    except KeyboardInterrupt:
        return 0
    except ValueError as error:  # what open_client refuses before connecting
        return complain("tail", str(error))
    except ClientRejected as error:  # the hub answered: the credential or client id is refused
        return complain("tail", f"{error}; {_TAIL_CREDENTIAL_HINT}")
    except SubscribeError as error:
        if error.code == "forbidden":
            return complain("tail", f"{error}; {_TAIL_CREDENTIAL_HINT}")
        return complain("tail", f"{error}; retry later", 1)
    except ClientError as error:
        return complain("tail", f"{error}; is a hub serving {args.url}? (wshub serve)", 1)
    return 0


_TAIL_CREDENTIAL_HINT = (
    "pass --token with a credential the hub accepts for this --client-id and these streams: "
    "a JWT (from your backend, or `wshub token` in development) or the admin key"
)


def add_tail_command(subparsers: _Subparsers) -> None:
    """``wshub tail URL --client-id ID --stream S [--from OFFSET]``."""
    parser = subparsers.add_parser(
        "tail",
        help="print a stream's messages as JSON lines, resuming through drops",
        description="Connect to the hub's WebSocket URL and print every message (and every "
        "gap the hub reports) as one JSON object per line until interrupted. Exit 2 for bad "
        "input or a credential the hub refuses, 1 when the hub cannot be reached.",
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
    add_log_arguments(parser, default_level="warning")  # stdout is the output; stderr stays quiet
    parser.set_defaults(run=_run_tail)


#: What to do about a refused publish, by HTTP status.
_PUBLISH_HINTS = {
    401: f"pass the hub's admin.api_key with --api-key or in {API_KEY_VARIABLE} (or --token)",
    403: f"the key is not the hub's admin.api_key (check --api-key or {API_KEY_VARIABLE}), or "
    "the token may not publish there",
    409: "give new data a new id (or none: the hub then uses the content id)",
    413: "the message is larger than the hub's limits.max_message_bytes",
}


def _run_publish(args: argparse.Namespace) -> int:
    problem = _url_problem(args.url, ("http", "https"), "the hub's address, http://HOST:PORT")
    if problem is not None:
        return complain("publish", problem)
    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError as error:
        return complain(
            "publish", f"DATA is not valid JSON ({error}); quote it, e.g. '{{\"n\": 1}}'"
        )
    if stream_kind(args.stream) not in ("topic", "personal"):
        return complain("publish", f"invalid STREAM {args.stream!r}: give a topic or @client_id")
    credential = args.token if args.token is not None else args.api_key
    send = partial(
        publish_http, args.url.rstrip("/"), args.stream, data, id=args.id, api_key=credential
    )
    try:
        answer = trio.run(send)
    except PublishHTTPError as error:
        hint = _PUBLISH_HINTS.get(error.status or 0)
        if error.status is None:
            hint = "is a hub serving there? (wshub serve)"
        # 4xx: the hub refuses what the command gave (fix it); 5xx or no answer: retry later.
        status = 2 if error.status is not None and 400 <= error.status < 500 else 1
        return complain("publish", f"{error}; {hint}" if hint else str(error), status)
    sys.stdout.write(orjson.dumps(answer).decode() + "\n")
    return 0


def add_publish_command(subparsers: _Subparsers) -> None:
    """``wshub publish URL STREAM DATA [--id K] [--api-key KEY | --token JWT]``."""
    parser = subparsers.add_parser(
        "publish",
        help="publish one message through POST /api/publish",
        description="Publish DATA (JSON) to STREAM through the hub's HTTP API and print the "
        "answer (stream, offset, id, duplicate). Exit 2 for bad input or what the hub refuses "
        "as given (HTTP 4xx), 1 when the hub cannot be reached or is unavailable (5xx).",
    )
    parser.add_argument("url", metavar="URL", help="the hub's base URL, e.g. http://127.0.0.1:8765")
    parser.add_argument("stream", metavar="STREAM")
    parser.add_argument("data", metavar="DATA", help="the message, as JSON")
    parser.add_argument(
        "--id", help="idempotency key (default: the hash of stream and data, as the hub's)"
    )
    credentials = parser.add_mutually_exclusive_group()
    credentials.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"the hub's admin.api_key (default: ${API_KEY_VARIABLE}, as the hub reads it)",
    )
    credentials.add_argument(
        "--token", help="a JWT whose rights allow publishing to STREAM (with [auth])"
    )
    parser.set_defaults(run=_run_publish)
