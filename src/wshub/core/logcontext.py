"""Fields that every log record of a task carries: which hub, node, client, stream.

Theory of operation:
- The fields live in a ``ContextVar``. Trio gives each task a copy of the context of the task
  that started it, so fields bound in a connection's task (``hub``, then ``client_id`` once its
  hello is accepted) reach every record logged by that task and the tasks it starts later (its
  writer), and never another connection's.
- ``log_context`` binds fields for a ``with`` block and restores the previous ones after it;
  ``add_log_context`` binds for the rest of the enclosing ``log_context`` (or task).
- ``LogContextFilter`` copies the fields onto each record that passes a handler, unless the
  call gave the same name in ``extra=``, so formatters (``wshub.logs``) find them as attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType

__all__ = ["CONTEXT_FIELDS", "LogContextFilter", "add_log_context", "log_context", "log_fields"]

#: The fields a record may carry, in the order formatters print them.
CONTEXT_FIELDS = ("hub", "node", "client_id", "stream")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_FIELDS: ContextVar[Mapping[str, str]] = ContextVar("wshub_log_fields", default=_EMPTY)


class log_context:
    """Bind ``fields`` to the records logged inside the block (by this task and its children).

    A class rather than ``@contextmanager``: every connection enters one for its whole life,
    and a suspended generator frame would cost each idle connection half a KiB more.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str) -> None:
        self._fields = fields
        self._token: Token[Mapping[str, str]] | None = None

    def __enter__(self) -> None:
        self._token = _FIELDS.set(MappingProxyType({**_FIELDS.get(), **self._fields}))

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _FIELDS.reset(self._token)


def add_log_context(**fields: str) -> None:
    """Bind ``fields`` from now on, until the enclosing ``log_context`` ends (or the task)."""
    _FIELDS.set(MappingProxyType({**_FIELDS.get(), **fields}))


def log_fields() -> Mapping[str, str]:
    """The fields bound in the current context."""
    return _FIELDS.get()


class LogContextFilter(logging.Filter):
    """Copies the bound fields onto each record (a field given in ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drops a record."""
        for name, value in _FIELDS.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True
