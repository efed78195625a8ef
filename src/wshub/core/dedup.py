"""Idempotent publishing: stable message ids and a time-windowed de-duplication table.

Pure state: no I/O, time only through the injected ``clock`` (``trio.current_time`` by default,
so ``trio.testing.MockClock`` drives it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import attrs
import orjson
import trio
import xxhash

__all__ = [
    "DedupStatistics",
    "Deduplicator",
    "IdConflict",
    "canonical_json",
    "message_id",
    "scoped_key",
]

_CANONICAL_OPTIONS = orjson.OPT_SORT_KEYS


class IdConflict(Exception):
    """A message id was reused with other content within the de-duplication window.

    The same publisher published ``id`` to ``stream`` before (at ``offset``) with different
    data: a retry never changes its content, so this is a bug or a clash of ids, refused
    rather than silently answered as a duplicate. The WebSocket answer is the error code
    ``conflict``; HTTP answers 409; ``Hub.publish`` raises this exception.
    """

    def __init__(self, stream: str, id: str, offset: int) -> None:
        super().__init__(
            f"message id {id!r} was already published to {stream!r} (offset {offset}) "
            "with different content within the de-duplication window"
        )
        self.stream = stream
        self.id = id
        self.offset = offset


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON: keys sorted, no whitespace, raw UTF-8.

    Two values that are equal as JSON (same keys and items, whatever the insertion order of
    their dicts) encode to the same bytes. Edge cases, all inherited from orjson:

    - Non-ASCII text stays raw UTF-8 (``"é"`` is two bytes, never ``\\u00e9``).
    - Numbers keep their Python type: ``1`` encodes as ``1`` and ``1.0`` as ``1.0``, so they
      give different ids. ``NaN`` and the infinities (which JSON cannot hold, and which never
      come out of a JSON parser) encode as ``null``.
    - Tuples encode like lists.

    Raises:
        TypeError: ``value`` holds something JSON cannot represent: a dict key that is not a
            ``str``, an integer outside the 64-bit range (below ``-2**63`` or above
            ``2**64 - 1``), or an object of an unsupported type.
    """
    try:
        return orjson.dumps(value, option=_CANONICAL_OPTIONS)
    except orjson.JSONEncodeError as error:
        raise TypeError(f"cannot encode as canonical JSON: {error}") from error


def message_id(stream: str, data: Any, id: str | None = None) -> str:
    """Return the message id of a publish: ``id`` when given, else a content hash.

    The content hash is the 64-bit XXH3 of ``canonical_json([stream, data])`` as 16 lowercase
    hex digits. It depends only on the stream and the data, so it is the same in every process
    and across restarts (no per-process seed, unlike ``hash()``).

    Raises:
        TypeError: ``data`` cannot be encoded as canonical JSON (see ``canonical_json``).
    """
    if id is not None:
        return id
    return format(xxhash.xxh3_64_intdigest(canonical_json([stream, data])), "016x")


def scoped_key(stream: str, publisher: str, message_id: str) -> tuple[str, str, str]:
    """Build the de-duplication key of a publish; the one way keys are made.

    Keys are scoped by stream and by publisher (the server API is one publisher, each client id
    another), so a client cannot suppress another publisher's messages by guessing their ids.
    """
    return (stream, publisher, message_id)


@attrs.frozen
class DedupStatistics:
    """A snapshot of a ``Deduplicator``'s table and counters."""

    entries: int
    """Keys held, including expired ones that ``expire()`` has not removed yet."""
    hits: int
    """Look-ups (``is_duplicate`` or ``get``) that found a key within the window."""
    misses: int
    """Look-ups that found no key within the window."""
    expired: int
    """Keys removed by ``expire()`` (or on insertion when full) after their window ended."""
    evicted_before_expiry: int
    """Keys dropped while still within their window because the table was full."""
    window: float
    max_entries: int


