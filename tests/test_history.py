"""Per-stream history: offsets, epochs, bounds and resume reads."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from wshub.core.history import (
    HistoryFull,
    HistoryStatistics,
    HistoryStore,
    Replay,
    StoredMessage,
    StreamHistory,
    new_epoch,
)
from wshub.core.protocol import Position


def publish(history: StreamHistory, count: int = 1) -> None:
    """Append ``count`` messages the way the hub does: next offset, stored now."""
    for _ in range(count):
        offset = history.next_offset
        history.append(
            StoredMessage(
                stream=history.stream,
                offset=offset,
                id=f"id-{offset}",
                data={"n": offset},
                ts=1_700_000_000_000 + offset,
                frame=f'{{"type":"message","offset":{offset}}}',
                stored_at=history.clock(),
            )
        )


def offsets(replay: Replay) -> list[int]:
    return [message.offset for message in replay.messages]


def new_history(size: int = 10, ttl: float = 60.0) -> tuple[StreamHistory, MockClock]:
    clock = MockClock()
    return StreamHistory("news", size, ttl, clock=clock.current_time), clock


# --- append and bounds -----------------------------------------------------------------------


def test_empty_history_starts_before_offset_one() -> None:
    history, _ = new_history()
    assert (history.last_offset, history.next_offset, history.first_offset) == (0, 1, None)
    assert len(history) == 0


def test_append_assigns_contiguous_offsets() -> None:
    history, _ = new_history()
    publish(history, 3)
    assert (history.first_offset, history.last_offset, history.next_offset) == (1, 3, 4)
    assert offsets(history.read_from(Position(0, history.epoch))) == [1, 2, 3]


def test_append_rejects_an_offset_that_is_not_next() -> None:
    history, _ = new_history()
    publish(history)
    message = StoredMessage("news", 3, "x", None, 0, "{}", 0.0)
    with pytest.raises(ValueError, match="expected 2"):
        history.append(message)
    assert history.last_offset == 1


def test_append_rejects_a_message_of_another_stream() -> None:
    history, _ = new_history()
    with pytest.raises(ValueError, match="'chat'"):
        history.append(StoredMessage("chat", 1, "x", None, 0, "{}", 0.0))


def test_append_rejects_stored_at_going_backwards() -> None:
    history, _ = new_history()
    history.append(StoredMessage("news", 1, "a", None, 0, "{}", 5.0))
    with pytest.raises(ValueError, match="older"):
        history.append(StoredMessage("news", 2, "b", None, 0, "{}", 4.0))


def test_size_bound_drops_the_oldest_messages() -> None:
    history, _ = new_history(size=3)
    publish(history, 5)
    assert len(history) == 3
    assert (history.first_offset, history.last_offset) == (3, 5)


async def test_trim_expired_drops_messages_exactly_at_ttl(autojump_clock: MockClock) -> None:
    history = StreamHistory("news", size=10, ttl=60.0)
    publish(history)  # stored at 0
    await trio.sleep(10)
    publish(history)  # stored at 10
    await trio.sleep(49.5)
    assert history.trim_expired() == 0
    await trio.sleep(0.5)
    assert trio.current_time() == 60
    assert history.trim_expired() == 1
    assert history.first_offset == 2
    await trio.sleep(10)
    assert trio.current_time() == 70
    assert history.trim_expired() == 1
    assert history.read_from(None) == Replay(
        history.epoch, offset=2, first=None, recovered=True, messages=[]
    )
    assert len(history) == 0
    assert history.trim_expired() == 0


def test_trim_expired_keeps_offsets_running_after_history_empties() -> None:
    history, clock = new_history(ttl=1.0)
    publish(history, 2)
    clock.jump(1)
    assert history.trim_expired() == 2
    publish(history)
    assert (history.first_offset, history.last_offset) == (3, 3)


def test_every_history_gets_its_own_epoch() -> None:
    epochs = {StreamHistory("news", 10, 60.0).epoch for _ in range(50)}
    assert len(epochs) == 50
    assert all(len(epoch) == 8 for epoch in epochs)
    assert new_epoch() != new_epoch()


def test_an_explicit_epoch_is_kept() -> None:
    assert StreamHistory("news", 10, 60.0, epoch="k3j2").epoch == "k3j2"


@pytest.mark.parametrize(("size", "ttl"), [(0, 60.0), (-1, 60.0), (10, 0.0), (1.5, 60.0)])
def test_stream_history_rejects_invalid_bounds(size: int, ttl: float) -> None:
    with pytest.raises((ValueError, TypeError)):
        StreamHistory("news", size, ttl)


# --- read_from -------------------------------------------------------------------------------


def test_read_from_none_is_from_now_on() -> None:
    history, _ = new_history()
    publish(history, 3)
    assert history.read_from(None) == Replay(
        history.epoch, offset=3, first=1, recovered=True, messages=[]
    )


def test_read_from_none_on_a_fresh_stream_reports_offset_zero() -> None:
    history, _ = new_history()
    assert history.read_from(None) == Replay(
        history.epoch, offset=0, first=None, recovered=True, messages=[]
    )


def test_read_from_the_last_offset_is_recovered_with_nothing_to_send() -> None:
    history, _ = new_history()
    publish(history, 3)
    replay = history.read_from(Position(3, history.epoch))
    assert (replay.recovered, replay.messages, replay.offset, replay.first) == (True, [], 3, 1)


def test_read_from_a_held_position_replays_what_follows() -> None:
    history, _ = new_history()
    publish(history, 5)
    replay = history.read_from(Position(2, history.epoch))
    assert replay.recovered
    assert offsets(replay) == [3, 4, 5]
    assert [message.frame for message in replay.messages] == [
        '{"type":"message","offset":3}',
        '{"type":"message","offset":4}',
        '{"type":"message","offset":5}',
    ]


def test_read_from_just_before_the_first_held_offset_is_recovered() -> None:
    history, _ = new_history(size=3)
    publish(history, 5)  # holds 3..5
    replay = history.read_from(Position(2, history.epoch))
    assert replay.recovered
    assert offsets(replay) == [3, 4, 5]


def test_read_from_a_position_trimmed_by_size_is_not_recovered() -> None:
    history, _ = new_history(size=3)
    publish(history, 5)  # holds 3..5; a client at 1 missed offset 2
    replay = history.read_from(Position(1, history.epoch))
    assert not replay.recovered
    assert (replay.first, replay.offset) == (3, 5)
    assert offsets(replay) == [3, 4, 5]


def test_read_from_a_position_trimmed_by_age_is_not_recovered() -> None:
    history, clock = new_history(ttl=10.0)
    publish(history, 2)
    clock.jump(5)
    publish(history, 2)
    clock.jump(5)
    assert history.trim_expired() == 2  # holds 3..4
    replay = history.read_from(Position(1, history.epoch))
    assert not replay.recovered
    assert (replay.first, offsets(replay)) == (3, [3, 4])
    assert history.read_from(Position(2, history.epoch)).recovered


def test_read_from_a_fully_expired_history_is_not_recovered_and_sends_nothing() -> None:
    history, clock = new_history(ttl=10.0)
    publish(history, 4)
    clock.jump(10)
    history.trim_expired()
    assert history.read_from(Position(2, history.epoch)) == Replay(
        history.epoch, offset=4, first=None, recovered=False, messages=[]
    )


def test_read_from_the_last_offset_of_a_fully_expired_history_is_recovered() -> None:
    history, clock = new_history(ttl=10.0)
    publish(history, 4)
    clock.jump(10)
    history.trim_expired()
    assert history.read_from(Position(4, history.epoch)).recovered


def test_read_from_another_epoch_replays_everything_held() -> None:
    history, _ = new_history(size=3)
    publish(history, 5)
    replay = history.read_from(Position(4, "not-" + history.epoch))
    assert not replay.recovered
    assert (replay.epoch, replay.offset, replay.first) == (history.epoch, 5, 3)
    assert offsets(replay) == [3, 4, 5]


def test_read_from_another_epoch_of_an_empty_stream_is_not_recovered() -> None:
    history, _ = new_history()
    replay = history.read_from(Position(0, "old-epoch"))
    assert (replay.recovered, replay.messages, replay.offset) == (False, [], 0)


def test_read_from_beyond_the_last_offset_is_treated_as_another_epoch() -> None:
    history, _ = new_history()
    publish(history, 3)
    replay = history.read_from(Position(9, history.epoch))
    assert not replay.recovered
    assert offsets(replay) == [1, 2, 3]


def test_read_from_a_negative_offset_reads_like_zero() -> None:
    history, _ = new_history()
    publish(history, 2)
    assert history.read_from(Position(-5, history.epoch)) == history.read_from(
        Position(0, history.epoch)
    )
    assert history.read_from(Position(-5, history.epoch)).recovered


# --- {"offset": 0} without an epoch: everything history still holds ----------------------------


def test_offset_zero_without_epoch_replays_everything_when_offset_one_is_held() -> None:
    history, _ = new_history()
    publish(history, 3)
    replay = history.read_from(Position(0, None))
    assert replay.recovered
    assert (replay.epoch, replay.offset, replay.first) == (history.epoch, 3, 1)
    assert offsets(replay) == [1, 2, 3]


def test_offset_zero_without_epoch_after_trimming_is_not_recovered_and_shows_the_gap() -> None:
    history, _ = new_history(size=3)
    publish(history, 5)
    replay = history.read_from(Position(0, None))
    assert not replay.recovered
    # The client missed offsets 1 to first - 1 = 2, and gets everything still held.
    assert (replay.first, offsets(replay)) == (3, [3, 4, 5])


def test_offset_zero_without_epoch_on_a_stream_never_published_is_recovered() -> None:
    history, _ = new_history()
    replay = history.read_from(Position(0, None))
    assert (replay.recovered, replay.messages, replay.offset, replay.first) == (True, [], 0, None)


def test_offset_zero_without_epoch_after_everything_expired_is_not_recovered() -> None:
    history, clock = new_history(ttl=10.0)
    publish(history, 2)
    clock.jump(10.0)
    assert history.trim_expired() == 2
    replay = history.read_from(Position(0, None))
    assert (replay.recovered, replay.messages, replay.offset, replay.first) == (False, [], 2, None)


def test_read_from_returns_a_copy_the_history_does_not_change() -> None:
    history, _ = new_history(size=2)
    publish(history, 2)
    replay = history.read_from(Position(0, history.epoch))
    publish(history, 2)
    assert offsets(replay) == [1, 2]


# --- HistoryStore ----------------------------------------------------------------------------


def new_store(max_streams: int = 3) -> tuple[HistoryStore, MockClock]:
    clock = MockClock()
    store = HistoryStore(size=5, ttl=10.0, max_streams=max_streams, clock=clock.current_time)
    return store, clock


def test_store_creates_each_stream_once() -> None:
    store, _ = new_store()
    assert store.get("news") is None
    news = store.get_or_create("news")
    assert store.get_or_create("news") is news
    assert store.get("news") is news
    assert (news.stream, news.size, news.ttl) == ("news", 5, 10.0)
    assert "news" in store
    assert len(store) == 1


def test_store_raises_history_full_beyond_max_streams() -> None:
    store, _ = new_store(max_streams=2)
    store.get_or_create("a")
    store.get_or_create("b")
    with pytest.raises(HistoryFull, match="'c'") as raised:
        store.get_or_create("c")
    assert (raised.value.stream, raised.value.max_streams) == ("c", 2)
    assert store.get_or_create("a") is store.get("a")  # existing streams still served
    assert len(store) == 2


def test_streams_made_by_subscribing_have_their_own_pool() -> None:
    clock = MockClock()
    store = HistoryStore(
        size=5, ttl=10.0, max_streams=2, max_subscribed=2, clock=clock.current_time
    )
    store.get_or_create("s1", subscribing=True)
    store.get_or_create("s2", subscribing=True)
    with pytest.raises(HistoryFull, match="max_subscribed_streams") as raised:
        store.get_or_create("s3", subscribing=True)
    assert raised.value.subscribing
    # The main pool is untouched: a published or personal stream still has room.
    store.get_or_create("@alice")
    # The first publish to a subscribed topic moves it to the main pool, if there is room...
    store.get_or_create("s1")
    assert store.statistics() == HistoryStatistics(streams=3, messages=0, subscribed_only=1)
    store.get_or_create("s3", subscribing=True)  # ...which frees a place in its own
    with pytest.raises(HistoryFull, match="maximum of 2 streams"):
        store.get_or_create("s2")  # no room left in the main pool: it stays subscribed-only
    assert store.get_or_create("s2", subscribing=True) is store.get("s2")
    assert store.statistics().subscribed_only == 2


def test_forgetting_a_subscribed_only_stream_frees_its_place() -> None:
    clock = MockClock()
    store = HistoryStore(
        size=5, ttl=10.0, max_streams=5, max_subscribed=1, clock=clock.current_time
    )
    store.get_or_create("s1", subscribing=True)
    assert store.forget_idle(in_use=()) == 0
    clock.jump(10.0)
    assert store.forget_idle(in_use=()) == 1
    store.get_or_create("s2", subscribing=True)
    store.remove("s2")
    store.get_or_create("s3", subscribing=True)
    assert store.statistics().subscribed_only == 1


def test_removed_stream_comes_back_in_a_new_epoch() -> None:
    store, _ = new_store()
    old = store.get_or_create("news")
    publish(old, 2)
    assert store.remove("news") is old
    assert store.remove("news") is None
    new = store.get_or_create("news")
    assert new.epoch != old.epoch
    assert new.next_offset == 1
    assert not new.read_from(Position(2, old.epoch)).recovered


def test_store_trims_every_stream_and_reports_statistics() -> None:
    store, clock = new_store()
    publish(store.get_or_create("a"), 2)
    clock.jump(5)
    publish(store.get_or_create("b"), 3)
    assert store.statistics() == HistoryStatistics(streams=2, messages=5)
    clock.jump(5)
    assert store.trim_expired() == 2
    assert store.statistics() == HistoryStatistics(streams=2, messages=3)
    assert sorted(history.stream for history in store) == ["a", "b"]


def test_store_iteration_allows_removing_streams() -> None:
    store, _ = new_store()
    for name in "abc":
        store.get_or_create(name)
    for history in store:
        store.remove(history.stream)
    assert len(store) == 0


# --- property: contiguous offsets and exact replays ------------------------------------------

history_operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 6)),
        st.tuples(st.just("wait"), st.sampled_from([0.5, 1.0, 3.0, 5.0])),
        st.tuples(st.just("trim"), st.just(0)),
    ),
    max_size=40,
)


@given(history_operations, st.integers(1, 8))
def test_offsets_stay_contiguous_and_replays_are_exact(
    ops: list[tuple[str, float]], size: int
) -> None:
    history, clock = new_history(size=size, ttl=4.0)
    for kind, amount in ops:
        if kind == "publish":
            publish(history, int(amount))
        elif kind == "wait":
            clock.jump(amount)
        else:
            history.trim_expired()
        last = history.last_offset
        everything = offsets(history.read_from(Position(0, "other")))
        assert len(everything) <= size
        if everything:
            assert everything == list(range(everything[0], last + 1))
            assert history.first_offset == everything[0]
        else:
            assert history.first_offset is None
    held = offsets(history.read_from(Position(0, "other")))
    for seen in range(-1, history.last_offset + 2):
        replay = history.read_from(Position(seen, history.epoch))
        if replay.recovered:
            assert offsets(replay) == list(range(max(seen, 0) + 1, history.last_offset + 1))
        else:
            first = history.first_offset
            assert seen > history.last_offset or first is None or seen + 1 < first
            assert offsets(replay) == held
