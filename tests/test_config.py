"""The configuration tree: validation messages, TOML and environment loading, presets."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wshub.core.config import ConfigError, HubConfig
from wshub.core.sections import (
    AdminConfig,
    BreakerConfig,
    HealthConfig,
    LimitsConfig,
    ServerConfig,
)

SECTIONS = (
    "server, limits, history, dedup, breaker, heartbeat, metrics, cleanup, shutdown, health, admin,"
    " broker, auth"
)
TIMEZONE_ALLOWED = "an IANA time zone name such as 'UTC' or 'Europe/Paris'"

# Every numeric key with its bounds, so the tests below can check every validator's wording and
# generate valid and invalid values. test_bound_tables_cover_every_numeric_key keeps them whole.
INTEGER_MINIMUMS: dict[str, int] = {
    "server.port": 0,
    "limits.max_message_bytes": 64,
    "limits.max_connections": 1,
    "limits.max_queue": 1,
    "limits.max_batch": 1,
    "limits.burst": 1,
    "limits.rate_limit_strikes": 1,
    "limits.max_depth": 3,
    "limits.max_subscriptions": 1,
    "limits.max_queue_bytes": 1024,
    "history.max_subscribed_streams": 1,
    "history.size": 1,
    "history.max_streams": 1,
    "dedup.max_entries": 1,
    "breaker.failure_threshold": 1,
    "breaker.success_threshold": 1,
    "breaker.half_open_max_calls": 1,
    "breaker.minimum_calls": 1,
    "breaker.retries": 0,
    "breaker.max_breakers": 1,
    "metrics.history_points": 1,
    "broker.pool_size": 1,
}

# key -> (lower bound, lower bound excluded, upper bound or None)
NUMBER_BOUNDS: dict[str, tuple[float, bool, float | None]] = {
    "limits.write_delay": (0, False, None),
    "limits.flush_pause_ratio": (0, False, None),
    "limits.hello_timeout": (0, True, None),
    "limits.rate": (0, True, None),
    "history.ttl": (0, True, None),
    "dedup.window": (0, True, None),
    "breaker.open_timeout": (0, True, None),
    "breaker.open_timeout_multiplier": (1, False, None),
    "breaker.max_open_timeout": (0, True, None),
    "breaker.half_open_timeout": (0, True, None),
    "breaker.failure_rate_threshold": (0, True, 1),
    "breaker.window": (0, True, None),
    "breaker.call_timeout": (0, True, None),
    "breaker.retry_backoff": (0, False, None),
    "heartbeat.interval": (0, True, None),
    "heartbeat.timeout": (0, True, None),
    "metrics.flush_interval": (0, True, None),
    "metrics.client_ttl": (0, True, None),
    "metrics.sample_rate": (0, True, 1),
    "cleanup.interval": (0, True, None),
    "shutdown.grace": (0, False, None),
    "health.queue_degraded_ratio": (0, True, 1),
    "broker.timeout": (0, True, None),
    "auth.leeway": (0, False, None),
}

LARGEST = 1e12  # keeps generated numbers readable; the validators have no upper bound here


def number_allowed(key: str) -> str:
    low, exclusive, high = NUMBER_BOUNDS[key]
    text = f"a number {'>' if exclusive else '>='} {low:g}"
    return text + (f" and <= {high:g}" if high is not None else "")


def with_value(dotted: str, value: Any, base: HubConfig | None = None) -> HubConfig:
    section, key = dotted.split(".")
    return (base or HubConfig()).merged({section: {key: value}})


def write_toml(tmp_path: Path, text: str, name: str = "wshub.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def every_field() -> list[tuple[str, attrs.Attribute[Any]]]:
    config = HubConfig()
    return [
        (f"{section.name}.{field.name}", field)
        for section in attrs.fields(HubConfig)
        for field in attrs.fields(type(getattr(config, section.name)))
    ]


# --------------------------------------------------------------------------------------------
# Validation messages


def test_bound_tables_cover_every_numeric_key() -> None:
    integer_keys = {key for key, field in every_field() if str(field.type) == "int"}
    number_keys = {key for key, field in every_field() if "float" in str(field.type)}
    assert integer_keys == set(INTEGER_MINIMUMS)
    assert number_keys == set(NUMBER_BOUNDS)


def test_negative_queue_size_is_rejected_with_key_value_and_allowed_range() -> None:
    with pytest.raises(ConfigError) as caught:
        LimitsConfig(max_queue=-3)
    assert str(caught.value) == "limits.max_queue must be an integer >= 1, got -3"


@pytest.mark.parametrize("key", sorted(INTEGER_MINIMUMS))
def test_integer_below_minimum_names_key_value_and_minimum(key: str) -> None:
    minimum = INTEGER_MINIMUMS[key]
    with pytest.raises(ConfigError) as caught:
        with_value(key, minimum - 1)
    assert str(caught.value) == f"{key} must be an integer >= {minimum}, got {minimum - 1}"


@pytest.mark.parametrize("key", sorted(INTEGER_MINIMUMS))
def test_integer_key_accepts_its_minimum(key: str) -> None:
    config = with_value(key, INTEGER_MINIMUMS[key])
    section, name = key.split(".")
    assert getattr(getattr(config, section), name) == INTEGER_MINIMUMS[key]


@pytest.mark.parametrize("value", [2.5, 10.0, "10", None])
def test_integer_key_rejects_non_integers(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        LimitsConfig(max_queue=value)
    assert str(caught.value) == f"limits.max_queue must be an integer >= 1, got {value!r}"


@pytest.mark.parametrize("key", sorted(INTEGER_MINIMUMS))
@pytest.mark.parametrize("value", [True, False])
def test_bool_is_rejected_where_an_integer_is_expected(key: str, value: bool) -> None:
    with pytest.raises(ConfigError) as caught:
        with_value(key, value)
    minimum = INTEGER_MINIMUMS[key]
    assert str(caught.value) == f"{key} must be an integer >= {minimum}, got {value}"


@pytest.mark.parametrize("key", sorted(NUMBER_BOUNDS))
def test_bool_is_rejected_where_a_number_is_expected(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_value(key, True)
    assert str(caught.value) == f"{key} must be {number_allowed(key)}, got True"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("limits.hello_timeout", 0, "limits.hello_timeout must be a number > 0, got 0"),
        ("limits.write_delay", -0.5, "limits.write_delay must be a number >= 0, got -0.5"),
        (
            "limits.flush_pause_ratio",
            -1,
            "limits.flush_pause_ratio must be a number >= 0, got -1",
        ),
        ("shutdown.grace", -1, "shutdown.grace must be a number >= 0, got -1"),
        (
            "breaker.open_timeout_multiplier",
            0.5,
            "breaker.open_timeout_multiplier must be a number >= 1, got 0.5",
        ),
        ("metrics.sample_rate", 0, "metrics.sample_rate must be a number > 0 and <= 1, got 0"),
        ("metrics.sample_rate", 1.5, "metrics.sample_rate must be a number > 0 and <= 1, got 1.5"),
        (
            "health.queue_degraded_ratio",
            2,
            "health.queue_degraded_ratio must be a number > 0 and <= 1, got 2",
        ),
        (
            "breaker.failure_rate_threshold",
            1.01,
            "breaker.failure_rate_threshold must be a number > 0 and <= 1, got 1.01",
        ),
        ("history.ttl", math.nan, "history.ttl must be a number > 0, got nan"),
        ("history.ttl", "60", "history.ttl must be a number > 0, got '60'"),
    ],
)
def test_number_out_of_range_names_key_value_and_allowed_range(
    key: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        with_value(key, value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "server.allow_anonymous",
            "yes",
            "server.allow_anonymous must be true or false, got 'yes'",
        ),
        ("server.client_publish", 1, "server.client_publish must be true or false, got 1"),
        ("metrics.log", 0, "metrics.log must be true or false, got 0"),
        (
            "admin.protect_monitoring",
            None,
            "admin.protect_monitoring must be true or false, got None",
        ),
        ("server.host", "", "server.host must be a non-empty string, got ''"),
        ("server.host", 127, "server.host must be a non-empty string, got 127"),
        ("server.cors_origin", "", "server.cors_origin must be a non-empty string, got ''"),
        ("admin.api_key", "", "admin.api_key must be a non-empty string, got ''"),
        ("server.path", "ws", "server.path must be a path starting with '/', got 'ws'"),
        (
            "server.origins",
            ["https://a.example", ""],
            "server.origins must be a list of non-empty strings, got ('https://a.example', '')",
        ),
        (
            "server.origins",
            "https://a.example",
            "server.origins must be a list of non-empty strings, got 'https://a.example'",
        ),
    ],
)
def test_bad_flag_text_or_list_names_key_value_and_what_is_allowed(
    key: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        with_value(key, value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("server.cors_origin", "https://app.example"),
        ("server.cors_origin", None),
        ("admin.api_key", "s3cret"),
        ("admin.api_key", None),
        ("breaker.failure_rate_threshold", 0.5),
        ("breaker.failure_rate_threshold", None),
    ],
)
def test_optional_keys_accept_a_value_or_none(key: str, value: Any) -> None:
    section, name = key.split(".")
    assert getattr(getattr(with_value(key, value), section), name) == value


def test_origins_given_as_a_list_are_stored_as_a_tuple() -> None:
    server = ServerConfig(origins=["https://a.example", "https://b.example"])
    assert server.origins == ("https://a.example", "https://b.example")


def test_section_of_the_wrong_type_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig(limits=3)  # type: ignore[arg-type]
    assert str(caught.value) == "limits must be a LimitsConfig, got 3"


def test_config_is_frozen() -> None:
    config = HubConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.limits.max_queue = 5  # type: ignore[misc]


def test_api_key_is_kept_out_of_repr() -> None:
    assert "s3cret" not in repr(AdminConfig(api_key="s3cret"))
    assert "s3cret" not in repr(with_value("admin.api_key", "s3cret"))


# --------------------------------------------------------------------------------------------
# Cross-field checks


def test_max_open_timeout_below_open_timeout_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        BreakerConfig(open_timeout=30.0, max_open_timeout=10.0)
    assert str(caught.value) == (
        "breaker.max_open_timeout must be >= breaker.open_timeout (30), got 10"
    )


def test_max_open_timeout_equal_to_open_timeout_is_allowed() -> None:
    assert BreakerConfig(open_timeout=30.0, max_open_timeout=30.0).max_open_timeout == 30.0


def test_raising_open_timeout_alone_past_the_default_maximum_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^breaker\.max_open_timeout must be >= "):
        HubConfig.from_dict({"breaker": {"open_timeout": 600}})


def test_raising_open_timeout_with_its_maximum_in_the_same_section_is_allowed() -> None:
    config = HubConfig.from_dict({"breaker": {"open_timeout": 600, "max_open_timeout": 900}})
    assert (config.breaker.open_timeout, config.breaker.max_open_timeout) == (600, 900)


def test_port_above_65535_is_rejected() -> None:
    assert ServerConfig(port=65535).port == 65535
    with pytest.raises(ConfigError) as caught:
        ServerConfig(port=65536)
    assert str(caught.value) == "server.port must be an integer from 0 to 65535, got 65536"


def test_max_depth_above_what_orjson_can_encode_is_rejected() -> None:
    assert LimitsConfig(max_depth=250).max_depth == 250
    with pytest.raises(ConfigError) as caught:
        LimitsConfig(max_depth=251)
    assert str(caught.value) == "limits.max_depth must be an integer from 3 to 250, got 251"


# --------------------------------------------------------------------------------------------
# health.timezone


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])
def test_iana_timezone_is_accepted(zone: str) -> None:
    assert HealthConfig(timezone=zone).timezone == zone


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "America", "", "../etc/passwd", "+02:00", None]
)
def test_unknown_timezone_is_rejected(zone: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        HealthConfig(timezone=zone)
    assert str(caught.value) == f"health.timezone must be {TIMEZONE_ALLOWED}, got {zone!r}"


# --------------------------------------------------------------------------------------------
# Unknown sections and keys in data


def test_unknown_section_is_rejected_with_the_list_of_sections() -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_dict({"limit": {"max_queue": 5}})
    assert str(caught.value) == f"unknown section 'limit'; sections are {SECTIONS}"


def test_unknown_key_is_rejected_with_the_list_of_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_dict({"heartbeat": {"intervall": 5}})
    assert str(caught.value) == "unknown key heartbeat.intervall; keys are interval, timeout"


def test_section_that_is_not_a_table_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_dict({"limits": 5})
    assert str(caught.value) == "limits must be a table of keys, got 5"


def test_merged_changes_only_the_given_keys() -> None:
    config = HubConfig().merged({"limits": {"max_queue": 7}})
    assert config == attrs.evolve(HubConfig(), limits=LimitsConfig(max_queue=7))


# --------------------------------------------------------------------------------------------
# TOML files


def test_empty_file_gives_production(tmp_path: Path) -> None:
    assert HubConfig.from_file(write_toml(tmp_path, "")) == HubConfig.production()


def test_file_values_override_production_defaults(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        [server]
        port = 9000
        origins = ["https://a.example", "https://b.example"]

        [limits]
        max_queue = 50
        hello_timeout = 3   # an integer is fine where a number is expected

        [health]
        timezone = "Europe/Paris"
        """,
    )
    config = HubConfig.from_file(path)
    assert config.server.port == 9000
    assert config.server.origins == ("https://a.example", "https://b.example")
    assert config.limits.max_queue == 50
    assert config.limits.hello_timeout == 3
    assert config.health.timezone == "Europe/Paris"
    assert config.history == HubConfig.production().history


