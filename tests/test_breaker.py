"""Circuit breaker behaviour under virtual time: exact thresholds, timeouts and backoff."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from wshub.core.breaker import CircuitBreaker
from wshub.core.breaker_registry import BreakerRegistry, BreakerRegistryFull
from wshub.core.breaker_state import (
    BreakerPermit,
    BreakerState,
    BreakerStatistics,
    CircuitOpenError,
)
from wshub.core.config import HubConfig
from wshub.core.sections import BreakerConfig

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Boom(Exception):
    """The dependency failed."""


@attrs.define
class FakeClock:
    """A clock the test moves by hand."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


async def call_failing(breaker: CircuitBreaker, after: float = 0.0) -> None:
    async with breaker:
        if after:
            await trio.sleep(after)
        raise Boom


async def fail(breaker: CircuitBreaker, times: int = 1, after: float = 0.0) -> None:
    """Make ``times`` calls through ``breaker``, each raising Boom after ``after`` seconds."""
    for _ in range(times):
        with pytest.raises(Boom):
            await call_failing(breaker, after)


async def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        async with breaker:
            pass


async def open_then_half_open(breaker: CircuitBreaker) -> None:
    """Trip a failure_threshold=1 breaker now and sleep until it reads HALF_OPEN."""
    await fail(breaker)
    await trio.sleep(breaker.open_timeout)
    assert breaker.state is HALF_OPEN


# ---------------------------------------------------------------------------- CLOSED


async def test_trips_after_exactly_failure_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker("svc", failure_threshold=3)
    await fail(breaker, 2)
    assert breaker.state is CLOSED
    await fail(breaker)
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError):
        await succeed(breaker)


async def test_success_resets_the_failure_run() -> None:
    breaker = CircuitBreaker("svc", failure_threshold=3)
    await fail(breaker, 2)
    await succeed(breaker)
    await fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.statistics().consecutive_failures == 2
    await fail(breaker)
    assert breaker.state is OPEN


async def test_closed_breaker_does_not_checkpoint(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker("svc")
    with trio.CancelScope() as scope:
        scope.cancel()
        await succeed(breaker)  # a checkpoint here would raise Cancelled
    assert not scope.cancelled_caught


async def test_call_returns_the_result_and_propagates_errors() -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1)

    async def add(a: int, b: int) -> int:
        return a + b

    async def broken() -> None:
        raise Boom

    assert await breaker.call(add, 2, 3) == 5
    with pytest.raises(Boom):
        await breaker.call(broken)
    with pytest.raises(CircuitOpenError):
        await breaker.call(add, 1, 1)


async def test_nested_async_with_in_one_task_releases_each_permit() -> None:
    breaker = CircuitBreaker("svc", failure_threshold=2)

    async def nested_then_boom() -> None:
        async with breaker:
            async with breaker:
                assert breaker.statistics().active_calls == 2
            raise Boom

    with pytest.raises(Boom):
        await nested_then_boom()
    stats = breaker.statistics()
    assert (stats.active_calls, stats.successes, stats.failures) == (0, 1, 1)


# ---------------------------------------------------------------------------- OPEN


async def test_open_error_reports_exact_retry_after(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, open_timeout=60.0)
    await fail(breaker)
    await trio.sleep(25.0)
    with pytest.raises(CircuitOpenError) as caught:
        await succeed(breaker)
    assert caught.value.name == "svc"
    assert caught.value.retry_after == 35.0
    assert str(caught.value) == "circuit 'svc' is open; retry after 35.000s"
    assert breaker.retry_after() == 35.0
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.name, copy.retry_after) == ("svc", 35.0)


async def test_open_turns_half_open_exactly_at_open_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, open_timeout=60.0)
    await fail(breaker)
    await trio.sleep_until(59.5)
    assert breaker.state is OPEN
    await trio.sleep_until(60.0)
    assert trio.current_time() == 60.0
    assert breaker.state is HALF_OPEN
    assert breaker.retry_after() == 0.0


