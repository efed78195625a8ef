"""Signed credentials (JWT): verification with PyJWT, rights per stream, and expiry deadlines.

Theory of operation:
- A token is verified only with an algorithm the configuration lists, and each algorithm with
  the key of its own family: HS* with ``auth.jwt_secret``, every asymmetric algorithm with
  ``auth.jwt_public_key``. ``none`` is never listed, so it is never accepted; an HMAC secret is
  never tried as a public key nor the other way round (no algorithm confusion). Signature,
  audience and issuer are PyJWT's checks; no JOSE is parsed here.
- ``exp`` (required) and ``nbf`` are checked here against ``wall_clock`` (``time.time`` by
  default), with ``leeway``: a token is expired from ``exp + leeway`` on. At verification the
  expiry becomes a deadline on the trio clock, ``trio.current_time() + (exp + leeway -
  wall_clock())``, which is what the hub waits on to close an unrefreshed connection with 4005.
  Converting once, at verification, means a test with a wall clock that follows the trio clock
  (``lambda: base + trio.current_time()``) sees the close at exactly ``exp + leeway - base``
  under ``trio.testing.MockClock``.
- Refusals (``TokenRejected``) say which check failed (expired, signature, audience, issuer,
  a missing or ill-typed claim) and never anything about the key.
- Rights are patterns over topics: an exact name, or a prefix ending in ``*``. They never match
  a personal or a system stream: the personal stream ``@<sub>`` is always allowed and
  ``$sys.metrics`` needs the ``admin`` right, whatever the patterns say.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from wshub.core.protocol import is_valid_client_id, stream_kind
from wshub.core.sections import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, AuthConfig, ConfigError

__all__ = [
    "WSHUB_CLAIM",
    "Credential",
    "Rights",
    "TokenRejected",
    "TokenVerifier",
    "UnusableKey",
    "mint_dev_token",
    "mint_token",
]

#: The private claim that carries a token's rights.
WSHUB_CLAIM: Final = "wshub"

_MAX_ECHO = 24  # characters of an attacker-chosen value (an alg name) echoed in a reason

# What PyJWT also loads from a PEM: the hub only verifies, so it must never hold the signing half
# (and PyJWT cannot verify RS*/PS* with one: every token would fail with an AttributeError).
_PRIVATE_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


class TokenRejected(Exception):
    """A token failed verification; ``reason`` says which check, never anything about the key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnusableKey(ValueError):
    """A configured key cannot verify an algorithm it is listed for.

    ``key`` names the configuration key (``auth.jwt_public_key``) so the message can too.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _matches(patterns: Iterable[str], stream: str) -> bool:
    for pattern in patterns:
        if pattern == stream or (pattern[-1:] == "*" and stream.startswith(pattern[:-1])):
            return True
    return False


def _patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    return tuple(patterns)


@attrs.frozen
class Rights:
    """Which topics a client may subscribe to and publish to.

    Each pattern is an exact topic name or a prefix ending in ``*`` (``"chat.*"``; ``"*"`` is
    every topic). Patterns match topics only: see the module notes for personal and system
    streams.
    """

    subscribe: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    publish: tuple[str, ...] = attrs.field(default=(), converter=_patterns)

    def may_subscribe(self, stream: str) -> bool:
        """Whether the topic ``stream`` matches a subscribe pattern."""
        return stream_kind(stream) == "topic" and _matches(self.subscribe, stream)

    def may_publish(self, stream: str) -> bool:
        """Whether the topic ``stream`` matches a publish pattern."""
        return stream_kind(stream) == "topic" and _matches(self.publish, stream)

    @classmethod
    def from_claim(cls, claim: Any) -> tuple[Rights, bool]:
        """The rights and the admin flag in a ``wshub`` claim (absent: none, not admin).

        Raises TokenRejected when the claim is not ``{"subscribe": [str], "publish": [str],
        "admin": bool}`` (every field optional).
        """
        if claim is None:
            return cls(), False
        if not isinstance(claim, dict):
            raise TokenRejected(f"token claim {WSHUB_CLAIM!r} must be an object")
        lists: dict[str, tuple[str, ...]] = {}
        for field in ("subscribe", "publish"):
            patterns = claim.get(field, [])
            if not isinstance(patterns, list) or not all(
                isinstance(p, str) and p for p in patterns
            ):
                raise TokenRejected(
                    f"token claim {WSHUB_CLAIM}.{field} must be a list of non-empty strings"
                )
            lists[field] = tuple(patterns)
        admin = claim.get("admin", False)
        if not isinstance(admin, bool):
            raise TokenRejected(f"token claim {WSHUB_CLAIM}.admin must be true or false")
        return cls(**lists), admin


@attrs.frozen
class Credential:
    """A verified token: who (``subject``), which rights, and until when.

    ``expires`` is the token's ``exp`` (Unix seconds); ``deadline`` the trio time from which
    the token counts as expired (``exp + leeway`` on the trio clock, fixed at verification).
    """

    subject: str
    rights: Rights
    admin: bool
    expires: float
    deadline: float


def _seconds(value: Any) -> float | None:
    """``value`` as finite Unix seconds, or None: not a number (a string, a bool), or a JSON
    integer too large for a float (JSON sets no limit, and arithmetic on one would raise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


class TokenVerifier:
    """Verifies tokens against one configuration (see the module notes).

    ``algorithms`` is the allow-list; each HS* algorithm needs ``secret`` (at least its digest
    size in bytes), each asymmetric one ``public_key_pem``. Raises ValueError for an unknown
    or unusable algorithm and UnusableKey when the public key does not suit an algorithm.
    """

    def __init__(
        self,
        *,
        algorithms: Sequence[str],
        secret: str | None = None,
        public_key_pem: bytes | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not algorithms:
            raise ValueError("at least one algorithm must be allowed")
        self._keys: dict[str, Any] = {}
        for name in algorithms:
            if name in HMAC_ALGORITHMS:
                if secret is None:
                    raise ValueError(f"{name} needs a secret")
                if len(secret.encode()) < HMAC_ALGORITHMS[name]:
                    raise ValueError(f"{name} needs a secret of {HMAC_ALGORITHMS[name]} bytes")
                self._keys[name] = secret.encode()
            elif name in ASYMMETRIC_ALGORITHMS:
                if public_key_pem is None:
                    raise ValueError(f"{name} needs a public key")
                try:
                    # PyJWT parses the PEM once here and checks the key suits the algorithm
                    # (RSA for RS*/PS*, the named curve for ES*, Ed25519/Ed448 for EdDSA).
                    key = jwt.get_algorithm_by_name(name).prepare_key(public_key_pem)
                except (jwt.InvalidKeyError, ValueError, TypeError) as error:
                    raise UnusableKey(
                        "auth.jwt_public_key", f"not a public key for {name}: {error}"
                    ) from None
                if isinstance(key, _PRIVATE_KEYS):
                    raise UnusableKey(
                        "auth.jwt_public_key",
                        f"is a private key; give the public key for {name} (the hub only "
                        "verifies, the private key stays with the token issuer)",
                    )
                self._keys[name] = key
            else:
                raise ValueError(f"unknown or refused algorithm {name!r}")
        self.algorithms = tuple(algorithms)
        self.audience = audience
        self.issuer = issuer
        self.leeway = float(leeway)
        self.wall_clock = wall_clock
        self._jwt = jwt.PyJWT(
            {
                # exp and nbf are checked below against ``wall_clock``; iat is informative.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["sub", "exp"],
                "enforce_minimum_key_length": True,
            }
        )

    @classmethod
    def from_config(
        cls, config: AuthConfig, *, wall_clock: Callable[[], float] = time.time
    ) -> TokenVerifier | None:
        """The verifier ``config`` describes, or None when ``[auth]`` is off.

        Reads the PEM file named by ``auth.jwt_public_key``; raises ConfigError naming the key
        when it cannot be read or does not suit the listed algorithms.
        """
        if not config.enabled:
            return None
        pem = None
        if config.jwt_public_key is not None:
            try:
                pem = Path(config.jwt_public_key).read_bytes()
            except OSError as error:
                raise ConfigError(
                    f"auth.jwt_public_key: cannot read {config.jwt_public_key!r}: "
                    f"{error.strerror or error}"
                ) from None
        try:
            return cls(
                algorithms=config.jwt_algorithms,
                secret=config.jwt_secret,
                public_key_pem=pem,
                audience=config.jwt_audience,
                issuer=config.jwt_issuer,
                leeway=config.leeway,
                wall_clock=wall_clock,
            )
        except ValueError as error:  # UnusableKey names the key; the rest are config's checks
            raise ConfigError(str(error)) from None

    def verify(self, token: str) -> Credential:
        """The credential in ``token``; raises TokenRejected saying which check failed.

        Must run inside trio (the deadline is on the trio clock).
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenRejected("token is malformed (not a signed JWT)") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._keys:
            shown = str(algorithm)[:_MAX_ECHO]
            raise TokenRejected(f"token algorithm {shown!r} is not accepted")
        key = self._keys[algorithm]
        try:
            claims = self._jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
            )
        except jwt.InvalidSignatureError:
            raise TokenRejected("token signature is invalid") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenRejected(f"token has no {error.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("token audience ('aud') is not accepted") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("token issuer ('iss') is not accepted") from None
        except jwt.exceptions.InvalidSubjectError:
            raise TokenRejected("token subject ('sub') must be a string") from None
        except jwt.InvalidAlgorithmError:
            shown = algorithm[:_MAX_ECHO]
            raise TokenRejected(f"token algorithm {shown!r} is not accepted") from None
        except jwt.InvalidTokenError:
            raise TokenRejected("token is malformed") from None
        except jwt.InvalidKeyError:  # cannot happen with the keys checked above; say nothing
            raise TokenRejected("token cannot be verified") from None
        return self._credential(claims)

    def _credential(self, claims: dict[str, Any]) -> Credential:
        now = self.wall_clock()
        expires = _seconds(claims["exp"])
        if expires is None:
            raise TokenRejected("token claim 'exp' must be a number of Unix seconds")
        if now >= expires + self.leeway:
            raise TokenRejected("token expired")
        if claims.get("nbf") is not None:
            not_before = _seconds(claims["nbf"])
            if not_before is None:
                raise TokenRejected("token claim 'nbf' must be a number of Unix seconds")
            if not_before > now + self.leeway:
                raise TokenRejected("token is not valid yet ('nbf')")
        subject = claims["sub"]
        if not is_valid_client_id(subject):
            raise TokenRejected("token subject ('sub') is not a valid client id")
        rights, admin = Rights.from_claim(claims.get(WSHUB_CLAIM))
        deadline = trio.current_time() + (expires + self.leeway - now)
        return Credential(subject, rights, admin, expires, deadline)


def mint_token(
    secret: str,
    subject: str,
    *,
    ttl: float,
    subscribe: Sequence[str] = (),
    publish: Sequence[str] = (),
    admin: bool = False,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """A token for ``subject`` signed with the HMAC ``secret``, valid ``ttl`` seconds from ``now``.

    For development and tests (``wshub token``); a deployment's tokens come from its own
    backend. Raises ValueError for an algorithm that is not HS256, HS384 or HS512.
    """
    if algorithm not in HMAC_ALGORITHMS:
        raise ValueError(f"mint_token signs with HS256, HS384 or HS512, not {algorithm!r}")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": int(issued),
        "exp": int(issued + ttl),
        WSHUB_CLAIM: {"subscribe": list(subscribe), "publish": list(publish), "admin": admin},
    }
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=algorithm)


def mint_dev_token(
    config: AuthConfig,
    subject: str,
    *,
    ttl: float,
    subscribe: Sequence[str] = (),
    publish: Sequence[str] = (),
    admin: bool = False,
) -> str:
    """A token that the hub configured with ``config`` accepts (``wshub token``).

    Signed with ``auth.jwt_secret`` and the first HMAC algorithm ``auth.jwt_algorithms`` lists,
    with ``auth.jwt_audience`` and ``auth.jwt_issuer`` when set. Raises ConfigError when there
    is no secret or no HMAC algorithm to sign with.
    """
    hmac = [name for name in config.jwt_algorithms if name in HMAC_ALGORITHMS]
    if config.jwt_secret is None or not hmac:
        raise ConfigError(
            "auth.jwt_secret is not configured (with an HS256, HS384 or HS512 in "
            "auth.jwt_algorithms): set WSHUB_AUTH__JWT_SECRET or [auth] jwt_secret"
        )
    return mint_token(
        config.jwt_secret,
        subject,
        ttl=ttl,
        subscribe=subscribe,
        publish=publish,
        admin=admin,
        algorithm=hmac[0],
        audience=config.jwt_audience,
        issuer=config.jwt_issuer,
    )
