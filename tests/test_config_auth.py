"""The ``[auth]`` section: its keys, its cross-checks, the environment, and loading the key file."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wshub.core.config import AuthConfig, ConfigError, HubConfig
from wshub.hub.auth import TokenVerifier

SECRET = "x" * 32


def test_auth_is_off_by_default() -> None:
    config = HubConfig()
    assert config.auth == AuthConfig()
    assert not config.auth.enabled
    assert config.auth.jwt_algorithms == ("HS256",)
    assert TokenVerifier.from_config(config.auth) is None


def test_a_secret_turns_auth_on() -> None:
    auth = HubConfig.from_dict({"auth": {"jwt_secret": SECRET, "leeway": 5}}).auth
    assert auth.enabled
    verifier = TokenVerifier.from_config(auth)
    assert verifier is not None
    assert verifier.algorithms == ("HS256",)
    assert verifier.leeway == 5.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"jwt_secret": SECRET, "jwt_algorithms": ["HS256", "none"]},
            "auth.jwt_algorithms must never list 'none' (unsigned tokens), got ['HS256', 'none']",
        ),
        (
            {"jwt_secret": SECRET, "jwt_algorithms": ["NONE"]},
            "auth.jwt_algorithms must never list 'none' (unsigned tokens), got ['NONE']",
        ),
        (
            {"jwt_secret": SECRET, "jwt_algorithms": ["HS1"]},
            "auth.jwt_algorithms must be a non-empty list of algorithms among HS256, HS384, "
            "HS512, ES256, ES256K, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512,"
            " got 'HS1' in ['HS1']",
        ),
        (
            {"jwt_secret": SECRET, "jwt_algorithms": []},
            "auth.jwt_algorithms must be a non-empty list of algorithms among HS256, HS384, "
            "HS512, ES256, ES256K, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512,"
            " got ()",
        ),
        (
            {"jwt_secret": "short"},
            "auth.jwt_secret must be at least 32 bytes for HS256, got 5 bytes",
        ),
        (
            {"jwt_secret": SECRET, "jwt_algorithms": ["HS256", "HS512"]},
            "auth.jwt_secret must be at least 64 bytes for HS512, got 32 bytes",
        ),
        ({"jwt_secret": ""}, "auth.jwt_secret must be a non-empty string"),
        ({"jwt_secret": 12345678}, "auth.jwt_secret must be a non-empty string"),
        (
            {"jwt_public_key": "/etc/wshub/key.pem"},
            "auth.jwt_algorithms lists HS256, which needs auth.jwt_secret",
        ),
        (
            {"jwt_secret": SECRET, "jwt_algorithms": ["HS256", "RS256"]},
            "auth.jwt_algorithms lists RS256, which needs auth.jwt_public_key "
            "(the path of a PEM public key)",
        ),
        (
            {"jwt_secret": SECRET, "jwt_public_key": "/k.pem", "jwt_algorithms": ["RS256"]},
            "auth.jwt_secret is set but auth.jwt_algorithms lists no HS256, HS384 or HS512 to "
            "use it with, got ['RS256']",
        ),
        (
            {"jwt_secret": SECRET, "jwt_public_key": "/k.pem"},
            "auth.jwt_public_key is set but auth.jwt_algorithms lists no asymmetric algorithm "
            "to use it with, got ['HS256']",
        ),
        ({"leeway": -1}, "auth.leeway must be a number >= 0, got -1"),
        ({"jwt_audience": ""}, "auth.jwt_audience must be a non-empty string, got ''"),
        ({"jwt_issuer": 3}, "auth.jwt_issuer must be a non-empty string, got 3"),
    ],
)
def test_bad_auth_values_are_refused_naming_the_key(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_dict({"auth": values})
    assert str(caught.value) == message


def test_the_secret_is_never_echoed() -> None:
    secret = "s3cret-but-too-short"
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_dict({"auth": {"jwt_secret": secret}})
    assert secret not in str(caught.value)
    config = HubConfig.from_dict({"auth": {"jwt_secret": SECRET + "-visible?"}})
    assert "visible?" not in repr(config)


def test_auth_keys_come_from_the_environment() -> None:
    config = HubConfig.from_env(
        {
            "WSHUB_AUTH__JWT_SECRET": SECRET * 2,
            "WSHUB_AUTH__JWT_ALGORITHMS": "HS256,HS384",
            "WSHUB_AUTH__JWT_AUDIENCE": "wshub",
            "WSHUB_AUTH__JWT_ISSUER": "https://issuer.example",
            "WSHUB_AUTH__LEEWAY": "2.5",
        }
    )
    assert config.auth == AuthConfig(
        jwt_secret=SECRET * 2,
        jwt_algorithms=("HS256", "HS384"),
        jwt_audience="wshub",
        jwt_issuer="https://issuer.example",
        leeway=2.5,
    )


def test_an_environment_value_is_checked_like_a_file_value() -> None:
    with pytest.raises(ConfigError, match="at least 48 bytes for HS384"):
        HubConfig.from_env(
            {"WSHUB_AUTH__JWT_SECRET": SECRET, "WSHUB_AUTH__JWT_ALGORITHMS": "HS384"}
        )


def test_an_unknown_auth_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown key auth\.jwt_key; keys are jwt_algorithms"):
        HubConfig.from_dict({"auth": {"jwt_key": "x"}})
    with pytest.raises(ConfigError, match=r"WSHUB_AUTH__SECRET: unknown key auth\.secret"):
        HubConfig.from_env({"WSHUB_AUTH__SECRET": "x"})


def public_key_file(tmp_path: Path, curve: ec.EllipticCurve) -> Path:
    key = ec.generate_private_key(curve).public_key()
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_the_public_key_file_is_read_when_the_verifier_is_made(tmp_path: Path) -> None:
    path = public_key_file(tmp_path, ec.SECP256R1())
    auth = AuthConfig(jwt_public_key=str(path), jwt_algorithms=("ES256",))
    verifier = TokenVerifier.from_config(auth)
    assert verifier is not None and verifier.algorithms == ("ES256",)


def test_a_missing_public_key_file_names_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    auth = AuthConfig(jwt_public_key=str(missing), jwt_algorithms=("RS256",))
    with pytest.raises(ConfigError) as caught:
        TokenVerifier.from_config(auth)
    assert str(caught.value) == (
        f"auth.jwt_public_key: cannot read {str(missing)!r}: No such file or directory"
    )


def test_a_public_key_on_the_wrong_curve_names_the_key(tmp_path: Path) -> None:
    path = public_key_file(tmp_path, ec.SECP384R1())
    auth = AuthConfig(jwt_public_key=str(path), jwt_algorithms=("ES256",))
    with pytest.raises(ConfigError, match=r"^auth\.jwt_public_key: not a public key for ES256"):
        TokenVerifier.from_config(auth)
