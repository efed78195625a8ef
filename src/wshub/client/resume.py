"""Positions, gaps and de-duplication for a resuming client (sans-IO), and position stores.

Theory of operation: a client's position in a stream is the last offset it has handed to the
application, with that offset's epoch. ``StreamTracker`` turns what the hub says into what the
application may see:
- A stream status (``welcome`` or ``subscribed``) is compared with the position: same epoch and
  nothing trimmed means nothing was missed; otherwise the tracker answers with ``Gap`` events that
  say exactly which offsets are gone, to be delivered before the replay that follows.
- A message at or below the position of the same epoch was already delivered: it is dropped.
  A message beyond ``position + 1`` (the hub promises none while connected) is preceded by a Gap.
- The tracker changes a position only through ``advance`` (called once the event is handed
  over), so an event that was never handed over is asked for again on the next connection.
Nothing here does I/O except the JSON-file store, which reads its file once and writes it on
every save.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final, Protocol

import attrs
import orjson

from wshub.core import protocol
from wshub.core.protocol import Position, StreamStatus

__all__ = [
    "ANY_EPOCH",
    "Gap",
    "JsonFilePositionStore",
    "MemoryPositionStore",
    "Message",
    "Position",
    "PositionStore",
    "StreamTracker",
]

#: The epoch of a position known only by its offset (``tail --from-offset``): it is taken to be
#: the stream's current epoch, whatever that is, so offsets up to it are skipped without a gap.
ANY_EPOCH: Final = "*"


@attrs.frozen
class Message:
    """A message handed to the application, once, in offset order within its stream.

    ``ts`` is Unix milliseconds at publish; ``epoch`` is the stream's epoch the offset belongs to.
    """

    stream: str
    offset: int
    id: str
    data: Any
    ts: int
    epoch: str

    @property
    def position(self) -> Position:
        """The position of a client that has seen this message."""
        return Position(self.offset, self.epoch)


@attrs.frozen
class Gap:
    """Messages of ``stream`` that the application will never receive.

    When ``epoch_changed`` is false, offsets ``missing_from`` to ``missing_to`` (inclusive) of
    ``new_epoch`` (the same as ``old_epoch``) are gone: trimmed from the history by its size or
    age before the client came back.

    When ``epoch_changed`` is true, the stream's history was lost (a hub restart with in-memory
    history, say): every message of ``old_epoch`` after offset ``missing_from - 1`` is gone and
    ``missing_to`` is None, because nobody knows how many there were. Delivery goes on in
    ``new_epoch`` from its oldest retained offset; if that is not 1, a second Gap (with
    ``epoch_changed`` false) names the offsets of ``new_epoch`` that are gone too.
    """

    stream: str
    missing_from: int
    missing_to: int | None
    epoch_changed: bool
    old_epoch: str
    new_epoch: str

    @property
    def position(self) -> Position:
        """The position of a client that has taken this gap into account."""
        if self.missing_to is None:
            return Position(0, self.new_epoch)
        return Position(self.missing_to, self.new_epoch)


@attrs.define
class StreamTracker:
    """Positions per stream, and the gap and duplicate decisions that follow from them."""

    positions: dict[str, Position] = attrs.field(factory=dict)
    # The epoch of each stream on the current connection, from its welcome or subscribed status.
    _epochs: dict[str, str] = attrs.field(factory=dict, init=False)

    def begin_connection(self) -> None:
        """Forget the previous connection's epochs: a new connection starts with a new welcome."""
        self._epochs.clear()

    def on_status(self, stream: str, status: StreamStatus) -> list[Gap]:
        """Take a stream status into account; return the gaps to deliver before its replay.

        The position changes here only when there is no gap (a first subscription starts at
        the stream's newest offset); each returned gap moves it when passed to ``advance``.
        """
        self._epochs[stream] = status.epoch
        held = self.positions.get(stream)
        if held is None:
            self.positions[stream] = Position(status.offset, status.epoch)
            return []
        gaps: list[Gap] = []
        seen = held.offset
        same_numbering = held.epoch == status.epoch and seen <= status.offset
        # A position without an epoch ("everything history holds") or with ANY_EPOCH is read
        # in the stream's current epoch, whatever it is: no epoch change to report.
        if held.epoch is not None and held.epoch != ANY_EPOCH and not same_numbering:
            gaps.append(Gap(stream, seen + 1, None, True, held.epoch, status.epoch))
            seen = 0
        oldest_held = status.first if status.first is not None else status.offset + 1
        if oldest_held > seen + 1:
            gaps.append(Gap(stream, seen + 1, oldest_held - 1, False, status.epoch, status.epoch))
        elif not gaps:
            self.positions[stream] = Position(seen, status.epoch)
        return gaps

    def leave(self, stream: str) -> None:
        """Ignore the messages of ``stream`` until its next status (it was unsubscribed).

        Messages still in flight from before the unsubscribe must not be delivered after a
        new subscribe: their predecessors were dropped, and the replay will bring them all.
        """
        self._epochs.pop(stream, None)

    def on_message(self, message: protocol.Message) -> list[Gap | Message] | None:
        """What to deliver for ``message``: nothing for a duplicate, else the message.

        A message that skips offsets (a broken promise of the hub) comes after a Gap.
        None means the stream has no status on this connection: the message is ignored.
        """
        epoch = self._epochs.get(message.stream)
        held = self.positions.get(message.stream)
        if epoch is None or held is None:
            return None
        if message.offset <= held.offset:
            return []
        delivered = Message(
            message.stream, message.offset, message.id, message.data, message.ts, epoch
        )
        if message.offset > held.offset + 1:
            gap = Gap(message.stream, held.offset + 1, message.offset - 1, False, epoch, epoch)
            return [gap, delivered]
        return [delivered]

    def advance(self, event: Gap | Message) -> None:
        """Record that ``event`` was handed to the application."""
        self.positions[event.stream] = event.position


