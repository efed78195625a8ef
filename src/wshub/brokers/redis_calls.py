"""One node's calls to Redis: key names, the Lua scripts, the timeout and the breaker.

Theory of operation: every call goes through ``RedisCalls.call``, which admits it through the
hub's ``broker`` circuit breaker, bounds it by ``broker.timeout`` and counts its outcome by
operation (``ok``, ``error``, ``timeout``, ``rejected``); whatever goes wrong becomes
``BrokerUnavailable``, the one failure the rest of wshub knows. Key names follow ``lua.py``:
every key of a stream carries the hash tag ``{stream}``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from wshub.brokers.base import BrokerUnavailable
from wshub.brokers.lua import DUPLICATE, PUBLISH, READ
from wshub.core.breaker_registry import BreakerRegistry
from wshub.core.breaker_state import CircuitOpenError
from wshub.core.events import Position
from wshub.core.history import StoredMessage, new_epoch

if TYPE_CHECKING:
    import coredis

__all__ = ["BREAKER", "HistoryRead", "RedisCalls", "describe", "stored_at"]

BREAKER = "broker"  # the name of the hub's circuit breaker around Redis
T = TypeVar("T")


@attrs.frozen
class HistoryRead:
    """A history read: where the stream stands and the entries the read returned."""

    epoch: str
    top: int
    """The newest offset."""
    first: int | None
    """The oldest offset held; None when the history is empty."""
    messages: list[StoredMessage]


@attrs.define(eq=False)
class RedisCalls:
    """Key names and guarded calls for one node; ``bind`` gives it its coredis client."""

    prefix: str
    timeout: float
    breakers: BreakerRegistry
    history_size: int
    history_ttl_ms: int
    meta_ttl_ms: int
    clock: Callable[[], float] = trio.current_time
    client: coredis.Redis[bytes] | None = None
    calls: dict[tuple[str, str], int] = attrs.field(factory=dict)
    """Calls to Redis by (operation, outcome): ok, error, timeout, rejected."""
    _scripts: dict[str, Any] = attrs.field(factory=dict)

    def bind(self, client: coredis.Redis[bytes] | None) -> None:
        """Use ``client`` (None: no longer connected) and register the scripts with it."""
        self.client = client
        self._scripts.clear()
        if client is not None:
            for name, script in (("publish", PUBLISH), ("read", READ), ("duplicate", DUPLICATE)):
                self._scripts[name] = client.register_script(script)

    # ------------------------------------------------------------------ names

    def key(self, stream: str, kind: str) -> str:
        """``prefix:{stream}:kind``."""
        return f"{self.prefix}:{{{stream}}}:{kind}"

    def channel(self, stream: str) -> str:
        """The pub/sub channel of ``stream``: ``prefix:{stream}``."""
        return f"{self.prefix}:{{{stream}}}"

    def stream_of(self, channel: bytes) -> str:
        """The stream whose channel is ``channel``."""
        return channel.decode()[len(self.prefix) + 2 : -1]

    def dedup_key(self, stream: str, publisher: str, mid: str) -> str:
        """The de-duplication record of ``mid`` by ``publisher`` (the length splits one way)."""
        return self.key(stream, f"d:{len(publisher)}:{publisher}:{mid}")

    # ------------------------------------------------------------------ calls

    async def call(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """One Redis call under the breaker and the timeout; failures are BrokerUnavailable."""
        breaker = self.breakers.get(BREAKER)
        try:
            async with breaker:
                with trio.fail_after(self.timeout):
                    result = await call()
        except CircuitOpenError as error:
            self.count(op, "rejected")
            raise BrokerUnavailable(
                "the broker is unavailable (circuit open); retry later", error.retry_after
            ) from None
        except trio.TooSlowError:
            self.count(op, "timeout")
            raise BrokerUnavailable(f"redis did not answer {op} within {self.timeout:g}s") from None
        except Exception as error:
            self.count(op, "error")
            raise BrokerUnavailable(f"redis failed on {op}: {describe(error)}") from None
        self.count(op, "ok")
        return result

    def count(self, op: str, outcome: str) -> None:
        """Count one call of ``op`` that ended with ``outcome``."""
        key = (op, outcome)
        self.calls[key] = self.calls.get(key, 0) + 1

    def sha(self, name: str) -> str:
        """The SHA1 of the script called ``name`` (for EVALSHA in pipelines)."""
        sha: str = self._scripts[name].sha
        return sha

    async def script(self, op: str, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run the script called ``name`` as operation ``op``. Raises BrokerUnavailable."""
        script = self._scripts.get(name)
        if script is None:
            raise BrokerUnavailable("the broker is not running")

        async def run() -> Any:
            return await script(keys=keys, args=args)

        return await self.call(op, run)

    async def read(self, stream: str, position: Position | None, op: str = "read") -> HistoryRead:
        """Where ``stream`` stands, and its entries from where ``position`` resumes.

        Creates the stream's epoch when Redis has none. Raises BrokerUnavailable.
        """
        epoch = "" if position is None or position.epoch is None else position.epoch
        seen = -1 if position is None else max(position.offset, 0)
        keys = [self.key(stream, "m"), self.key(stream, "h")]
        args = [
            epoch,
            seen,
            new_epoch(),
            self.history_ttl_ms,
            self.meta_ttl_ms,
            self.history_size,
        ]
        read_epoch, top, first, entries = await self.script(op, "read", keys, args)
        now, wall = self.clock(), time.time()
        messages = [_entry_message(stream, entry, now, wall) for entry in entries]
        return HistoryRead(
            read_epoch.decode(), int(top), None if first < 0 else int(first), messages
        )


def _entry_message(stream: str, entry: Any, now: float, wall: float) -> StoredMessage:
    identifier, fields = entry
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    ts = int(values[b"t"])
    return StoredMessage(
        stream,
        int(identifier.split(b"-", 1)[0]),
        values[b"i"].decode(),
        None,
        ts,
        values[b"f"].decode(),
        stored_at(ts, now, wall),
    )


def stored_at(ts_ms: int, now: float, wall: float) -> float:
    """The local clock's reading when Redis stored a message at ``ts_ms`` (never ahead)."""
    return now - max(0.0, wall - ts_ms / 1000)


def describe(error: BaseException) -> str:
    """A one-line account of ``error`` (through single-exception groups)."""
    if isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        return describe(error.exceptions[0])
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