def test_file_accepts_a_path_given_as_str(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[limits]\nmax_queue = 50\n")
    assert HubConfig.from_file(str(path)).limits.max_queue == 50


def test_preset_key_in_file_picks_the_base(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'preset = "testing"\n\n[limits]\nmax_queue = 7\n')
    testing = HubConfig.testing()
    expected = attrs.evolve(testing, limits=attrs.evolve(testing.limits, max_queue=7))
    assert HubConfig.from_file(path) == expected


def test_explicit_base_wins_over_the_preset_key_in_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'preset = "testing"\n')
    assert HubConfig.from_file(path, base=HubConfig.production()) == HubConfig.production()


def test_unknown_preset_in_file_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'preset = "staging"\n')
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_file(path)
    assert str(caught.value) == (
        "preset must be one of development, production, testing, got 'staging'"
    )


def test_unknown_preset_in_file_is_rejected_even_with_an_explicit_base(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'preset = "tesitng"\n')
    with pytest.raises(ConfigError, match=r"^preset must be one of"):
        HubConfig.from_file(path, base=HubConfig.development())


def test_unknown_section_in_file_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[limit]\nmax_queue = 5\n")
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_file(path)
    assert str(caught.value) == f"unknown section 'limit'; sections are {SECTIONS}"


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nprot = 80\n")
    with pytest.raises(ConfigError, match=r"^unknown key server\.prot; keys are allow_anonymous, "):
        HubConfig.from_file(path)