# --- position stores ---------------------------------------------------------------------------


class PositionStore(Protocol):
    """Where the application keeps its positions, so that a restarted process resumes too.

    ``save`` is called from the event loop for every message the application has finished with
    (when it asks for the next one), so it must be quick and must not block for long.
    """

    def load(self) -> dict[str, Position]:
        """Every stored position, by stream."""
        ...

    def save(self, stream: str, position: Position) -> None:
        """Store ``position`` as the position in ``stream``."""
        ...


@attrs.define
class MemoryPositionStore:
    """Positions in a dict: they last as long as the process (the default store)."""

    positions: dict[str, Position] = attrs.field(factory=dict)

    def load(self) -> dict[str, Position]:
        """A copy of the stored positions."""
        return dict(self.positions)

    def save(self, stream: str, position: Position) -> None:
        """Store ``position`` for ``stream``."""
        self.positions[stream] = position


class JsonFilePositionStore:
    """Positions in a JSON file, ``{"stream": {"offset": N, "epoch": "E"}}``, replaced atomically.

    The file is read once, when the store is made (a missing file is an empty store), and
    rewritten through a temporary file and ``os.replace`` on every changed position: a crash
    leaves either the old or the new file, never half of one. Meant for modest rates (one small
    write per message); with ``fsync`` true each write also reaches the disk before replacing.

    Raises ValueError when the file exists but does not hold positions, and OSError when it
    cannot be read.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._positions = self._read()

    def load(self) -> dict[str, Position]:
        """A copy of the stored positions."""
        return dict(self._positions)

    def save(self, stream: str, position: Position) -> None:
        """Store ``position`` for ``stream`` and rewrite the file if it changed."""
        if self._positions.get(stream) == position:
            return
        self._positions[stream] = position
        document = {
            name: {"offset": held.offset, "epoch": held.epoch}
            for name, held in sorted(self._positions.items())
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "wb") as file:
            file.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
            if self.fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, self.path)

    def _read(self) -> dict[str, Position]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            document = orjson.loads(raw)
            if not isinstance(document, dict):
                raise TypeError("not an object")
            return {stream: _position_from_json(value) for stream, value in document.items()}
        except (orjson.JSONDecodeError, TypeError, ValueError) as error:
            raise ValueError(
                f"{os.fspath(self.path)!r} does not hold wshub positions "
                f'({{"stream": {{"offset": N, "epoch": "E"}}}}): {error}'
            ) from None


def _position_from_json(value: Any) -> Position:
    if not isinstance(value, dict):
        raise TypeError(f"a position must be an object, got {value!r}")
    offset, epoch = value.get("offset"), value.get("epoch")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an integer >= 0, got {offset!r}")
    if not isinstance(epoch, str) or not epoch:
        raise ValueError(f"epoch must be a non-empty string, got {epoch!r}")
    return Position(offset, epoch)
