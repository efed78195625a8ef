"""Tokens for the security suite, minted independently of wshub with PyJWT and cryptography.

Nothing here imports wshub: the suite must not trust the code it tests to make its inputs.
Times are on a fake wall clock, ``WALL_BASE + trio.current_time()``, so that the hub (given
``wall_clock=wall_clock``) and the tokens agree exactly under ``trio.testing.MockClock``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from typing import Any

import jwt
import orjson
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "a-development-secret-of-32-bytes!"  # 33 bytes: HS256 needs 32 or more
OTHER_SECRET = "another-secret-that-is-long-enough"
AUDIENCE = "wshub-tests"
ISSUER = "https://issuer.example"
# A fake wall clock (Unix seconds) that starts at WALL_BASE when the trio clock reads 0.
WALL_BASE = 1_000_000


def wall_clock() -> float:
    """The wall clock the hub under test reads: it moves with the (mock) trio clock."""
    return WALL_BASE + trio.current_time()


def claims(
    sub: str = "alice",
    *,
    ttl: float = 60,
    subscribe: list[str] | None = None,
    publish: list[str] | None = None,
    admin: bool = False,
    now: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A claim set valid for ``ttl`` seconds from ``now`` (default: the fake wall clock's now;
    pass ``time.time()`` for a hub and a client on the real wall clock)."""
    body: dict[str, Any] = {
        "sub": sub,
        "exp": int((wall_clock() if now is None else now) + ttl),
        "aud": AUDIENCE,
        "iss": ISSUER,
        "wshub": {
            "subscribe": ["news"] if subscribe is None else subscribe,
            "publish": [] if publish is None else publish,
            "admin": admin,
        },
    }
    body.update(extra)
    return {key: value for key, value in body.items() if value is not None}


def token(sub: str = "alice", *, secret: str = SECRET, **fields: Any) -> str:
    """An HS256 token for ``sub`` (see ``claims`` for ``fields``)."""
    return jwt.encode(claims(sub, **fields), secret, algorithm="HS256")


def unsigned(body: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A token with ``alg: none`` (or the given header) and an empty signature."""
    return f"{_segment(header or {'alg': 'none', 'typ': 'JWT'})}.{_segment(body)}."


def hmac_signed(body: Any, key: bytes, header: dict[str, Any] | None = None) -> str:
    """An HS256 token signed by hand with ``key``: PyJWT refuses to use a PEM as a secret
    (which is exactly what an algorithm-confusion attacker does) and to encode claims of the
    wrong type, which an issuer with a bug may sign all the same."""
    head = _segment(header or {"alg": "HS256", "typ": "JWT"})
    signing_input = f"{head}.{_segment(body)}"
    digest = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


def _segment(value: Any) -> str:
    # The standard library's JSON: orjson refuses integers past 64 bits, which JSON allows.
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def tampered(signed: str, **changes: Any) -> str:
    """``signed`` with its payload changed and its signature kept."""
    head, payload, signature = signed.split(".")
    padded = payload + "=" * (-len(payload) % 4)
    body = orjson.loads(base64.urlsafe_b64decode(padded))
    body.update(changes)
    return f"{head}.{_segment(body)}.{signature}"


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key for the session (generating one takes a while)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def other_rsa_key() -> rsa.RSAPrivateKey:
    """Another RSA key: a signature by it must not verify against ``rsa_key``."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key (ES256)."""
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def ed25519_key() -> ed25519.Ed25519PrivateKey:
    """An Ed25519 key (EdDSA)."""
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(private: Any) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of ``private``'s public key."""
    key = private.public_key()
    return bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def private_pem(private: Any) -> bytes:
    """The PEM (PKCS #8, unencrypted) of ``private`` itself: what an operator might give the
    hub by mistake instead of the public half."""
    return bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
