"""What a connection's queue holds, and how a chunk of it becomes one frame's bytes.

Theory of operation:
- A queue holds published messages (``StoredMessage``: live, so the writer may time them),
  messages sent again from history (``Replayed``: delivered, not timed) and other frames of
  the protocol (``str``: replies, errors). A chunk of up to ``limits.max_batch`` items goes out
  as one frame, its texts joined by newlines (``frame_of``).
- The fast server's frames are the same bytes on every connection (server frames are unmasked
  and no extension is negotiated), so the flush tick encodes each distinct chunk once however
  many connections are sent it (``FrameCache``, cleared after every tick). A chunk is found by
  its first and last items and its length (three numbers to hash, not sixty-four); a match
  that holds other items in between (two kinds of queue may share their ends: clients on
  ``news`` and ``sport`` and clients on ``news`` and ``weather``) falls back to every item's
  identity. An entry keeps its items alive, so no identity can be reused while it lives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from wshub.core.history import StoredMessage

__all__ = ["EncodedFrame", "FrameCache", "QueueItem", "Replayed", "frame_of", "small_frame"]


class Replayed:
    """A message sent again from history: delivered, but not a live delivery, so the writer
    does not time it (a resume after an hour is not an hour of latency)."""

    __slots__ = ("frame",)

    def __init__(self, frame: str) -> None:
        self.frame = frame


QueueItem = StoredMessage | Replayed | str

#: A chunk's frame as the tick encoded it: the encoder, the bytes, the text's length, the
#: messages it delivers, and the chunk's items (kept alive, so their identities stay theirs).
EncodedFrame = tuple[Callable[[str], bytes], bytes, int, int, Sequence[QueueItem]]


class FrameCache:
    """The frames one flush tick has encoded, by the items they hold."""

    __slots__ = ("_frames",)

    def __init__(self) -> None:
        self._frames: dict[tuple[int, ...], EncodedFrame] = {}

    def frame(self, chunk: list[QueueItem], encode: Callable[[str], bytes]) -> EncodedFrame:
        """The frame of ``chunk`` as ``encode`` makes it, encoded now if not yet this tick."""
        known = self._frames.get((id(chunk[0]), id(chunk[-1]), len(chunk)))
        if known is None or known[4] != chunk or known[0] is not encode:
            known = self._by_identity(chunk, encode)
        return known

    def _by_identity(self, chunk: list[QueueItem], encode: Callable[[str], bytes]) -> EncodedFrame:
        # Keys by ends hold three numbers, the last a length, never an identity: the two
        # kinds of key cannot meet.
        frames = self._frames
        key = tuple(map(id, chunk))
        known = frames.get(key)
        if known is None or known[0] is not encode:
            text, delivered = frame_of(chunk)
            known = frames[key] = (encode, encode(text), len(text), delivered, chunk)
            frames.setdefault((id(chunk[0]), id(chunk[-1]), len(chunk)), known)
        return known

    def clear(self) -> None:
        """Forget every frame (the tick is over: its items may be freed now)."""
        self._frames.clear()


def frame_of(chunk: Sequence[QueueItem]) -> tuple[str, int]:
    """One frame's text for ``chunk`` (newline-joined), and how many messages it delivers."""
    frames: list[str] = []
    delivered = 0
    for item in chunk:
        if item.__class__ is str:
            frames.append(item)
        else:
            frames.append(item.frame)  # type: ignore[union-attr]
            delivered += 1
    return (frames[0] if len(frames) == 1 else "\n".join(frames)), delivered


def item_size(item: QueueItem) -> int:
    """A queued item's frame length in characters."""
    return len(item) if item.__class__ is str else len(item.frame)  # type: ignore[union-attr]


def small_frame(max_queue_bytes: int, max_queue: int) -> int:
    """The frame size, in characters, up to which a queued item needs no counting: at this
    size a full queue of ``max_queue`` items holds ``max_queue_bytes`` at most."""
    return max(1, max_queue_bytes // max_queue)
