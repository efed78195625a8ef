"""The field validators of the configuration sections, and ``ConfigError``.

Theory of operation:
- A validator is an attrs validator, ``check(instance, attribute, value)``: it returns None for
  a good value and raises ``ConfigError`` for a bad one. Nothing else is ever raised, so a
  loader can catch one exception type.
- It learns which section it checks from the class attribute ``_section`` of the instance, so
  its message names the full key, the value and what is allowed ("limits.max_queue must be an
  integer >= 1, got -3"), whichever section uses it.
- A validator only reads: converting (TOML lists to tuples) is ``as_tuple``'s job, run by attrs
  before the validators.

The sections themselves, and the checks that belong to one section alone (the JWT algorithms
and secret), are in ``wshub.core.sections``.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs

__all__ = [
    "ConfigError",
    "Validator",
    "as_tuple",
    "boolean",
    "fail",
    "full_key",
    "integer",
    "key_prefix",
    "non_empty_text",
    "non_empty_texts",
    "number",
    "one_of",
    "optional",
    "redis_url",
    "time_zone",
    "url_path",
]


class ConfigError(ValueError):
    """A configuration value, key or file is invalid. The message names the key."""


#: An attrs validator: ``check(instance, attribute, value)``, raising ``ConfigError``.
Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def full_key(instance: Any, attribute: attrs.Attribute[Any]) -> str:
    """The key a field is set by, ``"section.field"``, for messages."""
    return f"{type(instance)._section}.{attribute.name}"


def fail(instance: Any, attribute: attrs.Attribute[Any], allowed: str, value: Any) -> None:
    """Raise ConfigError: the key must be ``allowed``, got ``value``."""
    raise ConfigError(f"{full_key(instance, attribute)} must be {allowed}, got {value!r}")


def integer(minimum: int) -> Validator:
    """An integer (not a bool) of at least ``minimum``."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            fail(instance, attribute, f"an integer >= {minimum}", value)

    return check


def number(minimum: float, *, exclusive: bool = True, maximum: float | None = None) -> Validator:
    """A number (not a bool) above ``minimum`` (or at it, unless ``exclusive``), and at most
    ``maximum`` when one is given."""
    bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
    allowed = f"a number {bound}" + (f" and <= {maximum:g}" if maximum is not None else "")

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            ok = value > minimum if exclusive else value >= minimum
        if ok and maximum is not None:
            ok = value <= maximum
        if not ok:
            fail(instance, attribute, allowed, value)

    return check


def optional(inner: Validator) -> Validator:
    """None, or what ``inner`` accepts."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            inner(instance, attribute, value)

    return check


def one_of(*allowed: str) -> Validator:
    """One of the strings ``allowed``."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in allowed:
            fail(instance, attribute, "one of " + ", ".join(map(repr, allowed)), value)

    return check


def boolean(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """True or false (not 0 or 1)."""
    if not isinstance(value, bool):
        fail(instance, attribute, "true or false", value)


def non_empty_text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        fail(instance, attribute, "a non-empty string", value)


def non_empty_texts(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A tuple of non-empty strings (a TOML list, after ``as_tuple``)."""
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        fail(instance, attribute, "a list of non-empty strings", value)


def url_path(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A URL path: a string starting with ``/``."""
    if not isinstance(value, str) or not value.startswith("/"):
        fail(instance, attribute, "a path starting with '/'", value)


def time_zone(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An IANA time zone name that this system's zoneinfo knows."""
    try:
        zoneinfo.ZoneInfo(value)
    # OSError: with the tzdata package installed, a directory of it ("America") is opened as
    # a file and raises IsADirectoryError instead of ZoneInfoNotFoundError.
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        fail(instance, attribute, "an IANA time zone name such as 'UTC' or 'Europe/Paris'", value)


def redis_url(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A ``redis://`` or ``rediss://`` URL with a host (and a numeric port, if any)."""
    allowed = "a redis://host:port/db or rediss://host:port/db URL"
    if not isinstance(value, str):
        fail(instance, attribute, allowed, value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        fail(instance, attribute, allowed, value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        fail(instance, attribute, allowed, value)


_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def key_prefix(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A key prefix: 1 to 64 characters from ``[A-Za-z0-9_.:-]``."""
    if not isinstance(value, str) or _PREFIX.fullmatch(value) is None:
        fail(instance, attribute, "1 to 64 characters from [A-Za-z0-9_.:-]", value)


def as_tuple(value: Any) -> Any:
    """A list as a tuple (TOML gives lists; the frozen tree holds tuples so configs stay
    hashable); anything else unchanged, for the validator to judge."""
    return tuple(value) if isinstance(value, list) else value