def test_top_level_key_other_than_preset_is_an_unknown_section(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 80\n")
    with pytest.raises(ConfigError, match=r"^unknown section 'port'; "):
        HubConfig.from_file(path)


def test_bad_value_in_file_is_reported_by_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[limits]\nmax_queue = -3\n")
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_file(path)
    assert str(caught.value) == "limits.max_queue must be an integer >= 1, got -3"


def test_invalid_toml_is_reported_with_the_file_name(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[limits\nmax_queue = 5\n")
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_file(path)
    assert str(caught.value).startswith(f"config file {str(path)!r} is not valid TOML: ")


def test_missing_file_is_reported_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_file(path)
    assert str(caught.value).startswith(f"cannot read config file {str(path)!r}: ")


# --------------------------------------------------------------------------------------------
# Environment variables


def test_env_parses_integers_and_floats() -> None:
    config = HubConfig.from_env(
        {
            "WSHUB_LIMITS__MAX_QUEUE": "50",
            "WSHUB_SERVER__PORT": " 9000 ",
            "WSHUB_HISTORY__TTL": "12.5",
            "WSHUB_LIMITS__RATE": "3",
            "WSHUB_METRICS__SAMPLE_RATE": "1e-2",
        }
    )
    assert config.limits.max_queue == 50
    assert config.server.port == 9000
    assert config.history.ttl == 12.5
    assert config.limits.rate == 3.0
    assert config.metrics.sample_rate == 0.01


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_env_parses_booleans(raw: str, expected: bool) -> None:
    base = attrs.evolve(HubConfig(), server=ServerConfig(allow_anonymous=not expected))
    config = HubConfig.from_env({"WSHUB_SERVER__ALLOW_ANONYMOUS": raw}, base=base)
    assert config.server.allow_anonymous is expected


def test_env_parses_comma_separated_lists_skipping_blanks() -> None:
    environ = {"WSHUB_SERVER__ORIGINS": " https://a.example , https://b.example ,, "}
    config = HubConfig.from_env(environ)
    assert config.server.origins == ("https://a.example", "https://b.example")


def test_env_empty_list_means_no_entries() -> None:
    base = attrs.evolve(HubConfig(), server=ServerConfig(origins=("https://a.example",)))
    config = HubConfig.from_env({"WSHUB_SERVER__ORIGINS": ""}, base=base)
    assert config.server.origins == ()


@pytest.mark.parametrize(
    ("variable", "base"),
    [
        ("WSHUB_ADMIN__API_KEY", HubConfig(admin=AdminConfig(api_key="s3cret"))),
        ("WSHUB_SERVER__CORS_ORIGIN", HubConfig(server=ServerConfig(cors_origin="https://x.io"))),
        (
            "WSHUB_BREAKER__FAILURE_RATE_THRESHOLD",
            HubConfig(breaker=BreakerConfig(failure_rate_threshold=0.5)),
        ),
    ],
)
def test_env_empty_value_clears_an_optional_key(variable: str, base: HubConfig) -> None:
    config = HubConfig.from_env({variable: "  "}, base=base)
    assert config == HubConfig()


def test_env_sets_text_and_optional_keys() -> None:
    config = HubConfig.from_env(
        {
            "WSHUB_SERVER__HOST": "0.0.0.0",
            "WSHUB_SERVER__PATH": "/hub",
            "WSHUB_HEALTH__TIMEZONE": "Europe/Paris",
            "WSHUB_ADMIN__API_KEY": "s3cret",
            "WSHUB_BREAKER__FAILURE_RATE_THRESHOLD": "0.5",
        }
    )
    assert (config.server.host, config.server.path) == ("0.0.0.0", "/hub")
    assert config.health.timezone == "Europe/Paris"
    assert config.admin.api_key == "s3cret"
    assert config.breaker.failure_rate_threshold == 0.5


def test_env_empty_value_for_a_required_text_key_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_env({"WSHUB_SERVER__HOST": ""})
    assert str(caught.value) == "server.host must be a non-empty string, got ''"


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("WSHUB_LIMITS__MAX_QUEUE", "ten", "WSHUB_LIMITS__MAX_QUEUE: cannot parse 'ten' as int"),
        ("WSHUB_LIMITS__MAX_QUEUE", "2.5", "WSHUB_LIMITS__MAX_QUEUE: cannot parse '2.5' as int"),
        ("WSHUB_LIMITS__MAX_QUEUE", "", "WSHUB_LIMITS__MAX_QUEUE: cannot parse '' as int"),
        ("WSHUB_HISTORY__TTL", "fast", "WSHUB_HISTORY__TTL: cannot parse 'fast' as float"),
        (
            "WSHUB_SERVER__CLIENT_PUBLISH",
            "maybe",
            "WSHUB_SERVER__CLIENT_PUBLISH: cannot parse 'maybe' as bool",
        ),
        (
            "WSHUB_BREAKER__FAILURE_RATE_THRESHOLD",
            "half",
            "WSHUB_BREAKER__FAILURE_RATE_THRESHOLD: cannot parse 'half' as float | None",
        ),
    ],
)
def test_env_unparsable_value_names_the_variable(variable: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_env({variable: raw})
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("WSHUB_LIMITS__MAX_QUEUE", "-3", "limits.max_queue must be an integer >= 1, got -3"),
        (
            "WSHUB_SERVER__PORT",
            "70000",
            "server.port must be an integer from 0 to 65535, got 70000",
        ),
        (
            "WSHUB_HEALTH__TIMEZONE",
            "Mars/Olympus_Mons",
            f"health.timezone must be {TIMEZONE_ALLOWED}, got 'Mars/Olympus_Mons'",
        ),
        (
            "WSHUB_BREAKER__OPEN_TIMEOUT",
            "600",
            "breaker.max_open_timeout must be >= breaker.open_timeout (600), got 300",
        ),
    ],
)
def test_env_value_that_parses_but_is_invalid_is_rejected_by_key(
    variable: str, raw: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_env({variable: raw})
    assert str(caught.value) == message


def test_env_variables_for_one_section_are_applied_together() -> None:
    environ = {"WSHUB_BREAKER__OPEN_TIMEOUT": "600", "WSHUB_BREAKER__MAX_OPEN_TIMEOUT": "900"}
    config = HubConfig.from_env(environ)
    assert (config.breaker.open_timeout, config.breaker.max_open_timeout) == (600.0, 900.0)


def test_env_unknown_section_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_env({"WSHUB_LIMIT__MAX_QUEUE": "5"})
    assert str(caught.value) == "WSHUB_LIMIT__MAX_QUEUE: unknown section 'limit'"


def test_env_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_env({"WSHUB_LIMITS__MAX_QUEUES": "5"})
    assert str(caught.value) == "WSHUB_LIMITS__MAX_QUEUES: unknown key limits.max_queues"


def test_env_ignores_unrelated_variables() -> None:
    environ = {"HOME": "/root", "OTHER__MAX_QUEUE": "5", "XWSHUB_LIMITS__MAX_QUEUE": "5"}
    assert HubConfig.from_env(environ) == HubConfig.production()


def test_env_preset_picks_the_base() -> None:
    environ = {"WSHUB_PRESET": "testing", "WSHUB_LIMITS__MAX_QUEUE": "7"}
    testing = HubConfig.testing()
    expected = attrs.evolve(testing, limits=attrs.evolve(testing.limits, max_queue=7))
    assert HubConfig.from_env(environ) == expected


def test_env_empty_preset_means_production() -> None:
    assert HubConfig.from_env({"WSHUB_PRESET": ""}) == HubConfig.production()


def test_env_unknown_preset_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_env({"WSHUB_PRESET": "staging"})
    assert str(caught.value) == (
        "preset must be one of development, production, testing, got 'staging'"
    )


def test_env_config_file_is_loaded_and_variables_override_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[limits]\nmax_queue = 50\nmax_batch = 8\n")
    config = HubConfig.from_env({"WSHUB_CONFIG": str(path), "WSHUB_LIMITS__MAX_QUEUE": "70"})
    assert (config.limits.max_queue, config.limits.max_batch) == (70, 8)
    assert config.server == HubConfig.production().server


def test_env_config_file_preset_key_picks_the_base(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'preset = "testing"\n')
    assert HubConfig.from_env({"WSHUB_CONFIG": str(path)}) == HubConfig.testing()


def test_env_preset_wins_over_the_preset_key_in_the_config_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'preset = "testing"\n\n[limits]\nmax_queue = 50\n')
    config = HubConfig.from_env({"WSHUB_CONFIG": str(path), "WSHUB_PRESET": "development"})
    development = HubConfig.development()
    assert config == attrs.evolve(
        development, limits=attrs.evolve(development.limits, max_queue=50)
    )