async def test_lazy_transition_is_dated_when_it_fell_due(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, open_timeout=60.0)
    await fail(breaker)
    await trio.sleep_until(75.0)
    stats = breaker.statistics()
    assert stats.state is HALF_OPEN
    assert stats.last_transition_time == 60.0


async def test_failed_probes_multiply_open_timeout_up_to_the_cap(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker(
        "svc",
        failure_threshold=1,
        open_timeout=10.0,
        open_timeout_multiplier=3.0,
        max_open_timeout=50.0,
    )
    await fail(breaker)
    half_open_times = []
    for expected_timeout in (30.0, 50.0, 50.0):
        await trio.sleep(breaker.retry_after() or 0.0)
        assert breaker.state is HALF_OPEN
        half_open_times.append(trio.current_time())
        await fail(breaker)
        assert breaker.statistics().open_timeout == expected_timeout
        assert breaker.retry_after() == expected_timeout
    assert half_open_times == [10.0, 40.0, 90.0]


async def test_closing_restores_the_base_open_timeout(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, success_threshold=1, open_timeout=10.0)
    await open_then_half_open(breaker)
    await fail(breaker)  # probe fails at 10: open for 20
    await trio.sleep(20.0)
    await succeed(breaker)  # probe succeeds at 30: closed
    assert breaker.statistics().open_timeout == 10.0
    await fail(breaker)
    assert breaker.retry_after() == 10.0
    assert trio.current_time() == 30.0


# ---------------------------------------------------------------------------- HALF_OPEN


async def test_half_open_admits_at_most_max_calls(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker(
        "svc",
        failure_threshold=1,
        open_timeout=10.0,
        half_open_max_calls=3,
        success_threshold=3,
        half_open_timeout=30.0,
    )
    await open_then_half_open(breaker)
    admitted: list[int] = []
    retry_afters: list[float | None] = []

    async def probe(index: int) -> None:
        try:
            async with breaker:
                admitted.append(index)
                await trio.sleep(1.0)
        except CircuitOpenError as error:
            retry_afters.append(error.retry_after)

    async with trio.open_nursery() as nursery:
        for index in range(7):
            nursery.start_soon(probe, index)
    assert len(admitted) == 3
    # Rejected while full: retry once the oldest probe's half_open_timeout has run out.
    assert retry_afters == [30.0] * 4
    assert trio.current_time() == 11.0
    assert breaker.state is CLOSED
    assert breaker.statistics().rejections == 4


async def test_success_threshold_successes_close_it(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, success_threshold=2, open_timeout=10.0)
    await open_then_half_open(breaker)
    await succeed(breaker)
    assert breaker.state is HALF_OPEN
    await succeed(breaker)
    assert breaker.state is CLOSED


async def test_one_failed_probe_reopens_it(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, success_threshold=3, open_timeout=10.0)
    await open_then_half_open(breaker)
    await succeed(breaker, 2)
    await fail(breaker)
    assert breaker.state is OPEN
    assert breaker.retry_after() == 20.0


async def test_cancelled_probe_returns_its_permit_without_counting(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, open_timeout=10.0)

    async def hang(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with breaker:
            task_status.started()
            await trio.sleep_forever()

    await open_then_half_open(breaker)
    async with trio.open_nursery() as nursery:
        await nursery.start(hang)
        assert breaker.statistics().active_probes == 1
        with pytest.raises(CircuitOpenError):
            await succeed(breaker)
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    assert trio.current_time() == 15.0
    stats = breaker.statistics()
    assert (stats.state, stats.active_probes, stats.active_calls) == (HALF_OPEN, 0, 0)
    assert (stats.failures, stats.successes) == (1, 0)
    await succeed(breaker)  # the slot is free again
    assert breaker.statistics().successes == 1


@pytest.mark.parametrize("noticed_at", [40.0, 45.0])
async def test_probe_holding_its_permit_past_half_open_timeout_reopens_it(
    autojump_clock: trio.abc.Clock, noticed_at: float
) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, open_timeout=10.0, half_open_timeout=30.0)

    async def slow_probe() -> None:
        async with breaker:
            await trio.sleep(100.0)

    await open_then_half_open(breaker)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_probe)  # admitted at 10, so it times out at 40
        await trio.sleep_until(39.5)
        assert breaker.state is HALF_OPEN
        await trio.sleep_until(noticed_at)
        stats = breaker.statistics()
        assert (stats.state, stats.last_transition_time) == (OPEN, 40.0)
        assert (stats.failures, stats.open_timeout, stats.active_probes) == (2, 20.0, 0)
        assert breaker.retry_after() == 60.0 - noticed_at
    # The late success at 110 is ignored: no success, and the reopened breaker
    # (open from 40 to 60) is back in HALF_OPEN rather than closed.
    assert trio.current_time() == 110.0
    stats = breaker.statistics()
    assert (stats.state, stats.successes, stats.active_calls) == (HALF_OPEN, 0, 0)


async def test_outcome_admitted_under_an_earlier_state_is_ignored(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=2, success_threshold=1, open_timeout=10.0)

    async def slow_success() -> None:
        async with breaker:
            await trio.sleep(15.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_success)
        await trio.sleep(1.0)
        await fail(breaker, 2)  # OPEN at 1, HALF_OPEN at 11
    assert trio.current_time() == 15.0
    stats = breaker.statistics()
    assert (stats.state, stats.successes, stats.active_calls) == (HALF_OPEN, 0, 0)


async def test_failure_admitted_before_reset_is_not_counted(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail, breaker, 1, 5.0)
        await trio.sleep(1.0)
        breaker.reset()
    assert breaker.state is CLOSED
    assert breaker.statistics().failures == 0


# ---------------------------------------------------------------------------- outcomes


async def test_rate_mode_trips_on_failure_rate_once_minimum_calls_are_in() -> None:
    breaker = CircuitBreaker(
        "svc",
        failure_threshold=1,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        clock=FakeClock(),
    )
    await fail(breaker, 3)  # count mode is off: one failure would have tripped it
    assert breaker.state is CLOSED
    await succeed(breaker)  # 3 of 4 failed
    assert breaker.state is OPEN


async def test_rate_mode_trips_exactly_at_the_threshold() -> None:
    breaker = CircuitBreaker("svc", failure_rate_threshold=0.5, minimum_calls=4, clock=FakeClock())
    await succeed(breaker, 2)
    await fail(breaker)
    assert breaker.state is CLOSED
    await fail(breaker)  # 2 of 4
    assert breaker.state is OPEN


@pytest.mark.parametrize(("later", "expected"), [(9.5, OPEN), (10.0, CLOSED)])
async def test_rate_mode_window_forgets_outcomes_window_seconds_old(
    autojump_clock: trio.abc.Clock, later: float, expected: BreakerState
) -> None:
    breaker = CircuitBreaker("svc", failure_rate_threshold=0.5, minimum_calls=4, window=10.0)
    await fail(breaker, 3)
    await trio.sleep_until(later)
    await succeed(breaker)  # within the window: 3 of 4 failed; at 10.0 only this success is left
    assert breaker.state is expected


async def test_excluded_exceptions_are_neutral() -> None:
    breaker = CircuitBreaker("svc", failure_threshold=2, exclude=(KeyError,))
    await fail(breaker)
    with pytest.raises(KeyError):
        async with breaker:
            raise KeyError("missing")
    stats = breaker.statistics()
    assert (stats.consecutive_failures, stats.successes, stats.failures) == (1, 0, 1)
    await fail(breaker)  # the neutral outcome did not break the run
    assert breaker.state is OPEN


async def test_is_failure_predicate_picks_the_failures() -> None:
    class Status(Exception):
        def __init__(self, code: int) -> None:
            self.code = code

    breaker = CircuitBreaker(
        "svc", failure_threshold=1, is_failure=lambda e: getattr(e, "code", 500) >= 500
    )
    with pytest.raises(Status):
        async with breaker:
            raise Status(404)
    assert breaker.state is CLOSED
    with pytest.raises(Status):
        async with breaker:
            raise Status(503)
    assert breaker.state is OPEN


async def test_raising_predicate_counts_a_failure_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_predicate(error: BaseException) -> bool:
        raise TypeError("bug")

    breaker = CircuitBreaker("svc", failure_threshold=1, is_failure=broken_predicate)
    with caplog.at_level(logging.ERROR, logger="wshub.breaker"):
        await fail(breaker)
    assert breaker.state is OPEN
    assert [r.name for r in caplog.records] == ["wshub.breaker"]


async def test_exception_group_fails_when_any_leaf_fails() -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, exclude=(KeyError,))
    with pytest.raises(ExceptionGroup):
        async with breaker:
            raise ExceptionGroup("all excluded", [KeyError("a"), KeyError("b")])
    assert breaker.state is CLOSED
    with pytest.raises(ExceptionGroup):
        async with breaker:
            raise ExceptionGroup("one real", [KeyError("a"), Boom()])
    assert breaker.state is OPEN


