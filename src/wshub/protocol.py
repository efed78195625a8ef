"""The wshub wire protocol, version 1 (sans-IO): parse client frames, encode server frames."""

from __future__ import annotations

import attrs

SUBPROTOCOL = "wshub.v1"


@attrs.frozen
class Position:
    """A client's position in a stream: it has seen every message up to ``offset`` of ``epoch``."""

    offset: int
    epoch: str
