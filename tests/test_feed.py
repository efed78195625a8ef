"""The node-local feed of the Redis broker: in order, without gaps, whatever pub/sub does."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from wshub.brokers.feed import Feed
from wshub.core.history import StoredMessage


def message(offset: int, stream: str = "news") -> StoredMessage:
    return StoredMessage(stream, offset, f"m{offset}", None, 0, f"frame {offset}", 0.0)


def offsets(messages: list[StoredMessage]) -> list[int]:
    return [m.offset for m in messages]


def test_arrivals_before_start_wait_and_only_newer_than_the_read_go_out() -> None:
    feed = Feed("news")
    for offset in (4, 5, 6):
        assert feed.receive("e1", message(offset)) == []
    assert offsets(feed.start("e1", 5)) == [6]  # 4 and 5 are in the joiner's replay
    assert feed.delivered == 6 and not feed.gap


def test_in_order_arrivals_are_delivered_and_repeats_dropped() -> None:
    feed = Feed("news")
    feed.start("e1", 0)
    assert offsets(feed.receive("e1", message(1))) == [1]
    assert offsets(feed.receive("e1", message(2))) == [2]
    assert feed.receive("e1", message(2)) == []
    assert feed.delivered == 2


def test_a_skipped_offset_asks_for_a_fill_and_the_fill_delivers_in_order() -> None:
    feed = Feed("news")
    feed.start("e1", 3)
    assert feed.receive("e1", message(6)) == []  # 4 and 5 were lost by pub/sub
    assert feed.gap
    assert feed.receive("e1", message(7)) == []
    delivered = feed.fill(6, [message(4), message(5), message(6)])
    assert offsets(delivered) == [4, 5, 6, 7]  # 7 waited ahead and follows the fill
    assert not feed.gap and feed.delivered == 7


def test_a_fill_cut_short_keeps_the_gap() -> None:
    feed = Feed("news")
    feed.start("e1", 0)
    feed.receive("e1", message(5))
    assert offsets(feed.fill(5, [message(1), message(2)])) == [1, 2]
    assert feed.gap  # offsets 3 and 4 still to read
    assert offsets(feed.fill(5, [message(3), message(4), message(5)])) == [3, 4, 5]
    assert not feed.gap


def test_another_epoch_asks_for_a_fill_and_restart_keeps_its_arrivals() -> None:
    feed = Feed("news")
    feed.start("e1", 10)
    assert feed.receive("e2", message(1)) == []
    assert feed.receive("e2", message(2)) == []
    assert feed.gap
    # The fill's read says "e2, newest 1": the broker restarts the feed there.
    assert offsets(feed.restart("e2", 1)) == [2]
    assert feed.epoch == "e2" and feed.delivered == 2 and not feed.gap


def test_an_offset_coming_again_with_other_content_marks_the_feed_diverged() -> None:
    feed = Feed("news")
    feed.start("e1", 0)
    for offset in (1, 2, 3):
        feed.receive("e1", message(offset))
    assert feed.receive("e1", message(2)) == [] and not feed.diverged  # a mere repeat
    rewritten = StoredMessage("news", 2, "other", None, 0, "another frame", 0.0)
    assert feed.receive("e1", rewritten) == []
    assert feed.diverged and feed.gap
    feed.restart("e1", 5)
    assert not feed.diverged


def test_since_answers_from_recent_or_says_it_cannot() -> None:
    feed = Feed("news", recent_size=3)
    feed.start("e1", 0)
    for offset in range(1, 6):
        feed.receive("e1", message(offset))
    assert offsets(feed.since(3) or []) == [4, 5]
    assert feed.since(5) == []
    assert feed.since(1) is None  # 2 is no longer in recent


def test_too_much_ahead_is_dropped_and_filled_from_history() -> None:
    feed = Feed("news", recent_size=2)
    feed.start("e1", 0)
    for offset in (3, 4, 5):  # more than recent_size early arrivals
        feed.receive("e1", message(offset))
    assert feed.gap
    delivered = feed.fill(5, [message(n) for n in range(1, 6)])
    assert offsets(delivered) == [1, 2, 3, 4, 5]


@given(st.randoms(use_true_random=False), st.integers(1, 40))
def test_any_loss_and_reordering_delivers_each_offset_once_in_order(
    rng: random.Random, count: int
) -> None:
    """Pub/sub drops and reorders at random; fills read history; delivery stays exact."""
    history = [message(n) for n in range(1, count + 1)]
    arrivals = [m for m in history if rng.random() < 0.7]
    rng.shuffle(arrivals)
    feed = Feed("news", recent_size=8)
    feed.start("e1", 0)
    out: list[StoredMessage] = []
    for arrival in arrivals:
        out += feed.receive("e1", arrival)
        if feed.gap and rng.random() < 0.5:
            published = rng.randint(feed.delivered, count)  # a read at some moment
            out += feed.fill(published, history[feed.delivered : published])
    while feed.delivered < count:  # the filler keeps going while gaps remain
        out += feed.fill(count, history[feed.delivered :])
    assert offsets(out) == list(range(1, count + 1))
