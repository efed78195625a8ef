"""Stream and client-id names of the wshub wire protocol (sans-IO).

A client id is 1 to 128 characters from ``[A-Za-z0-9_.:-]``. A stream name is a topic (1 to
200 of those characters), a personal stream (``@`` and a client id: only that client reads it)
or a system stream (``$`` and a topic-like name: only the hub publishes to it). These functions
only look at text; who may use which stream is the hub's business. ``wshub.core.protocol``
re-exports them.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["is_valid_client_id", "personal_stream", "stream_kind"]

_CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


def is_valid_client_id(client_id: str) -> bool:
    """Whether ``client_id`` matches ``[A-Za-z0-9_.:-]{1,128}``."""
    return _CLIENT_ID.fullmatch(client_id) is not None


def personal_stream(client_id: str) -> str:
    """The personal stream of ``client_id``: ``"@" + client_id``."""
    return "@" + client_id


def stream_kind(name: str) -> Literal["topic", "personal", "system"] | None:
    """The kind of stream ``name`` denotes, or ``None`` when it is not a valid stream name."""
    if name[:1] == "@":
        return "personal" if _CLIENT_ID.fullmatch(name, 1) else None
    if name[:1] == "$":
        return "system" if _NAME.fullmatch(name, 1) else None
    return "topic" if _NAME.fullmatch(name) else None
