"""The configuration tree: one frozen attrs object, validated field by field.

Every key lives in a section (``HubConfig.limits.max_queue``). Values are checked when the
object is built, so a bad value fails loudly at start-up with the key, the value and what is
allowed, never later in the middle of serving. Unknown keys (in TOML or in ``WSHUB_*``
variables) are errors too: a typo must not silently fall back to a default.

Presets: ``HubConfig()`` holds the production values; ``development()`` and ``testing()`` are
derived from it with ``attrs.evolve`` so that every difference is spelled out in one place.
"""

from __future__ import annotations

import os
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "AdminConfig",
    "AuthConfig",
    "BreakerConfig",
    "CleanupConfig",
    "ConfigError",
    "DedupConfig",
    "HealthConfig",
    "HeartbeatConfig",
    "HistoryConfig",
    "HubConfig",
    "LimitsConfig",
    "MetricsConfig",
    "ServerConfig",
    "ShutdownConfig",
]


class ConfigError(ValueError):
    """A configuration value, key or file is invalid. The message names the key."""


# --------------------------------------------------------------------------------------------
# Validators. Each knows its section through the class attribute ``_section`` so the message
# can name the full key ("limits.max_queue must be an integer >= 1, got -3").

_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _key(instance: Any, attribute: attrs.Attribute[Any]) -> str:
    return f"{type(instance)._section}.{attribute.name}"


def _fail(instance: Any, attribute: attrs.Attribute[Any], allowed: str, value: Any) -> None:
    raise ConfigError(f"{_key(instance, attribute)} must be {allowed}, got {value!r}")


def _integer(minimum: int) -> _Validator:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            _fail(instance, attribute, f"an integer >= {minimum}", value)

    return check


def _number(minimum: float, *, exclusive: bool = True, maximum: float | None = None) -> _Validator:
    bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
    allowed = f"a number {bound}" + (f" and <= {maximum:g}" if maximum is not None else "")

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            ok = value > minimum if exclusive else value >= minimum
        if ok and maximum is not None:
            ok = value <= maximum
        if not ok:
            _fail(instance, attribute, allowed, value)

    return check


def _optional(inner: _Validator) -> _Validator:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            inner(instance, attribute, value)

    return check


