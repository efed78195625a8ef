"""The client's credential: a fixed token, or a provider asked before every connection and
before the token expires.

Theory of operation:
- A token provider (a function or an async function returning the token) is called before
  every connection attempt, so a reconnect always carries a fresh token; a fixed string is sent
  as it is, every time.
- A token that is a JWT with an ``exp`` claim is refreshed on the open connection: at
  ``REFRESH_AT`` (80 %) of its lifetime, counted from when it was obtained, the provider is
  asked again and the new token goes out in a ``refresh`` frame; the hub's ``refreshed``
  answer gives the next expiry, and so on. The claim is read without verifying the signature:
  the hub verifies, the client only needs to know when to come back. The lifetime is ``exp -
  wall_clock()``; the due time is on the trio clock, so tests with a wall clock that follows
  the trio clock see refreshes at exact virtual times.
- A provider that fails before a connection makes that attempt fail (``SessionOver``: retried
  with backoff); one that fails during a refresh is asked again halfway to the expiry. If the
  expiry passes anyway, the hub closes with 4005 and the client reconnects at once, asking the
  provider for a fresh token.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import jwt
import trio

from wshub.client.reconnect import SessionOver
from wshub.core import protocol

__all__ = [
    "MIN_REFRESH_INTERVAL",
    "REFRESH_AT",
    "Credentials",
    "TokenProvider",
    "unverified_expiry",
]

logger = logging.getLogger("wshub.client")

#: The fraction of a token's lifetime after which the client refreshes it.
REFRESH_AT = 0.8
#: Seconds: refreshes never come closer together, so that a client whose clock runs far ahead
#: of the token issuer's (every token looks expired) cannot flood the hub with them.
MIN_REFRESH_INTERVAL = 1.0

#: What ``open_client(token=...)`` also takes: a function or an async function returning the
#: token to send (None for none).
TokenProvider: TypeAlias = Callable[[], "str | Awaitable[str | None] | None"]


def unverified_expiry(token: str | None) -> float | None:
    """The ``exp`` claim of ``token`` when it is a JWT that has a numeric one, else None.

    The signature is not checked (the hub does that); this only says when to refresh.
    """
    if token is None:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None  # not a JWT: an API key, or an opaque token a hook reads
    expires = claims.get("exp")
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return None
    try:
        seconds = float(expires)
    except OverflowError:  # a JSON integer past a float's range: no usable expiry
        return None
    return seconds if math.isfinite(seconds) else None


class Credentials:
    """The token a client connects with, and when to refresh it (see the module notes)."""

    def __init__(
        self,
        token: str | TokenProvider | None,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._fixed = token if not callable(token) else None
        self._provider = token if callable(token) else None
        self.wall_clock = wall_clock
        self.expires_at: float | None = None  # trio time at which the current token expires
        self.due: float | None = None  # trio time of the next refresh
        self.refreshes = 0  # refreshed answers received
        self._answered = trio.Event()

    async def obtain(self) -> str | None:
        """The token for a new connection (from the provider when there is one).

        Raises SessionOver when the provider fails: that connection attempt fails.
        """
        if self._provider is None:
            await trio.lowlevel.checkpoint()
            self._note(unverified_expiry(self._fixed))
            return self._fixed
        token = await self._ask()
        self._note(unverified_expiry(token))
        return token

    def on_refreshed(self, event: protocol.Refreshed) -> None:
        """The hub took the new token: it expires at ``event.expires``."""
        self.refreshes += 1
        self._note(event.expires)
        self._answered.set()

    async def keep_fresh(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Refresh the token before it expires, for as long as the connection lasts."""
        while self._provider is not None and self.due is not None:
            await trio.sleep_until(self.due)
            try:
                token = await self._ask()
            except SessionOver as error:
                logger.warning("%s; trying again before the token expires", error)
                self._retry_later()
                continue
            if token is None:
                return
            self._answered = trio.Event()
            due = self.due
            await send(protocol.encode_refresh(token))
            wait = math.inf if self.expires_at is None else self.expires_at - trio.current_time()
            with trio.move_on_after(max(wait, 0.0)):
                await self._answered.wait()
            if self.due == due:  # no answer before the expiry: the hub closes with 4005
                return

    async def _ask(self) -> str | None:
        assert self._provider is not None
        try:
            answer: Any = self._provider()
            if inspect.isawaitable(answer):
                answer = await answer
            else:
                await trio.lowlevel.checkpoint()
        except Exception as error:
            raise SessionOver(f"the token provider failed: {error!r}") from error
        if answer is not None and not isinstance(answer, str):
            raise SessionOver(f"the token provider returned {type(answer).__name__}, not str")
        return answer

    def _note(self, expires: float | None) -> None:
        if expires is None:
            self.expires_at = self.due = None
            return
        now = trio.current_time()
        lifetime = expires - self.wall_clock()
        self.expires_at = now + lifetime
        self.due = now + max(lifetime * REFRESH_AT, MIN_REFRESH_INTERVAL)

    def _retry_later(self) -> None:
        now = trio.current_time()
        left = math.inf if self.expires_at is None else self.expires_at - now
        self.due = now + left / 2 if left > MIN_REFRESH_INTERVAL else None
