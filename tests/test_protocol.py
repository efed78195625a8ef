"""The wire protocol, tested with plain strings: parsing, encoding, batching, round trips."""

from __future__ import annotations

import json
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wshub.core.config import LimitsConfig
from wshub.core.protocol import (
    DEFAULT_MAX_DEPTH,
    ERROR_CODES,
    NO_REF,
    SUBPROTOCOL,
    CloseCode,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    Position,
    ProtocolError,
    Publish,
    Published,
    Refresh,
    Refreshed,
    StreamStatus,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    encode_error,
    encode_hello,
    encode_message,
    encode_ping,
    encode_pong,
    encode_publish,
    encode_published,
    encode_refresh,
    encode_refreshed,
    encode_subscribe,
    encode_subscribed,
    encode_unsubscribe,
    encode_unsubscribed,
    encode_welcome,
    is_valid_client_id,
    join_batch,
    nests_deeper_than,
    parse_client_frame,
    parse_publish_body,
    parse_server_frame,
    personal_stream,
    split_batch,
    stream_kind,
)

TOPIC_RULE = "a topic matching [A-Za-z0-9_.:-]{1,200}, '@<client_id>' or '$<name>'"
PERSONAL_RULE = "a personal stream '@' + a client id matching [A-Za-z0-9_.:-]{1,128}"
SYSTEM_RULE = "a system stream '$' + a name matching [A-Za-z0-9_.:-]{1,200}"
CLIENT_TYPES = "hello, subscribe, unsubscribe, publish, ping, refresh"


def compact(example: str) -> str:
    """A PROTOCOL.md example as the encoders write it: same keys in the same order, compact."""
    return orjson.dumps(orjson.loads(example)).decode()


def parse_error(frame: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(frame)
    return caught.value


# --- constants ----------------------------------------------------------------------------------


def test_constants_match_the_protocol() -> None:
    assert SUBPROTOCOL == "wshub.v1"
    assert {
        "bad_request",
        "unknown_type",
        "forbidden",
        "rate_limited",
        "unavailable",
        "too_large",
        "conflict",
        "limit_exceeded",
    } == ERROR_CODES
    assert {code.name: int(code) for code in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "UNSUPPORTED_DATA": 1003,
        "INVALID_PAYLOAD": 1007,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "TRY_AGAIN_LATER": 1013,
        "BAD_HELLO": 4000,
        "SLOW_CONSUMER": 4002,
        "RATE_LIMITED": 4003,
        "HEARTBEAT_TIMEOUT": 4004,
        "CREDENTIAL_EXPIRED": 4005,
    }
    assert isinstance(CloseCode.SLOW_CONSUMER, int)  # passes wherever an int is expected
    assert CloseCode(4002) is CloseCode.SLOW_CONSUMER


def test_protocol_error_is_an_exception_with_code_message_and_ref() -> None:
    error = ProtocolError("forbidden", "no")
    assert isinstance(error, Exception)
    assert (error.code, error.message, error.ref, str(error)) == ("forbidden", "no", NO_REF, "no")
    assert ProtocolError("bad_request", "x", ref=None).ref is None


def test_events_are_frozen() -> None:
    event = parse_client_frame('{"type": "unsubscribe", "stream": "news"}')
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.stream = "other"  # type: ignore[misc, union-attr]


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("news", "topic"),
        ("chat.room-1", "topic"),
        ("a:b_c.d-e", "topic"),
        ("x" * 200, "topic"),
        ("@alice", "personal"),
        ("@" + "a" * 128, "personal"),
        ("$sys.metrics", "system"),
        ("$" + "s" * 200, "system"),
        ("", None),
        ("a b", None),
        ("news\n", None),
        ("caf\u00e9", None),
        ("x" * 201, None),
        ("@", None),
        ("@a b", None),
        ("@@alice", None),
        ("@" + "a" * 129, None),
        ("$", None),
        ("$$sys", None),
        ("$a/b", None),
        ("$" + "s" * 201, None),
    ],
)
def test_stream_kind(name: str, kind: str | None) -> None:
    assert stream_kind(name) == kind


def test_client_ids_and_personal_streams() -> None:
    assert is_valid_client_id("alice.tab-2:x_y")
    assert is_valid_client_id("a" * 128)
    for bad in ["", "a" * 129, "a b", "!!", "al\u00efce", "alice\n", "@alice"]:
        assert not is_valid_client_id(bad)
    assert personal_stream("alice") == "@alice"
    assert stream_kind(personal_stream("alice")) == "personal"


# --- client -> server: parsing ------------------------------------------------------------------


def test_hello_example_from_the_protocol() -> None:
    frame = """{"type": "hello", "client_id": "alice", "token": "optional credential",
 "subscribe": {"news": {"offset": 41, "epoch": "k3j2"}, "chat.room-1": null}}"""
    assert parse_client_frame(frame) == Hello(
        client_id="alice",
        token="optional credential",
        subscribe={"news": Position(41, "k3j2"), "chat.room-1": None},
    )


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "hello", "client_id": "alice"}',
        '{"type": "hello", "client_id": "alice", "token": null, "subscribe": null}',
        '{"type": "hello", "client_id": "alice", "subscribe": {}}',
    ],
)
def test_hello_token_and_subscribe_are_optional(frame: str) -> None:
    assert parse_client_frame(frame) == Hello("alice", None, {})


