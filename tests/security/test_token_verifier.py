"""The token verifier (wshub.hub.auth) alone: every way a token can be wrong, and rights.

Tokens are minted here with PyJWT (tests/security/tokens.py), never with wshub's own minting.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
import trio
from hypothesis import example, given
from hypothesis import strategies as st

from tokens import (
    AUDIENCE,
    ISSUER,
    OTHER_SECRET,
    SECRET,
    WALL_BASE,
    claims,
    ec_key,
    ed25519_key,
    hmac_signed,
    other_rsa_key,
    private_pem,
    public_pem,
    rsa_key,
    tampered,
    token,
    unsigned,
    wall_clock,
)
from wshub.core.protocol import parse_client_frame
from wshub.hub.auth import Rights, TokenRejected, TokenVerifier, UnusableKey


def verifier(**overrides: Any) -> TokenVerifier:
    options: dict[str, Any] = dict(
        algorithms=("HS256",),
        secret=SECRET,
        audience=AUDIENCE,
        issuer=ISSUER,
        leeway=0.0,
        wall_clock=wall_clock,
    )
    options.update(overrides)
    return TokenVerifier(**options)


def rejection(check: TokenVerifier, signed: str) -> str:
    with pytest.raises(TokenRejected) as caught:
        check.verify(signed)
    reason = caught.value.reason
    # Never anything about the key, whatever the check that failed.
    assert SECRET not in reason
    assert "BEGIN" not in reason
    return reason


async def test_a_valid_token_gives_subject_rights_and_a_deadline_on_the_trio_clock(
    autojump_clock: Any,
) -> None:
    await trio.sleep(5)
    signed = token("alice", ttl=60, subscribe=["news", "chat.*"], publish=["chat.*"])
    credential = verifier(leeway=2.0).verify(signed)
    assert credential.subject == "alice"
    assert credential.rights == Rights(subscribe=("news", "chat.*"), publish=("chat.*",))
    assert credential.admin is False
    assert credential.expires == WALL_BASE + 5 + 60
    # exp + leeway, on the trio clock: 5 s in, 60 s of validity and 2 s of leeway.
    assert credential.deadline == 5 + 60 + 2


async def test_expired_token_is_refused_from_exp_plus_leeway_on(autojump_clock: Any) -> None:
    signed = token(ttl=10)
    check = verifier(leeway=3.0)
    await trio.sleep(12.5)
    assert check.verify(signed).deadline == 13.0  # within the leeway: still valid
    await trio.sleep(0.5)
    assert rejection(check, signed) == "token expired"  # exactly exp + leeway: expired


async def test_token_signed_with_another_secret_is_refused() -> None:
    assert rejection(verifier(), token(secret=OTHER_SECRET)) == "token signature is invalid"


async def test_tampered_payload_is_refused() -> None:
    forged = tampered(token("alice"), sub="bob", wshub={"admin": True})
    assert rejection(verifier(), forged) == "token signature is invalid"


@pytest.mark.parametrize(
    "header",
    [{"alg": "none"}, {"alg": "None"}, {"alg": "NONE", "typ": "JWT"}, {"alg": ""}, {}],
    ids=["none", "None", "NONE", "empty", "absent"],
)
async def test_unsigned_token_is_refused_whatever_the_spelling_of_none(
    header: dict[str, Any],
) -> None:
    reason = rejection(verifier(), unsigned(claims(), header))
    assert "is not accepted" in reason


async def test_none_can_never_be_allowed() -> None:
    with pytest.raises(ValueError, match="refused algorithm 'none'"):
        verifier(algorithms=("HS256", "none"))


async def test_hmac_token_signed_with_the_public_key_is_refused() -> None:
    # Algorithm confusion: an attacker who knows the RSA public key signs HS256 with its PEM.
    pem = public_pem(rsa_key())
    check = verifier(algorithms=("RS256",), secret=None, public_key_pem=pem)
    forged = hmac_signed(claims(), pem)
    assert rejection(check, forged) == "token algorithm 'HS256' is not accepted"


@pytest.mark.parametrize(
    ("algorithm", "private"),
    [("RS256", rsa_key), ("PS384", rsa_key), ("ES256", ec_key), ("EdDSA", ed25519_key)],
)
async def test_asymmetric_tokens_verify_with_the_public_key(algorithm: str, private: Any) -> None:
    key = private()
    check = verifier(algorithms=(algorithm,), secret=None, public_key_pem=public_pem(key))
    assert check.verify(jwt.encode(claims("carol"), key, algorithm=algorithm)).subject == "carol"


async def test_token_signed_with_another_private_key_is_refused() -> None:
    check = verifier(algorithms=("RS256",), secret=None, public_key_pem=public_pem(rsa_key()))
    forged = jwt.encode(claims(), other_rsa_key(), algorithm="RS256")
    assert rejection(check, forged) == "token signature is invalid"


async def test_a_public_key_of_the_wrong_kind_is_a_configuration_error() -> None:
    with pytest.raises(UnusableKey, match=r"auth\.jwt_public_key: not a public key for RS256"):
        verifier(algorithms=("RS256",), secret=None, public_key_pem=public_pem(ec_key()))
    with pytest.raises(UnusableKey, match="not a public key for ES256"):
        verifier(algorithms=("ES256",), secret=None, public_key_pem=b"not a pem")


@pytest.mark.parametrize(
    ("algorithm", "private"),
    [("RS256", rsa_key), ("PS256", rsa_key), ("ES256", ec_key), ("EdDSA", ed25519_key)],
)
async def test_a_private_key_given_as_the_public_key_is_a_configuration_error(
    algorithm: str, private: Any
) -> None:
    # PyJWT loads a private PEM too; with RSA every token would then fail to verify with an
    # AttributeError, and in any case the signing key has no business on the hub.
    with pytest.raises(UnusableKey) as caught:
        verifier(algorithms=(algorithm,), secret=None, public_key_pem=private_pem(private()))
    assert str(caught.value) == (
        f"auth.jwt_public_key: is a private key; give the public key for {algorithm} (the hub "
        "only verifies, the private key stays with the token issuer)"
    )


async def test_a_secret_shorter_than_the_digest_is_refused() -> None:
    with pytest.raises(ValueError, match="HS512 needs a secret of 64 bytes"):
        verifier(algorithms=("HS512",), secret=SECRET)


async def test_key_headers_are_not_followed() -> None:
    # jku / x5u / jwk headers name a key the attacker controls; the configured key decides.
    body = claims()
    forged = jwt.encode(
        body,
        OTHER_SECRET,
        algorithm="HS256",
        headers={"jku": "https://attacker.example/keys", "kid": "attacker"},
    )
    assert rejection(verifier(), forged) == "token signature is invalid"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "another-service"}, "token audience ('aud') is not accepted"),
        ({"aud": None}, "token has no 'aud' claim"),
        ({"iss": "https://evil.example"}, "token issuer ('iss') is not accepted"),
        ({"iss": None}, "token has no 'iss' claim"),
        ({"sub": None}, "token has no 'sub' claim"),
        ({"exp": None}, "token has no 'exp' claim"),
        ({"exp": "tomorrow"}, "token claim 'exp' must be a number of Unix seconds"),
        ({"sub": 7}, "token subject ('sub') must be a string"),
        ({"sub": "bob smith"}, "token subject ('sub') is not a valid client id"),
        ({"nbf": WALL_BASE + 30}, "token is not valid yet ('nbf')"),
        ({"wshub": ["news"]}, "token claim 'wshub' must be an object"),
        ({"wshub": {"subscribe": "news"}}, "token claim wshub.subscribe must be a list"),
        ({"wshub": {"publish": [1]}}, "token claim wshub.publish must be a list"),
        ({"wshub": {"admin": "yes"}}, "token claim wshub.admin must be true or false"),
    ],
)
async def test_each_bad_claim_is_refused_with_a_reason_naming_it(
    changes: dict[str, Any], reason: str, autojump_clock: Any
) -> None:
    body = claims()
    body.update(changes)
    body = {key: value for key, value in body.items() if value is not None}
    assert rejection(verifier(), jwt.encode(body, SECRET, algorithm="HS256")).startswith(reason)


async def test_an_audience_is_refused_when_none_is_configured() -> None:
    assert "audience" in rejection(verifier(audience=None), token())


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "a.b", "....", "eyJ.eyJ.x"])
async def test_malformed_tokens_are_refused(garbage: str) -> None:
    assert rejection(verifier(), garbage).startswith("token is malformed")


async def test_missing_wshub_claim_means_no_rights() -> None:
    body = claims()
    del body["wshub"]
    credential = verifier().verify(jwt.encode(body, SECRET, algorithm="HS256"))
    assert credential.rights == Rights()
    assert credential.admin is False


@pytest.mark.parametrize(
    ("stream", "allowed"),
    [
        ("news", True),
        ("news2", False),
        ("chat.room-1", True),
        ("chat.", True),
        ("chat", False),
        ("chatroom", False),
        ("@alice", False),  # personal and system streams are never a pattern's business
        ("$sys.metrics", False),
    ],
)
def test_patterns_are_exact_names_or_prefixes_of_topics(stream: str, allowed: bool) -> None:
    rights = Rights(subscribe=("news", "chat.*"), publish=("news", "chat.*"))
    assert rights.may_subscribe(stream) is allowed
    assert rights.may_publish(stream) is allowed


def test_star_alone_matches_every_topic_and_nothing_else() -> None:
    rights = Rights(subscribe=("*",))
    assert rights.may_subscribe("anything.at:all")
    assert not rights.may_subscribe("@bob")
    assert not rights.may_subscribe("$sys.metrics")
    assert not rights.may_publish("news")


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "hello", "client_id": "alice", "token": "%s"}',
        '{"type": "refresh", "token": "%s"}',
    ],
    ids=["hello", "refresh"],
)
def test_a_parsed_frame_never_shows_its_credential(frame: str) -> None:
    # Hooks receive the hello; whatever prints it (a log line, a traceback) must not leak a
    # token or the admin key that a client sent as one.
    event = parse_client_frame(frame % SECRET)
    assert SECRET not in repr(event)
    assert SECRET not in str(event)


# Any JSON value, integers past a float's range included (JSON sets no limit on them).
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**64])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
CLAIMS = ["sub", "exp", "nbf", "iat", "aud", "iss", "jti", "wshub"]
HEADERS = ["alg", "typ", "kid", "crit", "jku", "b64"]


@given(
    place=st.sampled_from(["claim", "header"]),
    name=st.sampled_from(CLAIMS + HEADERS),
    value=JSON_VALUES,
)
@example(place="claim", name="exp", value=10**400)
@example(place="claim", name="nbf", value=-(10**400))
@example(place="claim", name="wshub", value={"subscribe": [10**400]})
def test_any_value_in_a_signed_token_is_verified_or_refused_with_a_reason(
    place: str, name: str, value: Any
) -> None:
    # A token signed with the right key (an issuer's bug, or a claim wshub does not know) can
    # hold anything: the verifier answers with a credential or TokenRejected, never another
    # exception, which would escape the connection task and stop the hub.
    body = claims(now=WALL_BASE)
    header = {"alg": "HS256", "typ": "JWT"}
    (body if place == "claim" else header)[name] = value
    signed = hmac_signed(body, SECRET.encode(), header)

    async def check() -> str:
        try:
            verifier(wall_clock=lambda: float(WALL_BASE)).verify(signed)
        except TokenRejected as rejected:
            return rejected.reason
        return ""

    assert SECRET not in trio.run(check)