@attrs.define
class Deduplicator:
    """Remembers keys for ``window`` seconds, holding at most ``max_entries`` of them.

    A key recorded at time ``t`` is known while ``now < t + window``; from ``t + window`` on it
    is forgotten. Recording a key that is still known replaces its value but keeps its time:
    the window runs from the first record. Entries sit in an insertion-ordered dict, and since
    the clock never goes backwards insertion order is expiry order, so ``expire()`` walks only
    the expired prefix and a full table evicts its oldest entry, both in O(1) per entry.

    The hub's keys come from ``scoped_key``; any hashable works.
    """

    window: float = attrs.field(
        default=300.0,
        validator=[attrs.validators.instance_of((int, float)), attrs.validators.gt(0.0)],
        on_setattr=attrs.setters.frozen,
    )
    max_entries: int = attrs.field(
        default=100_000,
        validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)],
        on_setattr=attrs.setters.frozen,
    )
    clock: Callable[[], float] = attrs.field(
        default=trio.current_time, on_setattr=attrs.setters.frozen
    )
    # key -> (deadline, value); deadline = time recorded + window. OrderedDict rather than
    # dict: popping from the front of a plain dict leaves holes that every later
    # ``next(iter(d))`` must skip again, which turns FIFO eviction quadratic.
    _entries: OrderedDict[Hashable, tuple[float, object]] = attrs.field(
        init=False, factory=OrderedDict
    )
    _hits: int = attrs.field(init=False, default=0)
    _misses: int = attrs.field(init=False, default=0)
    _expired: int = attrs.field(init=False, default=0)
    _evicted_before_expiry: int = attrs.field(init=False, default=0)

    def is_duplicate(self, key: Hashable) -> bool:
        """Return True if ``key`` was recorded within the window; otherwise record it.

        A new (or expired) key is recorded with the value ``True`` and False is returned.
        """
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and now < entry[0]:
            self._hits += 1
            return True
        self._misses += 1
        self._insert(key, True, now)
        return False

    def get(self, key: Hashable) -> object | None:
        """Return the value recorded for ``key`` if it is within the window, else None."""
        entry = self._entries.get(key)
        if entry is not None and self.clock() < entry[0]:
            self._hits += 1
            return entry[1]
        self._misses += 1
        return None

    def record(self, key: Hashable, value: object = True) -> None:
        """Remember ``key`` with ``value`` (the hub stores the original publish result).

        A key still within its window gets the new value and keeps its recorded time; a new or
        expired key is recorded now, at the newest end. Storing ``None`` makes ``get`` unable
        to tell the key from a missing one, so don't.
        """
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and now < entry[0]:
            self._entries[key] = (entry[0], value)
        else:
            self._insert(key, value, now)

    def expire(self) -> int:
        """Remove the keys whose window has ended and return how many were removed.

        Costs O(number removed): it walks from the oldest entry and stops at the first one
        still within its window.
        """
        now = self.clock()
        entries = self._entries
        removed = 0
        while entries:
            key, entry = entries.popitem(last=False)
            if now < entry[0]:
                entries[key] = entry
                entries.move_to_end(key, last=False)
                break
            removed += 1
        self._expired += removed
        return removed

    def statistics(self) -> DedupStatistics:
        """Return the current size, counters and settings."""
        return DedupStatistics(
            entries=len(self._entries),
            hits=self._hits,
            misses=self._misses,
            expired=self._expired,
            evicted_before_expiry=self._evicted_before_expiry,
            window=self.window,
            max_entries=self.max_entries,
        )

    def __len__(self) -> int:
        """Keys held, including expired ones not yet removed by ``expire()``."""
        return len(self._entries)

    def _insert(self, key: Hashable, value: object, now: float) -> None:
        entries = self._entries
        # An expired key is re-inserted at the newest end, keeping the table in deadline order.
        entries.pop(key, None)
        if len(entries) >= self.max_entries:
            _, (deadline, _) = entries.popitem(last=False)
            if now < deadline:
                self._evicted_before_expiry += 1
            else:
                self._expired += 1
        entries[key] = (now + self.window, value)