def test_hello_may_subscribe_to_every_kind_of_stream_and_keeps_their_order() -> None:
    frame = (
        '{"type": "hello", "client_id": "bob", "subscribe": '
        '{"@bob": {"offset": 0, "epoch": "e"}, "$sys.metrics": null, "news": null}}'
    )
    event = parse_client_frame(frame)
    assert isinstance(event, Hello)
    assert list(event.subscribe.items()) == [
        ("@bob", Position(0, "e")),
        ("$sys.metrics", None),
        ("news", None),
    ]


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        ('{"type": "subscribe", "stream": "news"}', Subscribe("news", None)),
        ('{"type": "subscribe", "stream": "news", "position": null}', Subscribe("news", None)),
        (
            '{"type": "subscribe", "stream": "news", "position": {"offset": 41, "epoch": "k3j2"}}',
            Subscribe("news", Position(41, "k3j2")),
        ),
        ('{"type": "unsubscribe", "stream": "news"}', Unsubscribe("news")),
        ('{"type": "unsubscribe", "stream": "$sys.metrics"}', Unsubscribe("$sys.metrics")),
        ('{"type": "ping"}', Ping()),
    ],
)
def test_subscribe_unsubscribe_and_ping(frame: str, event: object) -> None:
    assert parse_client_frame(frame) == event


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        (
            '{"type": "publish", "stream": "news", "data": {"title": "hi"}, "id": "k1", "ref": 7}',
            Publish("news", {"title": "hi"}, "k1", 7),
        ),
        ('{"type": "publish", "stream": "news", "data": 1}', Publish("news", 1, None, NO_REF)),
        (
            '{"type": "publish", "stream": "news", "data": null}',
            Publish("news", None, None, NO_REF),
        ),
        (
            '{"type": "publish", "stream": "news", "data": [], "id": null, "ref": null}',
            Publish("news", [], None, None),
        ),
        ('{"type":"publish","stream":"@bob","data":"x"}', Publish("@bob", "x", None, NO_REF)),
    ],
)
def test_publish(frame: str, event: Publish) -> None:
    parsed = parse_client_frame(frame)
    assert parsed == event
    assert isinstance(parsed, Publish)
    assert (parsed.ref is NO_REF) == (event.ref is NO_REF)  # absent and null stay apart


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        (
            '{"type": "hello", "client_id": "a", "v": 2, "subscribe": {"n": {"offset": 1, '
            '"epoch": "e", "extra": true}}}',
            Hello("a", None, {"n": Position(1, "e")}),
        ),
        ('{"type": "subscribe", "stream": "n", "flags": [1]}', Subscribe("n", None)),
        ('{"type": "unsubscribe", "stream": "n", "why": "bored"}', Unsubscribe("n")),
        ('{"type": "publish", "stream": "n", "data": 0, "ttl": 5}', Publish("n", 0, None, NO_REF)),
        ('{"type": "ping", "ref": 1, "nonce": "x"}', Ping()),
    ],
)
def test_unknown_fields_are_ignored(frame: str, event: object) -> None:
    assert parse_client_frame(frame) == event


def test_bytes_are_parsed_as_utf8_json() -> None:
    frame = '{"type": "publish", "stream": "news", "data": "caf\u00e9"}'.encode()
    assert parse_client_frame(frame) == Publish("news", "caf\u00e9", None, NO_REF)


