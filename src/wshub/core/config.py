"""The configuration tree: one frozen attrs object, validated field by field.

``HubConfig`` is made of the section classes of ``wshub.core.sections`` (where the field
validators live); they are re-exported here as part of its API.

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs

from wshub.core.sections import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    AdminConfig,
    AuthConfig,
    BreakerConfig,
    BrokerConfig,
    CleanupConfig,
    ConfigError,
    DedupConfig,
    HealthConfig,
    HeartbeatConfig,
    HistoryConfig,
    LimitsConfig,
    MetricsConfig,
    ServerConfig,
    ShutdownConfig,
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
    "HubConfig",
    "LimitsConfig",
    "MetricsConfig",
    "ServerConfig",
    "ShutdownConfig",
]


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
    "broker": BrokerConfig,
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
    broker: BrokerConfig = _section_field(BrokerConfig)
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
