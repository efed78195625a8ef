"""Logging for the ``wshub`` command: text for people, JSON lines for log pipelines.

``configure_logging(level, format)`` installs one handler on the root logger (stderr by
default) with ``LogContextFilter``, so every record carries the fields bound where it was
logged (``hub``, ``node``, ``client_id``, ``stream``; see ``wshub.core.logcontext``):

- ``text``: ``2026-12-06 10:00:00,000 INFO wshub.hub: message [hub=3f2a node=h:42 client_id=a]``;
- ``json``: one object per line, ``{"time", "level", "logger", "message", ...fields,
  "exception"?}``, with the time in UTC (ISO 8601, milliseconds) and a traceback, when there
  is one, as one string.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from typing import Final, TextIO

import orjson

from wshub.core.logcontext import CONTEXT_FIELDS, LogContextFilter

__all__ = [
    "LEVELS",
    "LOG_FORMATS",
    "JSONFormatter",
    "TextFormatter",
    "add_log_arguments",
    "configure_logging",
]

#: The values of ``--log-level`` (any case).
LEVELS: Final = ("debug", "info", "warning", "error")
#: The values of ``--log-format``.
LOG_FORMATS: Final = ("text", "json")


def _fields(record: logging.LogRecord) -> dict[str, str]:
    return {
        name: str(value)
        for name in CONTEXT_FIELDS
        if (value := getattr(record, name, None)) is not None
    }


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [field=value ...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The line, with the record's context fields at the end of its first line."""
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        first, newline, rest = text.partition("\n")
        context = " ".join(f"{name}={value}" for name, value in fields.items())
        return f"{first} [{context}]{newline}{rest}"


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """``{"time", "level", "logger", "message", ...fields, "exception"?}``."""
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


def configure_logging(
    level: str = "info", log_format: str = "text", stream: TextIO | None = None
) -> None:
    """Log ``level`` and above to ``stream`` (stderr) as ``log_format``, replacing other handlers.

    Raises ValueError for a level not in LEVELS or a format not in LOG_FORMATS.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(LogContextFilter())
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def add_log_arguments(parser: argparse.ArgumentParser, default_level: str = "info") -> None:
    """``--log-level`` and ``--log-format`` (``args.log_level``, ``args.log_format``)."""
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LEVELS,
        default=default_level,
        help=f"log this level and above (default: {default_level})",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text lines, or one JSON object per line with hub, node, client_id and stream "
        "where they apply (default: text)",
    )
