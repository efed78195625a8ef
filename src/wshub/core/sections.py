"""The configuration sections: small frozen attrs classes, validated field by field.

Each section (``ServerConfig``, ``LimitsConfig``, ...) is one table of ``HubConfig``
(``config.limits.max_queue``). Theory of operation:
- Every field has a validator that runs when the section is built, so a bad value fails at
  start-up, never later in the middle of serving. The validators shared by several fields are
  in ``wshub.core.validators``; the checks of one section alone (the JWT algorithms and
  secret) are here beside it.
- Each section class names itself in the class attribute ``_section``, so a validator's message
  names the full key, the value and what is allowed ("limits.max_queue must be an integer >= 1,
  got -3"); every failure is a ``ConfigError``.
- Checks that span two fields of one section live in that section's ``__attrs_post_init__``.
- Sections are frozen and hold tuples, never lists, so a whole configuration stays hashable.

``HubConfig``, the presets and the TOML and environment loaders are in ``wshub.core.config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from wshub.core.validators import (
    ConfigError,
    as_tuple,
    boolean,
    fail,
    full_key,
    integer,
    key_prefix,
    non_empty_text,
    non_empty_texts,
    number,
    one_of,
    optional,
    redis_url,
    time_zone,
    url_path,
)

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "AdminConfig",
    "AuthConfig",
    "BreakerConfig",
    "BrokerConfig",
    "CleanupConfig",
    "ConfigError",
    "DedupConfig",
    "HealthConfig",
    "HeartbeatConfig",
    "HistoryConfig",
    "LimitsConfig",
    "MetricsConfig",
    "ServerConfig",
    "ShutdownConfig",
]


#: The largest ``limits.max_depth``: orjson encodes at most 254 levels.
MAX_DEPTH_CEILING = 250


@attrs.frozen
class ServerConfig:
    """Where and how the hub listens, and who may connect."""

    _section: ClassVar[str] = "server"
    host: str = attrs.field(default="127.0.0.1", validator=non_empty_text)
    port: int = attrs.field(default=8765, validator=integer(0))
    path: str = attrs.field(default="/ws", validator=url_path)
    origins: tuple[str, ...] = attrs.field(
        default=(), converter=as_tuple, validator=non_empty_texts
    )
    allow_anonymous: bool = attrs.field(default=False, validator=boolean)
    client_publish: bool = attrs.field(default=False, validator=boolean)
    cors_origin: str | None = attrs.field(default=None, validator=optional(non_empty_text))

    def __attrs_post_init__(self) -> None:
        if self.port > 65535:
            raise ConfigError(f"server.port must be an integer from 0 to 65535, got {self.port}")


@attrs.frozen
class LimitsConfig:
    """Bounds that keep one client from hurting the others."""

    _section: ClassVar[str] = "limits"
    max_message_bytes: int = attrs.field(default=65536, validator=integer(64))
    max_connections: int = attrs.field(default=10_000, validator=integer(1))
    max_queue: int = attrs.field(default=1000, validator=integer(1))
    max_queue_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=integer(1024))
    max_batch: int = attrs.field(default=64, validator=integer(1))
    write_delay: float = attrs.field(default=0.003, validator=number(0, exclusive=False))
    flush_pause_ratio: float = attrs.field(default=1.0, validator=number(0, exclusive=False))
    hello_timeout: float = attrs.field(default=10.0, validator=number(0))
    rate: float = attrs.field(default=100.0, validator=number(0))
    burst: int = attrs.field(default=200, validator=integer(1))
    rate_limit_strikes: int = attrs.field(default=20, validator=integer(1))
    max_depth: int = attrs.field(default=32, validator=integer(3))
    max_subscriptions: int = attrs.field(default=100, validator=integer(1))

    def __attrs_post_init__(self) -> None:
        # A hello with positions nests 3 levels; orjson encodes at most 254, and a frame the
        # hub accepted must stay encodable when it is echoed or delivered.
        if self.max_depth > MAX_DEPTH_CEILING:
            raise ConfigError(
                f"limits.max_depth must be an integer from 3 to {MAX_DEPTH_CEILING}, "
                f"got {self.max_depth}"
            )


@attrs.frozen
class HistoryConfig:
    """How much of each stream is kept for resuming clients."""

    _section: ClassVar[str] = "history"
    size: int = attrs.field(default=1000, validator=integer(1))
    ttl: float = attrs.field(default=3600.0, validator=number(0))
    max_streams: int = attrs.field(default=100_000, validator=integer(1))
    max_subscribed_streams: int = attrs.field(default=10_000, validator=integer(1))


@attrs.frozen
class DedupConfig:
    """How long and how many message ids are remembered for idempotent publishing."""

    _section: ClassVar[str] = "dedup"
    window: float = attrs.field(default=300.0, validator=number(0))
    max_entries: int = attrs.field(default=100_000, validator=integer(1))
    content_ids: bool = attrs.field(default=True, validator=boolean)


@attrs.frozen
class BrokerConfig:
    """Where streams live: this process (``memory``) or Redis, shared by every node."""

    _section: ClassVar[str] = "broker"
    kind: str = attrs.field(default="memory", validator=one_of("memory", "redis"))
    url: str = attrs.field(default="redis://127.0.0.1:6379/0", validator=redis_url, repr=False)
    prefix: str = attrs.field(default="wshub", validator=key_prefix)
    timeout: float = attrs.field(default=1.0, validator=number(0))
    pool_size: int = attrs.field(default=16, validator=integer(1))


@attrs.frozen
class BreakerConfig:
    """Circuit breakers around the application hooks, and the retries inside them."""

    _section: ClassVar[str] = "breaker"
    failure_threshold: int = attrs.field(default=5, validator=integer(1))
    success_threshold: int = attrs.field(default=2, validator=integer(1))
    open_timeout: float = attrs.field(default=30.0, validator=number(0))
    open_timeout_multiplier: float = attrs.field(default=2.0, validator=number(1, exclusive=False))
    max_open_timeout: float = attrs.field(default=300.0, validator=number(0))
    half_open_max_calls: int = attrs.field(default=1, validator=integer(1))
    half_open_timeout: float = attrs.field(default=30.0, validator=number(0))
    failure_rate_threshold: float | None = attrs.field(
        default=None, validator=optional(number(0, maximum=1))
    )
    window: float = attrs.field(default=60.0, validator=number(0))
    minimum_calls: int = attrs.field(default=10, validator=integer(1))
    call_timeout: float = attrs.field(default=5.0, validator=number(0))
    retries: int = attrs.field(default=2, validator=integer(0))
    retry_backoff: float = attrs.field(default=0.2, validator=number(0, exclusive=False))
    max_breakers: int = attrs.field(default=1000, validator=integer(1))

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
    interval: float = attrs.field(default=25.0, validator=number(0))
    timeout: float = attrs.field(default=10.0, validator=number(0))


@attrs.frozen
class MetricsConfig:
    """How figures are sampled, flushed and kept."""

    _section: ClassVar[str] = "metrics"
    flush_interval: float = attrs.field(default=5.0, validator=number(0))
    client_ttl: float = attrs.field(default=3600.0, validator=number(0))
    sample_rate: float = attrs.field(default=0.05, validator=number(0, maximum=1))
    history_points: int = attrs.field(default=360, validator=integer(1))
    log: bool = attrs.field(default=True, validator=boolean)


@attrs.frozen
class CleanupConfig:
    """The sweeper that expires history, dedup keys and idle client stats."""

    _section: ClassVar[str] = "cleanup"
    interval: float = attrs.field(default=30.0, validator=number(0))


@attrs.frozen
class ShutdownConfig:
    """Graceful shutdown."""

    _section: ClassVar[str] = "shutdown"
    grace: float = attrs.field(default=10.0, validator=number(0, exclusive=False))


@attrs.frozen
class HealthConfig:
    """The health endpoints."""

    _section: ClassVar[str] = "health"
    timezone: str = attrs.field(default="UTC", validator=time_zone)
    queue_degraded_ratio: float = attrs.field(default=0.8, validator=number(0, maximum=1))


@attrs.frozen
class AdminConfig:
    """The operator's key, for publishing over HTTP and for the monitoring endpoints."""

    _section: ClassVar[str] = "admin"
    api_key: str | None = attrs.field(default=None, validator=optional(non_empty_text), repr=False)
    protect_monitoring: bool = attrs.field(default=True, validator=boolean)


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
        fail(instance, attribute, allowed, value)
    for name in value:
        if isinstance(name, str) and name.lower() == "none":
            raise ConfigError(
                f"{full_key(instance, attribute)} must never list 'none' (unsigned tokens), "
                f"got {list(value)!r}"
            )
        if name not in HMAC_ALGORITHMS and name not in ASYMMETRIC_ALGORITHMS:
            raise ConfigError(
                f"{full_key(instance, attribute)} must be {allowed}, "
                f"got {name!r} in {list(value)!r}"
            )


def _secret(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    # Never echo the value: it is a secret, even when it is a wrong one.
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{full_key(instance, attribute)} must be a non-empty string")


@attrs.frozen
class AuthConfig:
    """Signed tokens (JWT) for clients and HTTP publishers; off while no key is configured."""

    _section: ClassVar[str] = "auth"
    jwt_secret: str | None = attrs.field(default=None, validator=_secret, repr=False)
    jwt_public_key: str | None = attrs.field(default=None, validator=optional(non_empty_text))
    jwt_algorithms: tuple[str, ...] = attrs.field(
        default=("HS256",), converter=as_tuple, validator=_algorithms
    )
    jwt_audience: str | None = attrs.field(default=None, validator=optional(non_empty_text))
    jwt_issuer: str | None = attrs.field(default=None, validator=optional(non_empty_text))
    leeway: float = attrs.field(default=0.0, validator=number(0, exclusive=False))

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