def test_env_missing_config_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"^cannot read config file "):
        HubConfig.from_env({"WSHUB_CONFIG": str(path)})


def test_env_explicit_base_ignores_preset_and_config_file(tmp_path: Path) -> None:
    environ = {"WSHUB_PRESET": "testing", "WSHUB_CONFIG": str(tmp_path / "absent.toml")}
    assert HubConfig.from_env(environ, base=HubConfig.development()) == HubConfig.development()


def test_env_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WSHUB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WSHUB_PRESET", "development")
    monkeypatch.setenv("WSHUB_HEARTBEAT__INTERVAL", "12")
    config = HubConfig.from_env()
    assert config.heartbeat.interval == 12.0
    assert config.server.allow_anonymous is True


# --------------------------------------------------------------------------------------------
# Presets and round trips


@pytest.mark.parametrize("name", HubConfig.PRESETS)
def test_to_dict_round_trips_every_preset(name: str) -> None:
    config = HubConfig.preset(name)
    assert HubConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", HubConfig.PRESETS)
def test_preset_by_name_matches_its_constructor(name: str) -> None:
    assert HubConfig.preset(name) == getattr(HubConfig, name)()


def test_to_dict_is_plain_json_data_in_section_order() -> None:
    config = with_value("server.origins", ("https://a.example",))
    data = config.to_dict()
    assert list(data) == SECTIONS.split(", ")
    assert data["server"]["origins"] == ["https://a.example"]
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("broker.kind", "postgres", "one of 'memory', 'redis'"),
        (
            "broker.url",
            "http://127.0.0.1:6379",
            "a redis://host:port/db or rediss://host:port/db URL",
        ),
        ("broker.url", "redis://:6379/0", "a redis://host:port/db or rediss://host:port/db URL"),
        ("broker.url", "redis://h:port/0", "a redis://host:port/db or rediss://host:port/db URL"),
        ("broker.prefix", "my app", "1 to 64 characters from [A-Za-z0-9_.:-]"),
        ("broker.prefix", "{tag}", "1 to 64 characters from [A-Za-z0-9_.:-]"),
        ("dedup.content_ids", "yes", "true or false"),
    ],
)
def test_broker_and_dedup_keys_name_the_key_and_what_is_allowed(
    key: str, value: Any, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        with_value(key, value)
    assert str(caught.value) == f"{key} must be {allowed}, got {value!r}"


def test_broker_from_environment() -> None:
    environ = {
        "WSHUB_BROKER__KIND": "redis",
        "WSHUB_BROKER__URL": "rediss://cache.internal:6380/2",
        "WSHUB_BROKER__PREFIX": "app1",
        "WSHUB_BROKER__TIMEOUT": "0.5",
        "WSHUB_BROKER__POOL_SIZE": "4",
        "WSHUB_DEDUP__CONTENT_IDS": "false",
    }
    config = HubConfig.from_env(environ)
    broker = config.broker
    assert (broker.kind, broker.url, broker.prefix) == (
        "redis",
        "rediss://cache.internal:6380/2",
        "app1",
    )
    assert (broker.timeout, broker.pool_size) == (0.5, 4)
    assert config.dedup.content_ids is False
    with pytest.raises(ConfigError, match=r"WSHUB_BROKER__KINDS: unknown key broker\.kinds"):
        HubConfig.from_env({"WSHUB_BROKER__KINDS": "redis"})


def test_to_dict_round_trips_optional_values_and_secrets() -> None:
    config = HubConfig(
        server=ServerConfig(origins=("https://a.example",), cors_origin="https://a.example"),
        breaker=BreakerConfig(failure_rate_threshold=0.25),
        admin=AdminConfig(api_key="s3cret", protect_monitoring=False),
    )
    assert HubConfig.from_dict(config.to_dict()) == config


def test_production_is_the_default_config() -> None:
    assert HubConfig.production() == HubConfig()


def test_unknown_preset_name_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.preset("staging")
    assert str(caught.value) == (
        "preset must be one of development, production, testing, got 'staging'"
    )


def test_development_lets_anonymous_clients_connect_and_publish_production_does_not() -> None:
    development, production = HubConfig.development(), HubConfig.production()
    assert development.server.allow_anonymous
    assert development.server.client_publish
    assert not production.server.allow_anonymous
    assert not production.server.client_publish


def test_development_measures_every_delivery_production_samples() -> None:
    assert HubConfig.development().metrics.sample_rate == 1.0
    assert 0 < HubConfig.production().metrics.sample_rate < 1.0


def test_development_has_lower_thresholds_and_shorter_ttls_than_production() -> None:
    development, production = HubConfig.development(), HubConfig.production()
    assert development.breaker.failure_threshold < production.breaker.failure_threshold
    assert development.breaker.open_timeout < production.breaker.open_timeout
    assert development.history.ttl < production.history.ttl
    assert development.metrics.client_ttl < production.metrics.client_ttl
    assert development.metrics.flush_interval < production.metrics.flush_interval


def test_testing_listens_on_a_free_port_with_tiny_thresholds_and_ttls() -> None:
    testing, development = HubConfig.testing(), HubConfig.development()
    assert testing.server.port == 0
    assert testing.history.ttl < development.history.ttl
    assert testing.dedup.window < development.dedup.window
    assert testing.metrics.client_ttl < development.metrics.client_ttl
    assert testing.breaker.failure_threshold < development.breaker.failure_threshold
    assert testing.breaker.max_open_timeout < development.breaker.max_open_timeout
    assert testing.heartbeat.interval < development.heartbeat.interval
    assert testing.limits.max_queue < development.limits.max_queue
    assert testing.metrics.log is False


# --------------------------------------------------------------------------------------------
# Properties


def _valid_number(key: str) -> st.SearchStrategy[float]:
    low, exclusive, high = NUMBER_BOUNDS[key]
    floats = st.floats(
        min_value=low,
        max_value=high if high is not None else LARGEST,
        exclude_min=exclusive,
        allow_nan=False,
    )
    if high is not None:
        return floats
    smallest_integer = math.floor(low) + 1 if exclusive else math.ceil(low)
    return floats | st.integers(smallest_integer, int(LARGEST)).map(float)


INTEGER_MAXIMUMS = {"server.port": 65535, "limits.max_depth": 250}


def _valid_integer(key: str) -> st.SearchStrategy[int]:
    return st.integers(INTEGER_MINIMUMS[key], INTEGER_MAXIMUMS.get(key, 10**9))


VALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **{key: _valid_integer(key) for key in INTEGER_MINIMUMS},
    **{key: _valid_number(key) for key in NUMBER_BOUNDS},
}
VALID_VALUES["breaker.failure_rate_threshold"] = st.none() | _valid_number(
    "breaker.failure_rate_threshold"
)