# --- client -> server: errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code", "message"),
    [
        ('[{"type": "ping"}]', "bad_request", "a frame must be a JSON object, got an array"),
        ('"ping"', "bad_request", "a frame must be a JSON object, got 'ping'"),
        ("null", "bad_request", "a frame must be a JSON object, got null"),
        ("{}", "bad_request", "a frame must have a string field 'type'"),
        ('{"stream": "news"}', "bad_request", "a frame must have a string field 'type'"),
        ('{"type": 1}', "bad_request", "type must be a string, got 1"),
        ('{"type": null}', "bad_request", "type must be a string, got null"),
        ('{"type": ["ping"]}', "bad_request", "type must be a string, got an array"),
        (
            '{"type": "pong"}',
            "unknown_type",
            f"unknown frame type 'pong'; expected one of {CLIENT_TYPES}",
        ),
        (
            '{"type": "PING"}',
            "unknown_type",
            f"unknown frame type 'PING'; expected one of {CLIENT_TYPES}",
        ),
        # hello
        ('{"type": "hello"}', "bad_request", "hello.client_id is required"),
        (
            '{"type": "hello", "client_id": "!!"}',
            "bad_request",
            "hello.client_id must be a string matching [A-Za-z0-9_.:-]{1,128}, got '!!'",
        ),
        (
            '{"type": "hello", "client_id": ""}',
            "bad_request",
            "hello.client_id must be a string matching [A-Za-z0-9_.:-]{1,128}, got ''",
        ),
        (
            '{"type": "hello", "client_id": 42}',
            "bad_request",
            "hello.client_id must be a string matching [A-Za-z0-9_.:-]{1,128}, got 42",
        ),
        (
            '{"type": "hello", "client_id": "a", "token": 5}',
            "bad_request",
            "hello.token must be a string or null, got 5",
        ),
        (
            '{"type": "hello", "client_id": "a", "subscribe": ["news"]}',
            "bad_request",
            "hello.subscribe must be an object mapping stream names to positions or null, "
            "got an array",
        ),
        (
            '{"type": "hello", "client_id": "a", "subscribe": "news"}',
            "bad_request",
            "hello.subscribe must be an object mapping stream names to positions or null, "
            "got 'news'",
        ),
        (
            '{"type": "hello", "client_id": "a", "subscribe": {"a b": null}}',
            "bad_request",
            f"hello.subscribe key must be {TOPIC_RULE}, got 'a b'",
        ),
        (
            '{"type": "hello", "client_id": "a", "subscribe": {"@": null}}',
            "bad_request",
            f"hello.subscribe key must be {PERSONAL_RULE}, got '@'",
        ),
        (
            '{"type": "hello", "client_id": "a", "subscribe": {"news": 3}}',
            "bad_request",
            "hello.subscribe['news'] must be an object or null, got 3",
        ),
        (
            '{"type": "hello", "client_id": "a", "subscribe": '
            '{"chat.room-1": {"offset": -1, "epoch": "e"}}}',
            "bad_request",
            "hello.subscribe['chat.room-1'].offset must be an integer >= 0, got -1",
        ),
        # subscribe and unsubscribe
        ('{"type": "subscribe"}', "bad_request", "subscribe.stream is required"),
        (
            '{"type": "subscribe", "stream": 5}',
            "bad_request",
            "subscribe.stream must be a string, got 5",
        ),
        ('{"type": "unsubscribe"}', "bad_request", "unsubscribe.stream is required"),
        (
            '{"type": "unsubscribe", "stream": null}',
            "bad_request",
            "unsubscribe.stream must be a string, got null",
        ),
        (
            '{"type": "unsubscribe", "stream": "$"}',
            "bad_request",
            f"unsubscribe.stream must be {SYSTEM_RULE}, got '$'",
        ),
        # publish
        ('{"type": "publish", "data": 1}', "bad_request", "publish.stream is required"),
        (
            '{"type": "publish", "stream": true, "data": 1}',
            "bad_request",
            "publish.stream must be a string, got true",
        ),
        ('{"type": "publish", "stream": "news"}', "bad_request", "publish.data is required"),
        (
            '{"type": "publish", "stream": "news", "data": 1, "id": 5}',
            "bad_request",
            "publish.id must be a string of 1 to 200 characters or null, got 5",
        ),
        (
            '{"type": "publish", "stream": "news", "data": 1, "id": ""}',
            "bad_request",
            "publish.id must be a string of 1 to 200 characters or null, got ''",
        ),
        (
            '{"type": "publish", "stream": "news", "data": 1, "id": {"k": 1}}',
            "bad_request",
            "publish.id must be a string of 1 to 200 characters or null, got an object",
        ),
    ],
)
def test_bad_frames_get_a_code_and_a_precise_message(frame: str, code: str, message: str) -> None:
    error = parse_error(frame)
    assert (error.code, error.message) == (code, message)
    assert error.ref is NO_REF


@pytest.mark.parametrize("frame", ["", "{", "not json", '{"type": "ping",}', "NaN", b"\xff\xfe"])
def test_invalid_json_is_a_bad_request(frame: str | bytes) -> None:
    error = parse_error(frame)
    assert error.code == "bad_request"
    assert error.message.startswith("invalid JSON: ")


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", TOPIC_RULE),
        ("a b", TOPIC_RULE),
        ("news/1", TOPIC_RULE),
        ("caf\u00e9", TOPIC_RULE),
        ("@", PERSONAL_RULE),
        ("@a b", PERSONAL_RULE),
        ("@@alice", PERSONAL_RULE),
        ("$", SYSTEM_RULE),
        ("$sys metrics", SYSTEM_RULE),
        ("$$sys", SYSTEM_RULE),
    ],
)
@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe", "publish"])
def test_bad_stream_names_explain_the_rule_for_their_kind(name: str, rule: str, kind: str) -> None:
    frame = {"type": kind, "stream": name, "data": None}
    error = parse_error(orjson.dumps(frame))
    assert (error.code, error.message) == (
        "bad_request",
        f"{kind}.stream must be {rule}, got {name!r}",
    )


def test_overlong_values_are_rejected_with_a_bounded_message() -> None:
    for frame, path in [
        ({"type": "subscribe", "stream": "x" * 201}, "subscribe.stream"),
        ({"type": "subscribe", "stream": "@" + "a" * 129}, "subscribe.stream"),
        ({"type": "subscribe", "stream": "$" + "s" * 201}, "subscribe.stream"),
        ({"type": "hello", "client_id": "a" * 129}, "hello.client_id"),
        ({"type": "publish", "stream": "n", "data": 1, "id": "k" * 201}, "publish.id"),
        ({"type": "hello", "client_id": "a" * 1_000_000}, "hello.client_id"),
    ]:
        error = parse_error(orjson.dumps(frame))
        assert error.code == "bad_request"
        assert error.message.startswith(f"{path} must be ")
        assert error.message.endswith(" characters)")  # '...' plus the length, not the whole value
        assert len(error.message) < 250