def test_base_exceptions_that_are_not_exceptions_are_neutral() -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, clock=FakeClock())
    breaker.release(breaker.acquire_nowait(), KeyboardInterrupt())
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.failures, stats.successes) == (CLOSED, 1, 0, 0)


def test_releasing_a_permit_twice_raises() -> None:
    breaker = CircuitBreaker("svc", clock=FakeClock())
    permit = breaker.acquire_nowait()
    breaker.release(permit)
    with pytest.raises(RuntimeError, match="released twice"):
        breaker.release(permit)
    assert breaker.statistics().successes == 1


# ---------------------------------------------------------------------------- operator controls


async def test_force_open_rejects_without_retry_after_until_reset(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker("svc", open_timeout=10.0)
    breaker.force_open()
    await trio.sleep(1000.0)
    with pytest.raises(CircuitOpenError) as caught:
        await succeed(breaker)
    assert caught.value.retry_after is None
    assert str(caught.value) == "circuit 'svc' is forced open"
    stats = breaker.statistics()
    assert (stats.state, stats.forced_open, stats.last_transition_time) == (OPEN, True, 0.0)
    breaker.reset()
    await succeed(breaker)
    assert breaker.statistics().forced_open is False


async def test_disable_admits_everything_and_records_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, open_timeout=10.0)
    await fail(breaker)
    breaker.disable()
    assert breaker.state is CLOSED
    await fail(breaker, 5)
    await succeed(breaker)
    stats = breaker.statistics()
    assert (stats.state, stats.disabled, stats.calls, stats.failures) == (CLOSED, True, 1, 1)
    breaker.reset()
    await fail(breaker)
    assert breaker.state is OPEN