@st.composite
def valid_overrides(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    chosen = draw(st.lists(st.sampled_from(sorted(VALID_VALUES)), unique=True))
    overrides: dict[str, dict[str, Any]] = {}
    for dotted in chosen:
        section, key = dotted.split(".")
        overrides.setdefault(section, {})[key] = draw(VALID_VALUES[dotted])
    breaker = overrides.get("breaker", {})
    if "open_timeout" in breaker or "max_open_timeout" in breaker:
        # The one cross-field rule among numbers: keep the backoff ceiling above its start.
        defaults = BreakerConfig()
        breaker["max_open_timeout"] = max(
            breaker.get("max_open_timeout", defaults.max_open_timeout),
            breaker.get("open_timeout", defaults.open_timeout),
        )
    return overrides


@given(
    st.sampled_from(HubConfig.PRESETS),
    valid_overrides(),
)
def test_valid_numbers_build_and_round_trip_through_to_dict(
    preset: str, overrides: dict[str, dict[str, Any]]
) -> None:
    config = HubConfig.from_dict({"preset": preset, **overrides})
    for section, values in overrides.items():
        for key, value in values.items():
            assert getattr(getattr(config, section), key) == value
    assert HubConfig.from_dict(config.to_dict()) == config


@given(st.data())
def test_integers_below_the_minimum_are_always_rejected(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(INTEGER_MINIMUMS)))
    minimum = INTEGER_MINIMUMS[key]
    value = data.draw(st.integers(max_value=minimum - 1))
    with pytest.raises(ConfigError) as caught:
        with_value(key, value)
    assert str(caught.value) == f"{key} must be an integer >= {minimum}, got {value}"


@given(st.data())
def test_numbers_outside_the_bounds_are_always_rejected(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(NUMBER_BOUNDS)))
    low, exclusive, high = NUMBER_BOUNDS[key]
    below = st.floats(max_value=low, exclude_max=not exclusive, allow_nan=False)
    above = st.floats(min_value=high, exclude_min=True) if high is not None else st.nothing()
    value = data.draw(below | above)
    with pytest.raises(ConfigError) as caught:
        with_value(key, value)
    assert str(caught.value) == f"{key} must be {number_allowed(key)}, got {value!r}"