@pytest.mark.parametrize(
    ("position", "message"),
    [
        ("[]", "subscribe.position must be an object or null, got an array"),
        ('"k3j2:41"', "subscribe.position must be an object or null, got 'k3j2:41'"),
        ("41", "subscribe.position must be an object or null, got 41"),
        ("{}", "subscribe.position.offset is required"),
        ('{"epoch": "e"}', "subscribe.position.offset is required"),
        (
            '{"offset": 1}',
            "subscribe.position.epoch is required (it may be left out only at offset 0)",
        ),
        (
            '{"offset": true, "epoch": "e"}',
            "subscribe.position.offset must be an integer >= 0, got true",
        ),
        (
            '{"offset": false, "epoch": "e"}',
            "subscribe.position.offset must be an integer >= 0, got false",
        ),
        (
            '{"offset": -1, "epoch": "e"}',
            "subscribe.position.offset must be an integer >= 0, got -1",
        ),
        (
            '{"offset": 1.5, "epoch": "e"}',
            "subscribe.position.offset must be an integer >= 0, got 1.5",
        ),
        (
            '{"offset": 1.0, "epoch": "e"}',
            "subscribe.position.offset must be an integer >= 0, got 1.0",
        ),
        (
            '{"offset": "1", "epoch": "e"}',
            "subscribe.position.offset must be an integer >= 0, got '1'",
        ),
        (
            '{"offset": null, "epoch": "e"}',
            "subscribe.position.offset must be an integer >= 0, got null",
        ),
        (
            '{"offset": 1, "epoch": ""}',
            "subscribe.position.epoch must be a non-empty string, got ''",
        ),
        ('{"offset": 1, "epoch": 7}', "subscribe.position.epoch must be a non-empty string, got 7"),
        (
            '{"offset": 1, "epoch": null}',
            "subscribe.position.epoch must be a non-empty string, got null",
        ),
    ],
)
def test_bad_positions(position: str, message: str) -> None:
    error = parse_error(f'{{"type": "subscribe", "stream": "news", "position": {position}}}')
    assert (error.code, error.message) == ("bad_request", message)


def test_the_largest_offset_json_can_carry_is_a_valid_position() -> None:
    position = '{"offset": 18446744073709551615, "epoch": "e"}'
    frame = f'{{"type": "subscribe", "stream": "n", "position": {position}}}'
    assert parse_client_frame(frame) == Subscribe("n", Position(2**64 - 1, "e"))


@pytest.mark.parametrize("ref", ["r-1", 7, None, {"n": [1, 2]}, [], False])
@pytest.mark.parametrize(
    "frame",
    [
        {"type": "publish", "stream": "news"},
        {"type": "publish", "stream": "news", "data": 1, "id": 5},
        {"type": "publish", "stream": "a b", "data": 1},
        {"type": "subscribe", "stream": "news", "position": {"offset": -1, "epoch": "e"}},
        {"type": "publsh", "stream": "news", "data": 1},
        {"type": 3},
        {},
    ],
)
def test_errors_carry_the_ref_of_the_frame(frame: dict[str, Any], ref: Any) -> None:
    error = parse_error(orjson.dumps({**frame, "ref": ref}))
    assert error.ref == ref
    assert type(error.ref) is type(ref)


def test_errors_carry_no_ref_when_the_frame_had_none() -> None:
    assert parse_error('{"type": "publish", "stream": "news"}').ref is NO_REF
    assert parse_error('[{"ref": 1}]').ref is NO_REF
    assert parse_error('{"ref": 1').ref is NO_REF  # invalid JSON: nothing to echo


# --- server -> client: encoding -----------------------------------------------------------------


def test_encode_welcome_example_from_the_protocol() -> None:
    streams = {
        "news": StreamStatus(epoch="k3j2", offset=57, first=None, recovered=True),
        "@alice": StreamStatus(epoch="x9f1", offset=3, first=None, recovered=True),
    }
    expected = compact("""{"type": "welcome", "client_id": "alice", "session": "opaque",
 "heartbeat": 25, "streams": {"news": {"epoch": "k3j2", "offset": 57, "recovered": true},
             "@alice": {"epoch": "x9f1", "offset": 3, "recovered": true}}}""")
    assert encode_welcome("alice", "opaque", 25, streams) == expected
    assert encode_welcome("alice", "opaque", 25.0, streams) == expected  # integral stays an int


def test_encode_welcome_writes_first_between_offset_and_recovered() -> None:
    streams = {"news": StreamStatus("k3j2", 57, 12, False)}
    assert encode_welcome("a", "s", 2.5, streams) == (
        '{"type":"welcome","client_id":"a","session":"s","heartbeat":2.5,'
        '"streams":{"news":{"epoch":"k3j2","offset":57,"first":12,"recovered":false}}}'
    )
    assert encode_welcome("a", "s", 1, {}) == (
        '{"type":"welcome","client_id":"a","session":"s","heartbeat":1,"streams":{}}'
    )


def test_encode_message_example_from_the_protocol() -> None:
    expected = compact(
        '{"type": "message", "stream": "news", "offset": 42, "id": "9f3c...", '
        '"data": {"title": "hi", "tags": ["a"]}, "ts": 1732230000123}'
    )
    data = {"title": "hi", "tags": ["a"]}
    assert encode_message("news", 42, "9f3c...", data, 1732230000123) == expected


