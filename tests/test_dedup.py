"""Message ids and the de-duplication window."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import attrs
import orjson
import pytest
import trio
import xxhash
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from wshub.core.dedup import Deduplicator, DedupStatistics, canonical_json, message_id, scoped_key

CHILD = Path(__file__).with_name("message_id_child.py")


# --- canonical_json and message_id ----------------------------------------------------------


def test_canonical_json_sorts_keys_without_whitespace() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": None}}) == (
        b'{"a":{"c":null,"d":[1,2]},"b":1}'
    )


def test_canonical_json_keeps_non_ascii_as_raw_utf8() -> None:
    assert canonical_json(["é→😀"]) == '["é→😀"]'.encode()


def test_canonical_json_rejects_non_string_keys() -> None:
    with pytest.raises(TypeError, match="canonical JSON"):
        canonical_json({1: "one"})


def test_canonical_json_rejects_integers_beyond_64_bits() -> None:
    assert canonical_json(2**64 - 1) == b"18446744073709551615"
    with pytest.raises(TypeError, match="canonical JSON"):
        canonical_json(2**64)


def test_message_id_is_pinned_for_a_known_input() -> None:
    assert message_id("news", {"title": "hi"}) == "e83bca10f86ec65a"
    canonical = b'["news",{"title":"hi"}]'
    assert message_id("news", {"title": "hi"}) == format(
        xxhash.xxh3_64_intdigest(canonical), "016x"
    )
    assert message_id("news", {"title": "hi"}) == xxhash.xxh3_64_hexdigest(canonical)


def test_message_id_is_sixteen_lowercase_hex_digits() -> None:
    samples: list[object] = [None, 0, "", [], {}, {"x": 1}]
    for data in samples:
        ident = message_id("s", data)
        assert len(ident) == 16
        assert set(ident) <= set("0123456789abcdef")


def test_message_id_ignores_key_order() -> None:
    assert message_id("news", {"a": 1, "b": {"c": 2, "d": 3}}) == message_id(
        "news", {"b": {"d": 3, "c": 2}, "a": 1}
    )


def test_message_id_hashes_unicode_as_utf8() -> None:
    data = {"a": "é→😀", "b": [1, 2.5, None, True]}
    assert message_id("chat", data) == "73cfb38e6f2dcd50"
    expected = xxhash.xxh3_64_hexdigest('["chat",{"a":"é→😀","b":[1,2.5,null,true]}]'.encode())
    assert message_id("chat", data) == expected


def test_message_id_depends_on_stream_and_data() -> None:
    assert message_id("a", {"x": 1}) != message_id("b", {"x": 1})
    assert message_id("a", {"x": 1}) != message_id("a", {"x": 2})
    assert message_id("a", 1) != message_id("a", 1.0)


def test_explicit_id_wins_over_the_content_hash() -> None:
    assert message_id("news", {"title": "hi"}, id="evt-1") == "evt-1"
    assert message_id("news", {"unencodable": {1: 2}}, id="evt-2") == "evt-2"


def test_message_id_is_identical_in_another_process() -> None:
    cases: list[tuple[str, object]] = [
        ("news", {"title": "hi"}),
        ("chat.room-1", {"b": [1, 2.5, None, True], "a": "é→😀"}),
        ("@alice", None),
        ("$sys.metrics", [{"z": 0}, {"y": -(2**63)}]),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # hash() differs; message ids must not
    child = subprocess.run(
        [sys.executable, str(CHILD)],
        input=orjson.dumps(cases),
        capture_output=True,
        env=env,
        check=True,
        timeout=30,
    )
    assert child.stdout.decode().split() == [message_id(stream, data) for stream, data in cases]


def test_scoped_key_separates_streams_and_publishers() -> None:
    assert scoped_key("news", "alice", "k1") == ("news", "alice", "k1")
    dedup = Deduplicator(clock=MockClock().current_time)
    assert not dedup.is_duplicate(scoped_key("news", "alice", "k1"))
    assert not dedup.is_duplicate(scoped_key("news", "bob", "k1"))
    assert not dedup.is_duplicate(scoped_key("chat", "alice", "k1"))
    assert dedup.is_duplicate(scoped_key("news", "alice", "k1"))


# --- Deduplicator -----------------------------------------------------------------------------


async def test_key_is_duplicate_until_exactly_the_window_ends(autojump_clock: MockClock) -> None:
    dedup = Deduplicator(window=300.0)
    assert not dedup.is_duplicate("k")
    await trio.sleep(299.5)
    assert dedup.is_duplicate("k")
    await trio.sleep(0.5)
    assert trio.current_time() == 300
    assert not dedup.is_duplicate("k")  # forgotten at t + window, and recorded afresh
    await trio.sleep(299)
    assert trio.current_time() == 599
    assert dedup.is_duplicate("k")


def test_key_is_duplicate_one_float_step_before_the_window_ends() -> None:
    clock = MockClock()
    dedup = Deduplicator(window=300.0, clock=clock.current_time)
    dedup.is_duplicate("k")
    clock.jump(math.nextafter(300.0, 0.0))
    assert dedup.is_duplicate("k")
    clock.jump(300.0 - clock.current_time())
    assert clock.current_time() == 300.0
    assert not dedup.is_duplicate("k")


async def test_duplicate_check_does_not_extend_the_window(autojump_clock: MockClock) -> None:
    dedup = Deduplicator(window=10.0)
    dedup.is_duplicate("k")
    await trio.sleep(9)
    assert dedup.is_duplicate("k")
    await trio.sleep(1)
    assert trio.current_time() == 10
    assert not dedup.is_duplicate("k")


def test_get_returns_recorded_value_within_the_window() -> None:
    clock = MockClock()
    dedup = Deduplicator(window=5.0, clock=clock.current_time)
    assert dedup.get("k") is None
    dedup.record("k", {"offset": 7})
    assert dedup.get("k") == {"offset": 7}
    clock.jump(4.5)
    assert dedup.get("k") == {"offset": 7}
    clock.jump(0.5)
    assert dedup.get("k") is None
    stats = dedup.statistics()
    assert (stats.hits, stats.misses) == (2, 2)


def test_record_on_a_live_key_replaces_value_but_keeps_its_time() -> None:
    clock = MockClock()
    dedup = Deduplicator(window=10.0, clock=clock.current_time)
    assert not dedup.is_duplicate("k")
    clock.jump(6)
    dedup.record("k", "result")
    assert dedup.get("k") == "result"
    clock.jump(4)
    assert dedup.get("k") is None


def test_record_on_an_expired_key_starts_a_new_window_at_the_newest_end() -> None:
    clock = MockClock()
    dedup = Deduplicator(window=10.0, max_entries=2, clock=clock.current_time)
    dedup.record("old", 1)
    clock.jump(5)
    dedup.record("young", 2)
    clock.jump(5)
    dedup.record("old", 3)  # expired at 10, re-recorded now: it is now the newest
    assert dedup.expire() == 0
    clock.jump(5)
    assert dedup.expire() == 1  # "young" went at 15; "old" lives until 20
    assert dedup.get("young") is None
    assert dedup.get("old") == 3


def test_is_duplicate_records_true_as_the_value() -> None:
    dedup = Deduplicator(clock=MockClock().current_time)
    dedup.is_duplicate("k")
    assert dedup.get("k") is True


def test_full_table_evicts_the_oldest_entry_and_counts_it() -> None:
    clock = MockClock()
    dedup = Deduplicator(window=100.0, max_entries=3, clock=clock.current_time)
    for key in "abc":
        dedup.is_duplicate(key)
        clock.jump(1)
    assert not dedup.is_duplicate("d")
    assert len(dedup) == 3
    assert dedup.get("a") is None
    assert [dedup.get(key) for key in "bcd"] == [True, True, True]
    assert dedup.statistics().evicted_before_expiry == 1
    assert not dedup.is_duplicate("a")  # evicted early: no longer known
    assert dedup.statistics().evicted_before_expiry == 2


def test_full_table_drops_an_expired_oldest_without_counting_an_eviction() -> None:
    clock = MockClock()
    dedup = Deduplicator(window=10.0, max_entries=2, clock=clock.current_time)
    dedup.is_duplicate("a")
    clock.jump(5)
    dedup.is_duplicate("b")
    clock.jump(5)
    dedup.is_duplicate("c")
    stats = dedup.statistics()
    assert (stats.entries, stats.expired, stats.evicted_before_expiry) == (2, 1, 0)


def test_expire_removes_only_expired_entries_and_counts_them() -> None:
    clock = MockClock()
    dedup = Deduplicator(window=10.0, clock=clock.current_time)
    for key in range(5):
        dedup.record(key)
        clock.jump(1)
    # keys 0..4 recorded at 0..4; now 5; at 12 keys 0, 1 and 2 have expired
    clock.jump(7)
    assert dedup.expire() == 3
    assert len(dedup) == 2
    assert [dedup.get(key) for key in range(5)] == [None, None, None, True, True]
    assert dedup.expire() == 0
    assert dedup.statistics().expired == 3


def test_expired_entries_stay_counted_in_len_until_expire() -> None:
    clock = MockClock()
    dedup = Deduplicator(window=1.0, clock=clock.current_time)
    dedup.record("k")
    clock.jump(2)
    assert len(dedup) == 1
    assert dedup.get("k") is None
    assert dedup.expire() == 1
    assert len(dedup) == 0


def test_statistics_reports_settings_and_counters() -> None:
    dedup = Deduplicator(window=30.0, max_entries=10, clock=MockClock().current_time)
    dedup.is_duplicate("a")
    dedup.is_duplicate("a")
    assert dedup.statistics() == DedupStatistics(
        entries=1, hits=1, misses=1, expired=0, evicted_before_expiry=0, window=30.0, max_entries=10
    )


@pytest.mark.parametrize(("window", "max_entries"), [(0.0, 10), (-1.0, 10), (1.0, 0), (1.0, 2.5)])
def test_deduplicator_rejects_invalid_settings(window: float, max_entries: int) -> None:
    with pytest.raises((ValueError, TypeError)):
        Deduplicator(window=window, max_entries=max_entries)


def test_deduplicator_settings_cannot_change_after_creation() -> None:
    dedup = Deduplicator(clock=MockClock().current_time)
    with pytest.raises(attrs.exceptions.FrozenAttributeError):
        dedup.window = 1.0


# --- property: against a reference model ------------------------------------------------------

operations = st.lists(
    st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.5, 3.0, 7.0]), st.integers(0, 5)), max_size=60
)


@given(operations, st.booleans())
def test_never_reports_a_key_older_than_the_window(
    ops: list[tuple[float, int]], sweep: bool
) -> None:
    window = 3.0
    clock = MockClock()
    dedup = Deduplicator(window=window, clock=clock.current_time)
    recorded_at: dict[int, float] = {}  # the reference model: when each key was last recorded
    for advance, key in ops:
        clock.jump(advance)
        now = clock.current_time()
        if sweep:
            dedup.expire()
        expected = key in recorded_at and now < recorded_at[key] + window
        assert dedup.is_duplicate(key) == expected
        if not expected:
            recorded_at[key] = now
    assert len(dedup) <= len(recorded_at)
