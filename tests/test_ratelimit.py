"""Token bucket: burst, continuous lazy refill, retry hints."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from wshub.core.ratelimit import TokenBucket, TokenBucketStatistics


async def test_bucket_starts_full_and_allows_a_burst(autojump_clock: MockClock) -> None:
    bucket = TokenBucket(rate=1.0, burst=3)
    assert bucket.tokens == 3
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert trio.current_time() == 0


async def test_tokens_refill_at_rate_exactly_when_due(autojump_clock: MockClock) -> None:
    bucket = TokenBucket(rate=4.0, burst=2)
    assert bucket.try_acquire(2)
    assert bucket.retry_after() == 0.25
    await trio.sleep(0.125)
    assert bucket.tokens == 0.5
    assert not bucket.try_acquire()
    await trio.sleep(0.125)
    assert trio.current_time() == 0.25
    assert bucket.try_acquire()
    assert not bucket.try_acquire()


async def test_waiting_retry_after_is_always_enough(autojump_clock: MockClock) -> None:
    bucket = TokenBucket(rate=3.0, burst=5)  # 1/3 s per token does not add up exactly in floats
    assert bucket.try_acquire(5)
    for _ in range(30):
        await trio.sleep(bucket.retry_after())
        assert bucket.try_acquire()
    assert trio.current_time() == pytest.approx(10.0)


async def test_refill_never_exceeds_burst(autojump_clock: MockClock) -> None:
    bucket = TokenBucket(rate=10.0, burst=5)
    assert bucket.try_acquire(3)
    await trio.sleep(3600)
    assert trio.current_time() == 3600
    assert bucket.tokens == 5
    assert bucket.retry_after(5) == 0.0


async def test_retry_after_counts_from_the_current_shortfall(autojump_clock: MockClock) -> None:
    bucket = TokenBucket(rate=2.0, burst=4)
    assert bucket.try_acquire(4)
    await trio.sleep(0.5)  # one token back
    assert bucket.retry_after(1) == 0.0
    assert bucket.retry_after(3) == 1.0
    await trio.sleep(1.0)
    assert trio.current_time() == 1.5
    assert bucket.try_acquire(3)


async def test_refused_acquire_takes_nothing(autojump_clock: MockClock) -> None:
    bucket = TokenBucket(rate=1.0, burst=4)
    assert bucket.try_acquire(3)
    assert not bucket.try_acquire(2)
    assert bucket.tokens == 1
    assert bucket.try_acquire(1)


def test_bucket_can_be_built_outside_a_trio_run() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    assert bucket.burst == 2


def test_bucket_with_an_injected_clock_ignores_a_clock_going_backwards() -> None:
    now = [10.0]
    bucket = TokenBucket(rate=1.0, burst=2, clock=lambda: now[0])
    assert bucket.try_acquire(2)
    now[0] = 5.0
    assert bucket.tokens == 0
    now[0] = 11.0
    assert bucket.tokens == 1


@pytest.mark.parametrize("n", [0, -1, 4])
def test_impossible_requests_raise(n: int) -> None:
    bucket = TokenBucket(rate=1.0, burst=3, clock=MockClock().current_time)
    with pytest.raises(ValueError, match="burst=3"):
        bucket.try_acquire(n)
    with pytest.raises(ValueError, match="burst=3"):
        bucket.retry_after(n)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0), (1.0, 1.5)])
def test_bucket_rejects_invalid_settings(rate: float, burst: int) -> None:
    with pytest.raises((ValueError, TypeError)):
        TokenBucket(rate=rate, burst=burst)


def test_statistics_count_acquired_tokens_and_refusals() -> None:
    bucket = TokenBucket(rate=1.0, burst=3, clock=MockClock().current_time)
    bucket.try_acquire(2)
    bucket.try_acquire(2)
    bucket.try_acquire()
    assert bucket.statistics() == TokenBucketStatistics(
        tokens=0.0, rate=1.0, burst=3, acquired=3, rejected=1
    )