def test_encode_message_rejects_data_that_is_not_json() -> None:
    with pytest.raises(TypeError):
        encode_message("news", 1, "i", {1, 2}, 0)


def test_encode_subscribed_and_unsubscribed_examples_from_the_protocol() -> None:
    assert encode_subscribed("news", StreamStatus("k3j2", 57, None, True)) == compact(
        '{"type": "subscribed", "stream": "news", "epoch": "k3j2", "offset": 57, "recovered": true}'
    )
    assert encode_subscribed("news", StreamStatus("k3j2", 57, 40, False)) == (
        '{"type":"subscribed","stream":"news","epoch":"k3j2","offset":57,"first":40,'
        '"recovered":false}'
    )
    assert encode_unsubscribed("news") == compact('{"type": "unsubscribed", "stream": "news"}')


def test_encode_published_echoes_ref_only_when_sent() -> None:
    assert encode_published("r1", "news", 58, "k1", False) == compact(
        '{"type": "published", "ref": "r1", "stream": "news", "offset": 58, "id": "k1", '
        '"duplicate": false}'
    )
    assert encode_published(None, "news", 58, "k1", True) == (
        '{"type":"published","ref":null,"stream":"news","offset":58,"id":"k1","duplicate":true}'
    )
    assert encode_published(NO_REF, "news", 58, "k1", False) == (
        '{"type":"published","stream":"news","offset":58,"id":"k1","duplicate":false}'
    )


def test_encode_pong_and_error() -> None:
    assert encode_pong() == '{"type":"pong"}'
    assert encode_error("bad_request", "human-readable reason", 3) == compact(
        '{"type": "error", "code": "bad_request", "message": "human-readable reason", "ref": 3}'
    )
    assert encode_error("forbidden", "no") == '{"type":"error","code":"forbidden","message":"no"}'
    assert encode_error("too_large", "x", None) == (
        '{"type":"error","code":"too_large","message":"x","ref":null}'
    )


def test_encode_error_refuses_a_code_the_protocol_does_not_define() -> None:
    with pytest.raises(ValueError, match="unknown error code 'oops'"):
        encode_error("oops", "x")


def test_a_protocol_error_encodes_into_the_error_frame_that_echoes_its_ref() -> None:
    error = parse_error('{"type": "publish", "stream": "news", "ref": "r9"}')
    assert encode_error(error.code, error.message, error.ref) == (
        '{"type":"error","code":"bad_request","message":"publish.data is required","ref":"r9"}'
    )


# --- client side: encoding ----------------------------------------------------------------------


def test_client_encoders_exact_output() -> None:
    assert encode_hello(
        "alice",
        token="optional credential",
        subscribe={"news": Position(41, "k3j2"), "chat.room-1": None},
    ) == compact(
        '{"type": "hello", "client_id": "alice", "token": "optional credential", '
        '"subscribe": {"news": {"offset": 41, "epoch": "k3j2"}, "chat.room-1": null}}'
    )
    assert encode_hello("alice") == '{"type":"hello","client_id":"alice","subscribe":{}}'
    assert encode_subscribe("news", Position(41, "k3j2")) == compact(
        '{"type": "subscribe", "stream": "news", "position": {"offset": 41, "epoch": "k3j2"}}'
    )
    assert encode_subscribe("news") == '{"type":"subscribe","stream":"news"}'
    assert encode_unsubscribe("news") == compact('{"type": "unsubscribe", "stream": "news"}')
    assert encode_publish("news", {"a": 1}, id="k1", ref=2) == (
        '{"type":"publish","stream":"news","data":{"a":1},"id":"k1","ref":2}'
    )
    assert encode_publish("news", None) == '{"type":"publish","stream":"news","data":null}'
    assert encode_publish("news", 1, ref=None) == (
        '{"type":"publish","stream":"news","data":1,"ref":null}'
    )
    assert encode_ping() == '{"type":"ping"}'


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        (encode_hello("alice"), Hello("alice", None, {})),
        (
            encode_hello("a", token="t", subscribe={"n": Position(1, "e"), "@a": None}),
            Hello("a", "t", {"n": Position(1, "e"), "@a": None}),
        ),
        (encode_subscribe("news"), Subscribe("news", None)),
        (
            encode_subscribe("$sys.metrics", Position(0, "e")),
            Subscribe("$sys.metrics", Position(0, "e")),
        ),
        (encode_unsubscribe("news"), Unsubscribe("news")),
        (encode_publish("news", {"x": [1]}), Publish("news", {"x": [1]}, None, NO_REF)),
        (encode_publish("news", None, id="k", ref=None), Publish("news", None, "k", None)),
        (encode_ping(), Ping()),
    ],
)
def test_client_encoders_round_trip_through_the_server_parser(frame: str, event: object) -> None:
    assert parse_client_frame(frame) == event


# --- client side: parsing server frames ---------------------------------------------------------