async def test_reset_clears_the_failure_run_and_the_backoff(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=2, open_timeout=10.0)
    await fail(breaker, 2)
    await trio.sleep(10.0)
    await fail(breaker)  # probe failed: open timeout 20
    breaker.reset()
    stats = breaker.statistics()
    assert (stats.state, stats.open_timeout, stats.consecutive_failures) == (CLOSED, 10.0, 0)
    await fail(breaker)
    assert breaker.state is CLOSED  # one failure of the two needed


# ---------------------------------------------------------------------------- listeners


async def test_listeners_get_every_transition_in_order(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, success_threshold=1, open_timeout=10.0)
    seen: list[tuple[str, BreakerState, BreakerState, float]] = []
    breaker.add_listener(lambda b, old, new: seen.append((b.name, old, new, trio.current_time())))
    await fail(breaker)
    await trio.sleep(12.0)
    assert breaker.state is HALF_OPEN
    await succeed(breaker)
    breaker.force_open()
    breaker.reset()
    assert seen == [
        ("svc", CLOSED, OPEN, 0.0),
        ("svc", OPEN, HALF_OPEN, 12.0),  # called when noticed
        ("svc", HALF_OPEN, CLOSED, 12.0),
        ("svc", CLOSED, OPEN, 12.0),
        ("svc", OPEN, CLOSED, 12.0),
    ]


