"""How a WebSocket connection ends, in wshub's own terms, whichever library carried it.

The servers (trio-websocket, hypercorn, the in-memory transport) and the Trio client all meet
the same few "the peer is gone" exceptions; they are translated here, in one table, into
``TransportClosed`` so neither the hub's connection code nor the client ever sees a library's
exception type. No I/O happens here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import TracebackType

import trio

__all__ = ["TransportClosed", "translate_errors"]


class TransportClosed(Exception):
    """The WebSocket is closed; ``code`` is the close code seen (1006 when the link broke)."""

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


@functools.cache
def _closed_errors() -> Sequence[tuple[type[BaseException], int]]:
    # The mapping table: which library exception means "the peer is gone", and the close code
    # to report when the exception itself carries none. Imported lazily so that a user of
    # wshub.testing need not import the servers' libraries.
    from trio_websocket import ConnectionClosed

    return (
        (ConnectionClosed, 1006),
        (trio.BrokenResourceError, 1006),
        (trio.ClosedResourceError, 1006),
        (trio.EndOfChannel, 1000),
        (ConnectionResetError, 1006),
        (BrokenPipeError, 1006),
    )


class translate_errors:  # used like a function: ``with translate_errors():``
    """Turn the WebSocket libraries' "connection gone" exceptions into TransportClosed.

    A plain (sync) context manager: it wraps awaits just as well and costs less on the
    send path than an async one.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None or isinstance(error, TransportClosed):
            return
        for closed_kind, default_code in _closed_errors():
            if isinstance(error, closed_kind):
                reason = getattr(error, "reason", None)  # trio-websocket's CloseReason
                code = getattr(reason, "code", None) or default_code
                text = str(getattr(reason, "reason", "") or "")
                raise TransportClosed(code, text) from error