def test_server_encoders_round_trip_through_the_client_parser() -> None:
    status = StreamStatus("k3j2", 57, 12, False)
    frames_and_events: list[tuple[str, object]] = [
        (
            encode_welcome(
                "alice", "opaque", 25, {"news": status, "@alice": StreamStatus("x", 0, None, True)}
            ),
            Welcome(
                "alice",
                "opaque",
                25.0,
                {"news": status, "@alice": StreamStatus("x", 0, None, True)},
            ),
        ),
        (encode_welcome("a", "s", 0.5, {}), Welcome("a", "s", 0.5, {})),
        (
            encode_message("news", 42, "9f3c", {"a": None}, 17),
            Message("news", 42, "9f3c", {"a": None}, 17),
        ),
        (encode_subscribed("news", status), Subscribed("news", status)),
        (encode_unsubscribed("news"), Unsubscribed("news")),
        (encode_published("r", "news", 58, "k", True), Published("r", "news", 58, "k", True)),
        (encode_published(NO_REF, "n", 1, "k", False), Published(NO_REF, "n", 1, "k", False)),
        (encode_pong(), Pong()),
        (encode_error("rate_limited", "slow down", [1]), Error("rate_limited", "slow down", [1])),
        (encode_error("unavailable", "down"), Error("unavailable", "down", NO_REF)),
    ]
    for frame, event in frames_and_events:
        assert parse_server_frame(frame) == [event]
    batch = join_batch([frame for frame, _ in frames_and_events])
    assert parse_server_frame(batch) == [event for _, event in frames_and_events]


def test_the_client_parser_reads_the_protocol_examples() -> None:
    welcome = """{"type": "welcome", "client_id": "alice", "session": "opaque", "heartbeat": 25,
 "streams": {"news": {"epoch": "k3j2", "offset": 57, "recovered": true},
             "@alice": {"epoch": "x9f1", "offset": 3, "recovered": true}}}"""
    assert parse_server_frame(compact(welcome)) == [
        Welcome(
            "alice",
            "opaque",
            25.0,
            {
                "news": StreamStatus("k3j2", 57, None, True),
                "@alice": StreamStatus("x9f1", 3, None, True),
            },
        )
    ]
    assert parse_server_frame('{"type": "pong", "extra": 1}') == [Pong()]


@pytest.mark.parametrize(
    ("frame", "code", "message"),
    [
        ("{", "bad_request", None),
        ("[]", "bad_request", "a frame must be a JSON object, got an array"),
        ('{"type": "ping"}', "unknown_type", None),
        (
            '{"type": "message", "stream": "n", "offset": 1, "id": "i", "ts": 1}',
            "bad_request",
            "message.data is required",
        ),
        (
            '{"type": "message", "stream": "n", "offset": -2, "id": "i", "data": 1, "ts": 1}',
            "bad_request",
            "message.offset must be an integer >= 0, got -2",
        ),
        (
            '{"type": "welcome", "client_id": "a", "session": "s", "heartbeat": true, '
            '"streams": {}}',
            "bad_request",
            "welcome.heartbeat must be a number, got true",
        ),
        (
            '{"type": "welcome", "client_id": "a", "session": "s", "heartbeat": 1, '
            '"streams": {"n": 1}}',
            "bad_request",
            "welcome.streams['n'] must be an object, got 1",
        ),
        (
            '{"type": "welcome", "client_id": "a", "session": "s", "heartbeat": 1, '
            '"streams": {"n": {"epoch": "e", "offset": 1}}}',
            "bad_request",
            "welcome.streams['n'].recovered is required",
        ),
        (
            '{"type": "subscribed", "stream": "n", "epoch": "e", "offset": 1, "first": "1", '
            '"recovered": true}',
            "bad_request",
            "subscribed.first must be an integer >= 0, got '1'",
        ),
        (
            '{"type": "published", "stream": "n", "offset": 1, "id": "i", "duplicate": 0}',
            "bad_request",
            "published.duplicate must be a boolean, got 0",
        ),
        ('{"type": "error", "code": "x"}', "bad_request", "error.message is required"),
    ],
)
def test_malformed_server_frames_raise(frame: str, code: str, message: str | None) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_server_frame(frame)
    assert caught.value.code == code
    if message is not None:
        assert caught.value.message == message


def test_a_malformed_line_in_a_batch_fails_the_whole_frame() -> None:
    with pytest.raises(ProtocolError):
        parse_server_frame(join_batch([encode_pong(), "{", encode_pong()]))


# --- batching -----------------------------------------------------------------------------------


def test_join_and_split_batch() -> None:
    frames = [encode_pong(), encode_unsubscribed("news"), encode_error("forbidden", "no")]
    assert join_batch(frames) == "\n".join(frames)
    assert split_batch(join_batch(frames)) == frames
    assert join_batch([encode_pong()]) == encode_pong()  # one frame: no newline at all
    assert split_batch("") == []
    assert join_batch([]) == ""
    assert split_batch("\na\n\n  \nb\n") == ["a", "b"]


def test_newlines_inside_data_are_escaped_so_splitting_is_safe() -> None:
    tricky = {"text\nkey": "line 1\nline 2\r\n", "list": ["\n", "\u2028\u2029"], "n": 1}
    message = encode_message("chat.room-1", 3, "id\nwith newline", tricky, 1)
    assert "\n" not in message
    assert "\r" not in message
    batch = join_batch([message, encode_pong(), message])
    assert split_batch(batch) == [message, encode_pong(), message]
    parsed = parse_server_frame(batch)
    assert parsed[0] == parsed[2] == Message("chat.room-1", 3, "id\nwith newline", tricky, 1)
    assert parsed[1] == Pong()