async def test_raising_listener_is_logged_and_does_not_break_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        raise ValueError("listener bug")

    seen: list[BreakerState] = []
    breaker = CircuitBreaker("svc", failure_threshold=1, clock=FakeClock())
    breaker.add_listener(broken)
    breaker.add_listener(lambda b, old, new: seen.append(new))
    with caplog.at_level(logging.ERROR, logger="wshub.breaker"):
        await fail(breaker)
    assert breaker.state is OPEN
    assert seen == [OPEN]
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is not None


# ---------------------------------------------------------------------------- statistics, config


async def test_statistics_report_the_counters(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=2, open_timeout=10.0)
    await succeed(breaker, 3)
    await fail(breaker, 2)
    await trio.sleep(4.0)
    with pytest.raises(CircuitOpenError):
        await succeed(breaker)
    assert breaker.statistics() == BreakerStatistics(
        name="svc",
        state=OPEN,
        consecutive_failures=2,
        calls=5,
        successes=3,
        failures=2,
        rejections=1,
        open_timeout=10.0,
        opened_count=1,
        last_transition_time=0.0,
        forced_open=False,
        disabled=False,
        active_calls=0,
        active_probes=0,
    )


def test_from_config_copies_the_breaker_knobs() -> None:
    config = HubConfig.testing().breaker
    clock = FakeClock()
    breaker = CircuitBreaker.from_config("hook", config, clock=clock)
    assert (breaker.name, breaker.clock) == ("hook", clock)
    for key in ("failure_threshold", "success_threshold", "open_timeout", "max_open_timeout"):
        assert getattr(breaker, key) == getattr(config, key)
    assert breaker.half_open_timeout == config.half_open_timeout == 1.0


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_threshold": 0},
        {"open_timeout": 0.0},
        {"open_timeout_multiplier": 0.5},
        {"failure_rate_threshold": 1.5},
        {"open_timeout": 100.0, "max_open_timeout": 50.0},
    ],
)
def test_invalid_settings_are_rejected(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker("svc", **settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- registry


def test_registry_creates_breakers_from_its_config_once() -> None:
    registry = BreakerRegistry(BreakerConfig(failure_threshold=7), clock=FakeClock())
    first = registry.get("db")
    assert registry.get("db") is first
    assert first.failure_threshold == 7
    registry.get("cache")
    assert len(registry) == 2
    assert "db" in registry
    assert "queue" not in registry
    assert [b.name for b in registry] == ["db", "cache"]
    assert set(registry.statistics()) == {"db", "cache"}
    assert registry.statistics()["db"].state is CLOSED


def test_registry_bound_defaults_to_config_max_breakers() -> None:
    assert BreakerRegistry(BreakerConfig(max_breakers=7)).max_breakers == 7
    assert BreakerRegistry().config == BreakerConfig()
    assert BreakerRegistry(max_breakers=3).max_breakers == 3


def test_registry_evicts_least_recently_used_idle_closed_breaker() -> None:
    registry = BreakerRegistry(max_breakers=2, clock=FakeClock())
    registry.get("a")
    registry.get("b")
    registry.get("a")  # now "b" is the least recently used
    registry.get("c")
    assert [b.name for b in registry] == ["a", "c"]


def test_registry_never_evicts_busy_open_or_disabled_breakers() -> None:
    registry = BreakerRegistry(max_breakers=3, clock=FakeClock())
    registry.get("open").force_open()
    registry.get("disabled").disable()
    busy = registry.get("busy")
    permit = busy.acquire_nowait()
    with pytest.raises(BreakerRegistryFull, match="'new'"):
        registry.get("new")
    assert len(registry) == 3
    busy.release(permit)
    registry.get("new")
    assert [b.name for b in registry] == ["open", "disabled", "new"]


def test_evictable_only_when_closed_enabled_and_without_calls_in_flight() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("svc", failure_threshold=1, open_timeout=5.0, clock=clock)
    assert breaker.evictable
    permit = breaker.acquire_nowait()
    assert not breaker.evictable
    breaker.release(permit, Boom())
    assert breaker.state is OPEN
    assert not breaker.evictable
    clock.now = 5.0
    assert breaker.state is HALF_OPEN
    assert not breaker.evictable
    breaker.disable()
    assert not breaker.evictable
    breaker.reset()
    assert breaker.evictable


def test_registry_listeners_reach_existing_and_future_breakers() -> None:
    registry = BreakerRegistry(BreakerConfig(failure_threshold=1), clock=FakeClock())
    seen: list[tuple[str, BreakerState]] = []
    registry.get("early")
    registry.add_listener(lambda b, old, new: seen.append((b.name, new)))
    registry.get("late")
    for name in ("early", "late"):
        registry.get(name).force_open()
    assert seen == [("early", OPEN), ("late", OPEN)]


# ---------------------------------------------------------------------------- property

_ERRORS: dict[str, Callable[[], BaseException | None]] = {
    "success": lambda: None,
    "failure": Boom,
    "excluded": lambda: KeyError("neutral"),
    "interrupt": KeyboardInterrupt,
}
# (kind, which held permit, how it ends or how many seconds pass). Starts and failures are
# weighted up so that most runs trip the breaker and crowd its half-open slots.
_start = st.just(("start", 0, ""))
_finish = st.tuples(
    st.just("finish"),
    st.integers(0, 10),
    st.sampled_from(["failure", "failure", "success", "excluded", "interrupt"]),
)
_advance = st.tuples(st.just("advance"), st.just(0), st.sampled_from(["0.5", "2", "7"]))
_operations = st.lists(
    st.one_of(_start, _start, _finish, _finish, _advance), min_size=20, max_size=80
)


@given(
    operations=_operations,
    failure_threshold=st.integers(1, 2),
    success_threshold=st.integers(1, 3),
    max_calls=st.integers(1, 3),
)
def test_half_open_never_has_more_than_max_calls_probes_out(
    operations: list[tuple[str, int, str]],
    failure_threshold: int,
    success_threshold: int,
    max_calls: int,
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "prop",
        failure_threshold=failure_threshold,
        success_threshold=success_threshold,
        open_timeout=5.0,
        max_open_timeout=20.0,
        half_open_max_calls=max_calls,
        half_open_timeout=3.0,
        exclude=(KeyError,),
        clock=clock,
    )
    transitions = [0]
    breaker.add_listener(lambda b, old, new: transitions.__setitem__(0, transitions[0] + 1))
    # (permit, transitions seen when admitted, state when admitted, time when admitted)
    held: list[tuple[BreakerPermit, int, BreakerState, float]] = []
    for kind, index, argument in operations:
        if kind == "start":
            before = breaker.state
            retry_after: float | None = None
            try:
                held.append((breaker.acquire_nowait(), transitions[0], before, clock.now))
            except CircuitOpenError as error:
                retry_after = error.retry_after
            if before is OPEN or retry_after is not None:
                assert before is not CLOSED
                assert retry_after is not None
                assert 0 < retry_after <= 20.0
        elif kind == "finish" and held:
            permit = held.pop(index % len(held))[0]
            breaker.release(permit, _ERRORS[argument]())
        elif kind == "advance":
            clock.now += float(argument)
        state = breaker.state
        probes = [
            admitted_at
            for _, seen, admitted_state, admitted_at in held
            if seen == transitions[0] and admitted_state is HALF_OPEN
        ]
        stats = breaker.statistics()
        assert stats.active_calls == len(held)
        if state is HALF_OPEN:
            assert len(probes) <= max_calls
            assert stats.active_probes == len(probes)
            assert all(clock.now - admitted_at < 3.0 for admitted_at in probes)
        else:
            assert stats.active_probes == 0