def _boolean(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        _fail(instance, attribute, "true or false", value)


def _text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        _fail(instance, attribute, "a non-empty string", value)


def _texts(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        _fail(instance, attribute, "a list of non-empty strings", value)


def _path(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        _fail(instance, attribute, "a path starting with '/'", value)


def _timezone(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        _fail(instance, attribute, "an IANA time zone name such as 'UTC' or 'Europe/Paris'", value)


def _as_tuple(value: Any) -> Any:
    # TOML gives lists; the frozen tree holds tuples so configs stay hashable.
    return tuple(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------------------------
# Sections


@attrs.frozen
class ServerConfig:
    """Where and how the hub listens, and who may connect."""

    _section: ClassVar[str] = "server"
    host: str = attrs.field(default="127.0.0.1", validator=_text)
    port: int = attrs.field(default=8765, validator=_integer(0))
    path: str = attrs.field(default="/ws", validator=_path)
    origins: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple, validator=_texts)
    allow_anonymous: bool = attrs.field(default=False, validator=_boolean)
    client_publish: bool = attrs.field(default=False, validator=_boolean)
    cors_origin: str | None = attrs.field(default=None, validator=_optional(_text))

    def __attrs_post_init__(self) -> None:
        if self.port > 65535:
            raise ConfigError(f"server.port must be an integer from 0 to 65535, got {self.port}")


@attrs.frozen
class LimitsConfig:
    """Bounds that keep one client from hurting the others."""

    _section: ClassVar[str] = "limits"
    max_message_bytes: int = attrs.field(default=65536, validator=_integer(64))
    max_connections: int = attrs.field(default=10_000, validator=_integer(1))
    max_queue: int = attrs.field(default=1000, validator=_integer(1))
    max_batch: int = attrs.field(default=64, validator=_integer(1))
    write_delay: float = attrs.field(default=0.003, validator=_number(0, exclusive=False))
    flush_pause_ratio: float = attrs.field(default=1.0, validator=_number(0, exclusive=False))
    hello_timeout: float = attrs.field(default=10.0, validator=_number(0))
    rate: float = attrs.field(default=100.0, validator=_number(0))
    burst: int = attrs.field(default=200, validator=_integer(1))
    rate_limit_strikes: int = attrs.field(default=20, validator=_integer(1))


@attrs.frozen
class HistoryConfig:
    """How much of each stream is kept for resuming clients."""

    _section: ClassVar[str] = "history"
    size: int = attrs.field(default=1000, validator=_integer(1))
    ttl: float = attrs.field(default=3600.0, validator=_number(0))
    max_streams: int = attrs.field(default=100_000, validator=_integer(1))


@attrs.frozen
class DedupConfig:
    """How long and how many message ids are remembered for idempotent publishing."""

    _section: ClassVar[str] = "dedup"
    window: float = attrs.field(default=300.0, validator=_number(0))
    max_entries: int = attrs.field(default=100_000, validator=_integer(1))


@attrs.frozen
class BreakerConfig:
    """Circuit breakers around the application hooks, and the retries inside them."""

    _section: ClassVar[str] = "breaker"
    failure_threshold: int = attrs.field(default=5, validator=_integer(1))
    success_threshold: int = attrs.field(default=2, validator=_integer(1))
    open_timeout: float = attrs.field(default=30.0, validator=_number(0))
    open_timeout_multiplier: float = attrs.field(default=2.0, validator=_number(1, exclusive=False))
    max_open_timeout: float = attrs.field(default=300.0, validator=_number(0))
    half_open_max_calls: int = attrs.field(default=1, validator=_integer(1))
    half_open_timeout: float = attrs.field(default=30.0, validator=_number(0))
    failure_rate_threshold: float | None = attrs.field(
        default=None, validator=_optional(_number(0, maximum=1))
    )
    window: float = attrs.field(default=60.0, validator=_number(0))
    minimum_calls: int = attrs.field(default=10, validator=_integer(1))
    call_timeout: float = attrs.field(default=5.0, validator=_number(0))
    retries: int = attrs.field(default=2, validator=_integer(0))
    retry_backoff: float = attrs.field(default=0.2, validator=_number(0, exclusive=False))
    max_breakers: int = attrs.field(default=1000, validator=_integer(1))

    def __attrs_post_init__(self) -> None:
        if self.max_open_timeout < self.open_timeout:
            raise ConfigError(
                f"breaker.max_open_timeout must be >= breaker.open_timeout "
                f"({self.open_timeout:g}), got {self.max_open_timeout:g}"
            )


@attrs.frozen
class HeartbeatConfig:
    """Pings that find dead peers."""

    _section: ClassVar[str] = "heartbeat"
    interval: float = attrs.field(default=25.0, validator=_number(0))
    timeout: float = attrs.field(default=10.0, validator=_number(0))


@attrs.frozen
class MetricsConfig:
    """How figures are sampled, flushed and kept."""

    _section: ClassVar[str] = "metrics"
    flush_interval: float = attrs.field(default=5.0, validator=_number(0))
    client_ttl: float = attrs.field(default=3600.0, validator=_number(0))
    sample_rate: float = attrs.field(default=0.05, validator=_number(0, maximum=1))
    history_points: int = attrs.field(default=360, validator=_integer(1))
    log: bool = attrs.field(default=True, validator=_boolean)


@attrs.frozen
class CleanupConfig:
    """The sweeper that expires history, dedup keys and idle client stats."""

    _section: ClassVar[str] = "cleanup"
    interval: float = attrs.field(default=30.0, validator=_number(0))


@attrs.frozen
class ShutdownConfig:
    """Graceful shutdown."""

    _section: ClassVar[str] = "shutdown"
    grace: float = attrs.field(default=10.0, validator=_number(0, exclusive=False))


@attrs.frozen
class HealthConfig:
    """The health endpoints."""

    _section: ClassVar[str] = "health"
    timezone: str = attrs.field(default="UTC", validator=_timezone)
    queue_degraded_ratio: float = attrs.field(default=0.8, validator=_number(0, maximum=1))


@attrs.frozen
class AdminConfig:
    """The operator's key, for publishing over HTTP and for the monitoring endpoints."""

    _section: ClassVar[str] = "admin"
    api_key: str | None = attrs.field(default=None, validator=_optional(_text), repr=False)
    protect_monitoring: bool = attrs.field(default=True, validator=_boolean)


#: The HMAC algorithms, verified with ``auth.jwt_secret``, and the fewest bytes of secret each
#: needs (its digest size, RFC 7518 section 3.2).
HMAC_ALGORITHMS: Mapping[str, int] = {"HS256": 32, "HS384": 48, "HS512": 64}
#: The asymmetric algorithms, verified with the public key in ``auth.jwt_public_key``.
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512"}
    | {"EdDSA"}
)


def _algorithms(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    known = sorted(HMAC_ALGORITHMS) + sorted(ASYMMETRIC_ALGORITHMS)
    allowed = f"a non-empty list of algorithms among {', '.join(known)}"
    if not isinstance(value, tuple) or not value:
        _fail(instance, attribute, allowed, value)
    for name in value:
        if isinstance(name, str) and name.lower() == "none":
            raise ConfigError(
                f"{_key(instance, attribute)} must never list 'none' (unsigned tokens), "
                f"got {list(value)!r}"
            )
        if name not in HMAC_ALGORITHMS and name not in ASYMMETRIC_ALGORITHMS:
            raise ConfigError(
                f"{_key(instance, attribute)} must be {allowed}, got {name!r} in {list(value)!r}"
            )


def _secret(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    # Never echo the value: it is a secret, even when it is a wrong one.
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{_key(instance, attribute)} must be a non-empty string")


@attrs.frozen
class AuthConfig:
    """Signed tokens (JWT) for clients and HTTP publishers; off while no key is configured."""

    _section: ClassVar[str] = "auth"
    jwt_secret: str | None = attrs.field(default=None, validator=_secret, repr=False)
    jwt_public_key: str | None = attrs.field(default=None, validator=_optional(_text))
    jwt_algorithms: tuple[str, ...] = attrs.field(
        default=("HS256",), converter=_as_tuple, validator=_algorithms
    )
    jwt_audience: str | None = attrs.field(default=None, validator=_optional(_text))
    jwt_issuer: str | None = attrs.field(default=None, validator=_optional(_text))
    leeway: float = attrs.field(default=0.0, validator=_number(0, exclusive=False))

    @property
    def enabled(self) -> bool:
        """Whether tokens are verified: a secret or a public key is configured."""
        return self.jwt_secret is not None or self.jwt_public_key is not None

    def __attrs_post_init__(self) -> None:
        if not self.enabled:
            return
        hmac = [name for name in self.jwt_algorithms if name in HMAC_ALGORITHMS]
        asymmetric = [name for name in self.jwt_algorithms if name in ASYMMETRIC_ALGORITHMS]
        if hmac and self.jwt_secret is None:
            raise ConfigError(f"auth.jwt_algorithms lists {hmac[0]}, which needs auth.jwt_secret")
        if asymmetric and self.jwt_public_key is None:
            raise ConfigError(
                f"auth.jwt_algorithms lists {asymmetric[0]}, which needs auth.jwt_public_key "
                "(the path of a PEM public key)"
            )
        if self.jwt_secret is not None:
            if not hmac:
                raise ConfigError(
                    "auth.jwt_secret is set but auth.jwt_algorithms lists no HS256, HS384 "
                    f"or HS512 to use it with, got {list(self.jwt_algorithms)!r}"
                )
            needed = max(HMAC_ALGORITHMS[name] for name in hmac)
            size = len(self.jwt_secret.encode())
            if size < needed:
                strongest = max(hmac, key=HMAC_ALGORITHMS.__getitem__)
                raise ConfigError(
                    f"auth.jwt_secret must be at least {needed} bytes for {strongest}, "
                    f"got {size} bytes"
                )
        if self.jwt_public_key is not None and not asymmetric:
            raise ConfigError(
                "auth.jwt_public_key is set but auth.jwt_algorithms lists no asymmetric "
                f"algorithm to use it with, got {list(self.jwt_algorithms)!r}"
            )


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "limits": LimitsConfig,
    "history": HistoryConfig,
    "dedup": DedupConfig,
    "breaker": BreakerConfig,
    "heartbeat": HeartbeatConfig,
    "metrics": MetricsConfig,
    "cleanup": CleanupConfig,
    "shutdown": ShutdownConfig,
    "health": HealthConfig,
    "admin": AdminConfig,
    "auth": AuthConfig,
}

_C = TypeVar("_C", bound="HubConfig")


def _section_field(cls: type[Any]) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, cls):
            raise ConfigError(f"{attribute.name} must be a {cls.__name__}, got {value!r}")

    return attrs.field(factory=cls, validator=check)


@attrs.frozen
class HubConfig:
    """The whole configuration. ``HubConfig()`` holds the production values."""

    server: ServerConfig = _section_field(ServerConfig)
    limits: LimitsConfig = _section_field(LimitsConfig)
    history: HistoryConfig = _section_field(HistoryConfig)
    dedup: DedupConfig = _section_field(DedupConfig)
    breaker: BreakerConfig = _section_field(BreakerConfig)
    heartbeat: HeartbeatConfig = _section_field(HeartbeatConfig)
    metrics: MetricsConfig = _section_field(MetricsConfig)
    cleanup: CleanupConfig = _section_field(CleanupConfig)
    shutdown: ShutdownConfig = _section_field(ShutdownConfig)
    health: HealthConfig = _section_field(HealthConfig)
    admin: AdminConfig = _section_field(AdminConfig)
    auth: AuthConfig = _section_field(AuthConfig)

    PRESETS: ClassVar[tuple[str, ...]] = ("development", "production", "testing")

    # ---------------------------------------------------------------- presets

    @classmethod
    def production(cls: type[_C]) -> _C:
        """Conservative thresholds, long TTLs, sampled latency timing, no anonymous clients."""
        return cls()

    @classmethod
    def development(cls: type[_C]) -> _C:
        """Everything measured, low thresholds, short TTLs, anonymous clients may publish."""
        base = cls.production()
        return attrs.evolve(
            base,
            server=attrs.evolve(base.server, allow_anonymous=True, client_publish=True),
            history=attrs.evolve(base.history, ttl=600.0),
            breaker=attrs.evolve(
                base.breaker, failure_threshold=3, open_timeout=5.0, max_open_timeout=60.0
            ),
            metrics=attrs.evolve(
                base.metrics,
                flush_interval=1.0,
                client_ttl=300.0,
                sample_rate=1.0,
                history_points=300,
            ),
            cleanup=attrs.evolve(base.cleanup, interval=5.0),
            shutdown=attrs.evolve(base.shutdown, grace=3.0),
        )

    @classmethod
    def testing(cls: type[_C]) -> _C:
        """Tiny thresholds and TTLs, for fast deterministic tests under a mock clock."""
        base = cls.development()
        return attrs.evolve(
            base,
            server=attrs.evolve(base.server, port=0),
            limits=attrs.evolve(
                base.limits,
                max_queue=100,
                write_delay=0.0,
                hello_timeout=1.0,
                rate=50.0,
                burst=20,
                rate_limit_strikes=5,
            ),
            history=attrs.evolve(base.history, size=100, ttl=60.0),
            dedup=attrs.evolve(base.dedup, window=10.0, max_entries=1000),
            breaker=attrs.evolve(
                base.breaker,
                failure_threshold=2,
                success_threshold=1,
                open_timeout=1.0,
                max_open_timeout=8.0,
                half_open_timeout=1.0,
                call_timeout=1.0,
                retries=1,
                retry_backoff=0.1,
            ),
            heartbeat=attrs.evolve(base.heartbeat, interval=2.0, timeout=1.0),
            metrics=attrs.evolve(
                base.metrics, flush_interval=1.0, client_ttl=10.0, history_points=60, log=False
            ),
            cleanup=attrs.evolve(base.cleanup, interval=1.0),
            shutdown=attrs.evolve(base.shutdown, grace=1.0),
        )

    @classmethod
    def preset(cls: type[_C], name: str) -> _C:
        """The preset called ``name``; raises ConfigError for an unknown name."""
        if name not in cls.PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(cls.PRESETS)}, got {name!r}")
        factory: Callable[[], _C] = getattr(cls, name)
        return factory()

    # ---------------------------------------------------------------- loading

    def merged(self: _C, overrides: Mapping[str, Any]) -> _C:
        """A copy with ``{"section": {"key": value}}`` applied; unknown keys raise ConfigError."""
        changes: dict[str, Any] = {}
        for section, values in overrides.items():
            if section not in _SECTIONS:
                raise ConfigError(
                    f"unknown section {section!r}; sections are {', '.join(_SECTIONS)}"
                )
            if not isinstance(values, Mapping):
                raise ConfigError(f"{section} must be a table of keys, got {values!r}")
            current = getattr(self, section)
            known = {a.name for a in attrs.fields(type(current))}
            for key in values:
                if key not in known:
                    raise ConfigError(
                        f"unknown key {section}.{key}; keys are {', '.join(sorted(known))}"
                    )
            try:
                changes[section] = attrs.evolve(current, **values)
            except TypeError as error:  # attrs rejects an impossible field combination
                raise ConfigError(f"{section}: {error}") from None
        return attrs.evolve(self, **changes)

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any], *, base: _C | None = None) -> _C:
        """Build from ``{"section": {"key": value}}`` over ``base`` (default: production).

        A top-level ``preset = "name"`` picks the base when ``base`` is not given.
        """
        data = dict(data)
        preset = data.pop("preset", None)
        # Build the named preset even when ``base`` wins, so a misspelt name still fails.
        named = cls.preset(preset) if preset is not None else None
        if base is None:
            base = named if named is not None else cls.production()
        return base.merged(data)

    @classmethod
    def from_file(cls: type[_C], path: str | os.PathLike[str], *, base: _C | None = None) -> _C:
        """Load a TOML file. Raises ConfigError for a missing file, bad TOML or a bad value."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {error}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(
                f"config file {os.fspath(path)!r} is not valid TOML: {error}"
            ) from None
        return cls.from_dict(data, base=base)

    @classmethod
    def from_env(
        cls: type[_C], environ: Mapping[str, str] | None = None, *, base: _C | None = None
    ) -> _C:
        """Apply ``WSHUB_SECTION__KEY=value`` variables over ``base``.

        Without ``base``: ``WSHUB_CONFIG`` names a TOML file to start from, applied over the
        preset named by ``WSHUB_PRESET``, else the file's own ``preset`` key, else production.
        Values are parsed by the key's type (numbers, ``true``/``false``, comma-separated lists,
        empty for none).
        """
        environ = os.environ if environ is None else environ
        if base is None:
            preset = environ.get("WSHUB_PRESET")
            start = cls.preset(preset) if preset else None
            file = environ.get("WSHUB_CONFIG")
            if file:
                base = cls.from_file(file, base=start)
            else:
                base = start if start is not None else cls.production()
        overrides: dict[str, dict[str, Any]] = {}
        for name, raw in environ.items():
            if not name.startswith("WSHUB_") or "__" not in name:
                continue
            section, _, key = name[len("WSHUB_") :].lower().partition("__")
            if section not in _SECTIONS:
                raise ConfigError(f"{name}: unknown section {section!r}")
            fields = {a.name: a for a in attrs.fields(_SECTIONS[section])}
            if key not in fields:
                raise ConfigError(f"{name}: unknown key {section}.{key}")
            current = getattr(getattr(base, section), key)
            overrides.setdefault(section, {})[key] = _parse_env(name, raw, current, fields[key])
        return base.merged(overrides)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The configuration as plain data (lists for tuples), sections in declaration order."""
        out: dict[str, dict[str, Any]] = {}
        for section in _SECTIONS:
            values = attrs.asdict(getattr(self, section))
            out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        return out


def _parse_env(name: str, raw: str, current: Any, attribute: attrs.Attribute[Any]) -> Any:
    """Parse one environment value by the type of the field it sets."""
    kind = str(attribute.type)
    text = raw.strip()
    if "None" in kind and text == "":
        return None
    try:
        if "bool" in kind:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if "tuple" in kind:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if kind.startswith("int"):
            return int(text)
        if "float" in kind:
            return float(text)
    except ValueError:
        raise ConfigError(f"{name}: cannot parse {raw!r} as {kind}") from None
    return text