# --- nesting ------------------------------------------------------------------------------------


def nested(depth: int, leaf: Any = 0) -> Any:
    """``leaf`` inside ``depth`` levels of alternating arrays and objects."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_the_default_depth_limit_is_the_config_default() -> None:
    assert LimitsConfig().max_depth == DEFAULT_MAX_DEPTH == 32


@pytest.mark.parametrize(
    ("value", "depth"),
    [(0, 0), ("[[[", 0), ([], 1), ({}, 1), ([[], {"a": [1]}], 3), (nested(40), 40)],
)
def test_nests_deeper_than_counts_containers_only(value: Any, depth: int) -> None:
    assert not nests_deeper_than(value, depth)
    assert nests_deeper_than(value, depth - 1) == (depth > 0)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "bogus", "ref": nested(300)},
        {"type": "publish", "stream": "news", "data": nested(300)},
        {"type": "publish", "stream": "news", "data": 1, "ref": nested(300)},
        {"type": "ping", "pad": nested(40)},
        {"type": "hello", "client_id": "alice", "subscribe": {"news": nested(40)}},
    ],
)
def test_a_frame_nesting_deeper_than_the_limit_is_a_bad_request_naming_it(
    frame: dict[str, Any],
) -> None:
    error = parse_error(json.dumps(frame))
    assert (error.code, error.message) == (
        "bad_request",
        "a frame nests deeper than limits.max_depth (32 levels)",
    )
    # The error frame must itself be encodable, so a ref too deep to echo is left out.
    assert error.ref is NO_REF
    assert orjson.loads(encode_error(error.code, error.message, error.ref))["code"] == "bad_request"


def test_a_frame_at_the_limit_parses_and_one_level_more_does_not() -> None:
    at_limit = {"type": "publish", "stream": "news", "data": nested(31)}  # the frame is level 1
    assert parse_client_frame(json.dumps(at_limit)) == Publish("news", nested(31), None, NO_REF)
    assert parse_error(json.dumps({**at_limit, "data": nested(32)})).code == "bad_request"
    deeper = {**at_limit, "data": nested(50)}
    assert parse_client_frame(json.dumps(deeper), max_depth=51).data == nested(50)
    assert "(50 levels)" in parse_error_with(json.dumps(deeper), max_depth=50).message


def parse_error_with(frame: str | bytes, *, max_depth: int) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(frame, max_depth=max_depth)
    return caught.value


def test_a_too_deep_frame_echoes_a_ref_that_fits_the_error_frame() -> None:
    frame = {"type": "publish", "stream": "news", "data": nested(300), "ref": {"n": [1]}}
    assert parse_error(json.dumps(frame)).ref == {"n": [1]}
    fits = {"type": "bogus", "ref": nested(31)}  # the error frame nests it at levels 2-32
    assert parse_error(json.dumps(fits)).ref == nested(31)


def test_brackets_inside_strings_never_make_a_frame_too_deep() -> None:
    frame = {"type": "publish", "stream": "news", "data": "[{" * 1000, "ref": ["[" * 50]}
    assert parse_client_frame(json.dumps(frame)) == Publish("news", "[{" * 1000, None, ["[" * 50])


def test_many_shallow_containers_are_not_deep() -> None:
    data = [{"a": [i]} for i in range(2000)]
    frame = json.dumps({"type": "publish", "stream": "news", "data": data})
    assert parse_client_frame(frame).data == data  # type: ignore[union-attr]


def test_the_publish_body_follows_the_publish_frame_rules() -> None:
    assert parse_publish_body(b'{"stream": "news", "data": [1], "id": "k"}') == Publish(
        "news", [1], "k", NO_REF
    )
    with pytest.raises(ProtocolError) as caught:
        parse_publish_body(json.dumps({"stream": "news", "data": nested(300)}))
    assert caught.value.message == "the body nests deeper than limits.max_depth (32 levels)"
    with pytest.raises(ProtocolError) as caught:
        parse_publish_body(b"[1]")
    assert caught.value.message == "the body must be a JSON object, got an array"


# --- properties ---------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what JSON (orjson) carries
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
STREAM_NAMES = st.from_regex(r"[@$]?[A-Za-z0-9_.:-]{1,12}", fullmatch=True)
POSITIONS = st.none() | st.fixed_dictionaries(
    {"offset": st.integers(min_value=0, max_value=2**64 - 1), "epoch": st.text()}
)
CLIENT_FRAMES = st.fixed_dictionaries(  # each field valid about half of the time
    {"type": st.sampled_from(["hello", "subscribe", "unsubscribe", "publish", "ping", "pong"])},
    optional={
        "client_id": st.from_regex(r"[A-Za-z0-9_.:-]{1,8}", fullmatch=True) | JSON_VALUES,
        "token": st.text() | JSON_VALUES,
        "subscribe": st.dictionaries(STREAM_NAMES, POSITIONS, max_size=3) | JSON_VALUES,
        "stream": STREAM_NAMES | JSON_VALUES,
        "position": POSITIONS | JSON_VALUES,
        "data": JSON_VALUES,
        "id": st.text(min_size=1, max_size=200) | JSON_VALUES,
        "ref": JSON_VALUES,
    },
)


def encode_client_event(event: object) -> str:
    """The frame a client would send for ``event``, written by the client encoders."""
    match event:
        case Hello(client_id, token, subscribe):
            return encode_hello(client_id, token=token, subscribe=subscribe)
        case Subscribe(stream, position):
            return encode_subscribe(stream, position)
        case Unsubscribe(stream):
            return encode_unsubscribe(stream)
        case Publish(stream, data, message_id, ref):
            return encode_publish(stream, data, id=message_id, ref=ref)
        case Ping():
            return encode_ping()
    raise AssertionError(event)


def parses_or_raises_protocol_error(frame: str | bytes) -> object | None:
    """The event parsed from ``frame``, or None after checking the ProtocolError it raised."""
    try:
        return parse_client_frame(frame)
    except ProtocolError as error:
        code, message = error.code, error.message
    assert code in {"bad_request", "unknown_type"}
    assert isinstance(message, str)
    assert message
    return None


@given(st.text() | st.binary())
def test_arbitrary_text_never_crashes_the_parser(frame: str | bytes) -> None:
    parses_or_raises_protocol_error(frame)


@given(JSON_VALUES)
def test_arbitrary_json_never_crashes_the_parser(value: Any) -> None:
    parses_or_raises_protocol_error(orjson.dumps(value))


@given(CLIENT_FRAMES)
def test_frame_shaped_json_never_crashes_the_parser(frame: dict[str, Any]) -> None:
    event = parses_or_raises_protocol_error(orjson.dumps(frame))
    if event is not None:
        assert type(event).__name__.lower() == frame["type"]
        assert parse_client_frame(encode_client_event(event)) == event


@given(st.text() | JSON_VALUES.map(lambda value: orjson.dumps(value).decode()))
def test_arbitrary_text_never_crashes_the_server_frame_parser(text: str) -> None:
    try:
        parse_server_frame(text)
    except ProtocolError as error:
        code = error.code
    else:
        return
    assert code in {"bad_request", "unknown_type"}


@given(
    stream=st.text(),
    offset=st.integers(min_value=0, max_value=2**64 - 1),
    message_id=st.text(),
    data=JSON_VALUES,
    ts=st.integers(min_value=0, max_value=2**63),
)
def test_encode_message_round_trips_any_json_data(
    stream: str, offset: int, message_id: str, data: Any, ts: int
) -> None:
    frame = encode_message(stream, offset, message_id, data, ts)
    assert "\n" not in frame
    assert list(orjson.loads(frame)) == ["type", "stream", "offset", "id", "data", "ts"]
    assert (
        parse_server_frame(join_batch([frame, frame]))
        == [Message(stream, offset, message_id, data, ts)] * 2
    )


@given(
    stream=STREAM_NAMES,
    data=JSON_VALUES,
    message_id=st.none() | st.text(min_size=1, max_size=200),
    ref=st.just(NO_REF) | JSON_VALUES,
)
def test_encode_publish_round_trips_through_the_server_parser(
    stream: str, data: Any, message_id: str | None, ref: Any
) -> None:
    frame = encode_publish(stream, data, id=message_id, ref=ref)
    assert parse_client_frame(frame) == Publish(stream, data, message_id, ref)


# --- credentials: refresh / refreshed, and the epoch-less position ---------------------------


def test_refresh_is_parsed_and_encoded() -> None:
    assert parse_client_frame('{"type": "refresh", "token": "a.b.c"}') == Refresh("a.b.c")
    assert encode_refresh("a.b.c") == '{"type":"refresh","token":"a.b.c"}'
    assert parse_client_frame(encode_refresh("x.y.z")) == Refresh("x.y.z")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ('{"type": "refresh"}', "refresh.token is required"),
        ('{"type": "refresh", "token": ""}', "refresh.token must be a non-empty string, got ''"),
        (
            '{"type": "refresh", "token": null}',
            "refresh.token must be a non-empty string, got null",
        ),
        ('{"type": "refresh", "token": 5}', "refresh.token must be a non-empty string, got 5"),
    ],
)
def test_bad_refresh_frames_are_bad_requests(frame: str, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(frame)
    assert (caught.value.code, caught.value.message) == ("bad_request", message)


def test_refreshed_is_encoded_with_integral_seconds_and_parsed() -> None:
    assert encode_refreshed(1732233600.0) == '{"type":"refreshed","expires":1732233600}'
    assert encode_refreshed(1732233600.5) == '{"type":"refreshed","expires":1732233600.5}'
    assert parse_server_frame(encode_refreshed(1732233600)) == [Refreshed(1732233600)]


def test_offset_zero_without_epoch_is_a_position_in_whatever_epoch_the_stream_has() -> None:
    frame = '{"type": "subscribe", "stream": "@alice", "position": {"offset": 0}}'
    assert parse_client_frame(frame) == Subscribe("@alice", Position(0, None))
    hello = parse_client_frame(
        '{"type": "hello", "client_id": "a", "subscribe": {"n": {"offset": 0}}}'
    )
    assert isinstance(hello, Hello)
    assert hello.subscribe == {"n": Position(0, None)}
    assert encode_subscribe("@alice", Position(0, None)) == (
        '{"type":"subscribe","stream":"@alice","position":{"offset":0}}'
    )
