"""One stream as a node follows it over pub/sub: in order, without gaps, or lost.

Theory of operation (pure state; the Redis broker does the I/O around it):
- Pub/sub is at most once, history is complete: the publish script appends to history before
  it publishes, atomically. So a feed delivers ``delivered + 1`` when it arrives, drops what is
  not newer than ``delivered``, and on a jump keeps the early arrivals (``ahead``, bounded) and
  asks for a fill: a read of history after ``delivered``, fed through ``fill``. Whatever the
  order in which fills and arrivals come, each offset is delivered once, in order.
- Before ``start`` (the first read after subscribing the channel) arrivals wait in ``ahead``;
  ``start`` makes the read's newest offset the delivered one, so the joining subscriber's replay
  (from that read) meets delivery exactly.
- A message of another epoch means the stream's state was lost in Redis: the feed asks for a
  fill, whose read then answers "not recovered", and the broker restarts the feed (``restart``)
  after telling the hub that this stream's subscribers must resume.
- ``recent`` keeps the last delivered messages, so a join whose read is older than delivery
  gets the difference from memory (``since``) instead of a second read, and so an offset that
  comes again with other content (Redis lost writes in a failover and reassigned offsets) is
  noticed (``diverged``) rather than silently dropped as a repeat.
"""

from __future__ import annotations

from collections import deque

import attrs

from wshub.core.history import StoredMessage

__all__ = ["Feed"]


@attrs.define(eq=False)
class Feed:
    """The node-local delivery state of one stream."""

    stream: str
    recent_size: int = 256
    epoch: str | None = None
    """None until ``start``: the feed does not yet know where the stream stands."""
    delivered: int = 0
    """The newest offset delivered on this node (contiguous from where the feed started)."""
    gap: bool = False
    """A fill is needed: an offset was skipped, an epoch changed, or a reconnect happened."""
    diverged: bool = False
    """An offset already delivered came again with other content: Redis went back in time
    (a failover lost writes), so this node's subscribers hold messages the stream no longer
    has. The broker hands the stream back to the hub."""
    subscribers: int = 0
    preparing: int = 0
    subscribed: bool = False
    """Whether this node's pub/sub connection is subscribed to the stream's channel."""
    _recent: deque[StoredMessage] = attrs.field(init=False)
    _ahead: dict[int, StoredMessage] = attrs.field(init=False, factory=dict)
    _ahead_epoch: str | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._recent = deque(maxlen=self.recent_size)

    @property
    def started(self) -> bool:
        """Whether the feed knows its epoch and delivered offset."""
        return self.epoch is not None

    @property
    def in_use(self) -> bool:
        """Whether anybody subscribes or is joining."""
        return self.subscribers > 0 or self.preparing > 0

    def start(self, epoch: str, top: int) -> list[StoredMessage]:
        """Begin at ``top`` of ``epoch``; returns what arrived early and can go out now."""
        self.epoch = epoch
        self.delivered = top
        self._recent.clear()
        return self._drain()

    def restart(self, epoch: str, top: int) -> list[StoredMessage]:
        """Start over after the stream was lost (its subscribers have been told).

        Arrivals of the new epoch beyond ``top`` are kept; returns those that can go out.
        """
        self.gap = self.diverged = False
        return self.start(epoch, top)

    def receive(self, epoch: str, message: StoredMessage) -> list[StoredMessage]:
        """A message from pub/sub; returns the messages to deliver now, in order."""
        if self.epoch is None or epoch != self.epoch or self.gap:
            if self.epoch is not None and epoch != self.epoch:
                self.gap = True  # the stream was lost: a fill will find out how
            self._keep_ahead(epoch, message)
            return []
        offset = message.offset
        if offset <= self.delivered:
            self._check_same(message)
            return []
        if offset == self.delivered + 1:
            self._deliver(message)
            return [message] if not self._ahead else [message, *self._drain()]
        self.gap = True
        self._keep_ahead(epoch, message)
        return []

    def fill(self, top: int, messages: list[StoredMessage]) -> list[StoredMessage]:
        """A read of history after ``delivered`` (same epoch, up to ``top``): deliver it.

        Returns the messages to deliver in order; ``gap`` stays set when the read stopped
        short of ``top`` (a read is bounded) so that another fill follows.
        """
        out: list[StoredMessage] = []
        for message in messages:
            if message.offset == self.delivered + 1:
                self._deliver(message)
                out.append(message)
            elif message.offset <= self.delivered:
                self._check_same(message)
        self.gap = self.delivered < top
        if not self.gap:
            out.extend(self._drain())
        return out

    def since(self, offset: int) -> list[StoredMessage] | None:
        """The delivered messages after ``offset``; None when ``recent`` no longer has them."""
        if offset >= self.delivered:
            return []
        recent = self._recent
        if not recent or recent[0].offset > offset + 1:
            return None
        return list(recent)[offset + 1 - recent[0].offset :]

    def _check_same(self, message: StoredMessage) -> None:
        """An offset seen again must be the same message; else the stream diverged."""
        recent = self._recent
        held = bool(recent) and recent[0].offset <= message.offset <= recent[-1].offset
        if held and recent[message.offset - recent[0].offset].frame != message.frame:
            self.diverged = self.gap = True

    def _deliver(self, message: StoredMessage) -> None:
        self.delivered = message.offset
        self._recent.append(message)

    def _keep_ahead(self, epoch: str, message: StoredMessage) -> None:
        if self._ahead_epoch != epoch:
            self._ahead.clear()
            self._ahead_epoch = epoch
        if len(self._ahead) >= self.recent_size:
            # Too far ahead to hold: history has them all, and a fill reads them there.
            self._ahead.clear()
            self.gap = True
            return
        self._ahead[message.offset] = message

    def _drain(self) -> list[StoredMessage]:
        """Deliver what waits in ``ahead`` from ``delivered + 1`` on; drop what is older."""
        ahead = self._ahead
        if not ahead:
            return []
        if self._ahead_epoch != self.epoch:
            ahead.clear()
            return []
        out: list[StoredMessage] = []
        while (message := ahead.pop(self.delivered + 1, None)) is not None:
            self._deliver(message)
            out.append(message)
        for offset in [o for o in ahead if o <= self.delivered]:
            del ahead[offset]
        if ahead:
            self.gap = True  # something is still missing before what waits
        return out
