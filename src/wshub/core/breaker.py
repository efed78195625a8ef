"""Circuit breakers: fail fast around a dependency that keeps failing, and probe its recovery.

The values a breaker hands out (``BreakerState``, ``BreakerPermit``, ``BreakerStatistics``,
``CircuitOpenError``) are defined in ``wshub.core.breaker_state`` and exported here too.
"""

# Theory of operation: a state machine, CLOSED -> OPEN -> HALF_OPEN -> CLOSED (or OPEN again),
# driven by the outcomes callers report and by the injected clock; no sleeping, no I/O.
# * Time-driven transitions happen lazily, when the breaker is consulted, and are dated when they
#   fell due, so the state is a pure function of the outcomes and the clock.
# * Every transition bumps the generation; a permit remembers the generation that admitted it,
#   and an outcome reported under another generation changes nothing.
# * OPEN admits nothing. HALF_OPEN has at most half_open_max_calls probes out; a probe still out
#   when half_open_timeout has elapsed is a failure.
# * Cancellation, other non-Exception BaseExceptions and excluded errors are neutral: the permit
#   comes back and nothing is counted. Nothing is ever swallowed.

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar, TypeVarTuple

import attrs
import trio

from wshub.core.breaker_state import (
    BreakerPermit,
    BreakerState,
    BreakerStatistics,
    CircuitOpenError,
)
from wshub.core.sections import BreakerConfig

__all__ = [
    "BreakerPermit",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "CircuitOpenError",
    "TransitionListener",
]

logger = logging.getLogger("wshub.breaker")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# The generation of permits handed out while disabled: it never matches a real generation.
_UNRECORDED = -1

# Module-level aliases: member lookup on an Enum class is slow on Python 3.11's hot path.
_CLOSED, _OPEN, _HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

#: A transition listener: called as ``listener(breaker, old_state, new_state)``.
TransitionListener = Callable[["CircuitBreaker", BreakerState, BreakerState], None]


# Validate at construction only: attrs' validate-on-assignment hook would put a Python-level
# __setattr__ on every counter update of the hot path.
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class CircuitBreaker:
    """A circuit breaker around one dependency: ``async with breaker:`` or ``breaker.call(fn)``.

    CLOSED trips OPEN after ``failure_threshold`` consecutive failures or, when
    ``failure_rate_threshold`` is set, when at least ``minimum_calls`` outcomes of the last
    ``window`` seconds include that fraction of failures. OPEN lasts the current open timeout
    (``open_timeout``, multiplied by ``open_timeout_multiplier`` for each failed probe up to
    ``max_open_timeout``, back to ``open_timeout`` on closing), then reads HALF_OPEN:
    ``success_threshold`` successful probes close it, one failed or timed-out probe reopens it.

    A failure is an ``Exception`` that is not in ``exclude`` and that ``is_failure`` (when given)
    accepts; an exception group fails when any of its leaves does. Everything else that is
    raised is neutral, including ``trio.Cancelled``. Entering does not checkpoint.

    Time is read from ``clock`` (default ``trio.current_time``, which needs a running Trio
    loop); a CLOSED breaker in count mode never reads it. Invalid settings raise ValueError.
    """

    name: str
    failure_threshold: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    success_threshold: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    open_timeout: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    open_timeout_multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    max_open_timeout: float = attrs.field(default=600.0)
    half_open_max_calls: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    half_open_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    failure_rate_threshold: float | None = attrs.field(
        default=None,
        validator=attrs.validators.optional([attrs.validators.gt(0), attrs.validators.le(1)]),
    )
    window: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    minimum_calls: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    exclude: tuple[type[BaseException], ...] = ()
    is_failure: Callable[[BaseException], bool] | None = attrs.field(default=None, repr=False)
    clock: Callable[[], float] = attrs.field(default=trio.current_time, repr=False)

    _state: BreakerState = attrs.field(default=_CLOSED, init=False)
    _generation: int = attrs.field(default=0, init=False, repr=False)
    _opened_at: float = attrs.field(default=0.0, init=False, repr=False)
    _current_open_timeout: float = attrs.field(default=0.0, init=False, repr=False)
    _consecutive_failures: int = attrs.field(default=0, init=False, repr=False)
    _half_open_successes: int = attrs.field(default=0, init=False, repr=False)
    # Outstanding probes of the current HALF_OPEN generation -> admission time, oldest first.
    _probes: dict[BreakerPermit, float] = attrs.field(factory=dict, init=False, repr=False)
    # Rate mode: (time, failed) per recorded outcome in the window, oldest first.
    _outcomes: deque[tuple[float, bool]] = attrs.field(factory=deque, init=False, repr=False)
    _window_failures: int = attrs.field(default=0, init=False, repr=False)
    _held: dict[trio.lowlevel.Task, BreakerPermit] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _listeners: list[TransitionListener] = attrs.field(factory=list, init=False, repr=False)
    _forced_open: bool = attrs.field(default=False, init=False, repr=False)
    _disabled: bool = attrs.field(default=False, init=False, repr=False)
    _calls: int = attrs.field(default=0, init=False, repr=False)
    _successes: int = attrs.field(default=0, init=False, repr=False)
    _failures: int = attrs.field(default=0, init=False, repr=False)
    _rejections: int = attrs.field(default=0, init=False, repr=False)
    _active_calls: int = attrs.field(default=0, init=False, repr=False)
    _opened_count: int = attrs.field(default=0, init=False, repr=False)
    _last_transition_time: float | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.max_open_timeout < self.open_timeout:
            raise ValueError(
                f"max_open_timeout must be >= open_timeout ({self.open_timeout:g}), "
                f"got {self.max_open_timeout:g}"
            )
        self._current_open_timeout = self.open_timeout

    @classmethod
    def from_config(
        cls, name: str, config: BreakerConfig, *, clock: Callable[[], float] = trio.current_time
    ) -> CircuitBreaker:
        """A breaker named ``name`` with the knobs of ``config`` that share a field's name."""
        shared = attrs.fields_dict(BreakerConfig).keys() & attrs.fields_dict(cls).keys()
        return cls(name, clock=clock, **{key: getattr(config, key) for key in shared})

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> BreakerState:
        """The current state. Reading it applies the transitions that time has made due."""
        if self._state is not _CLOSED:
            self._refresh(self.clock())
        return self._state

    def retry_after(self) -> float | None:
        """Seconds until a call would be admitted: 0.0 if one would be now, None if forced open.

        When HALF_OPEN has every probe slot taken, this is the time until the oldest probe's
        half_open_timeout runs out: by then a slot has been freed or the breaker has reopened.
        """
        if self._state is _CLOSED:
            return 0.0
        now = self.clock()
        self._refresh(now)
        return self._retry_after(now)

    def statistics(self) -> BreakerStatistics:
        """A snapshot of the state, the counters and the current open timeout."""
        return BreakerStatistics(
            name=self.name,
            state=self.state,
            consecutive_failures=self._consecutive_failures,
            calls=self._calls,
            successes=self._successes,
            failures=self._failures,
            rejections=self._rejections,
            open_timeout=self._current_open_timeout,
            opened_count=self._opened_count,
            last_transition_time=self._last_transition_time,
            forced_open=self._forced_open,
            disabled=self._disabled,
            active_calls=self._active_calls,
            active_probes=len(self._probes),
        )

    def add_listener(self, callback: TransitionListener) -> None:
        """Call ``callback(breaker, old, new)`` synchronously on every transition.

        An Exception raised by a listener is logged to ``wshub.breaker`` and otherwise ignored.
        """
        self._listeners.append(callback)

    @property
    def evictable(self) -> bool:
        """True when forgetting this breaker loses nothing but its counters.

        That is: CLOSED, not disabled, and no call in flight (an OPEN or HALF_OPEN breaker
        still protects its dependency; a disabled one carries an operator's decision).
        ``BreakerRegistry`` evicts only evictable breakers. Reading it never reads the clock.
        """
        return self._state is _CLOSED and self._active_calls == 0 and not self._disabled

    # ------------------------------------------------------------------ calling

    async def __aenter__(self) -> None:
        """Admit the calling task or raise CircuitOpenError. Does not checkpoint."""
        permit = self.acquire_nowait()
        task = trio.lowlevel.current_task()
        permit._outer = self._held.get(task)
        self._held[task] = permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release the task's permit, recording the outcome; the exception propagates."""
        task = trio.lowlevel.current_task()
        permit = self._held.pop(task)
        if permit._outer is not None:
            self._held[task] = permit._outer
        self.release(permit, exc)

    async def call(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Await ``fn(*args)`` under the breaker and return its result.

        Raises CircuitOpenError when not admitted, and whatever ``fn`` raises.
        """
        async with self:
            return await fn(*args)

    def acquire_nowait(self) -> BreakerPermit:
        """Admit one call now, for callers that cannot use ``async with``.

        Pass the permit to ``release`` exactly once. Raises CircuitOpenError when not admitted.
        """
        if self._state is _CLOSED and not self._disabled:
            self._calls += 1
            self._active_calls += 1
            return BreakerPermit(self._generation)
        if self._disabled:
            self._active_calls += 1
            return BreakerPermit(_UNRECORDED)
        now = self.clock()
        self._refresh(now)
        if self._state is _HALF_OPEN and len(self._probes) < self.half_open_max_calls:
            permit = BreakerPermit(self._generation)
            self._probes[permit] = now
            self._calls += 1
            self._active_calls += 1
            return permit
        self._rejections += 1
        raise CircuitOpenError(self.name, self._retry_after(now))

    def release(self, permit: BreakerPermit, error: BaseException | None = None) -> None:
        """Return ``permit`` and record its call's outcome: success when ``error`` is None.

        Raises RuntimeError if the permit was already released.
        """
        if permit.released:
            raise RuntimeError(f"breaker {self.name!r}: permit released twice")
        permit.released = True
        self._active_calls -= 1
        failed = False if error is None else self._classify(error)
        if self._state is not _CLOSED:
            self._refresh(self.clock())
        if permit.generation != self._generation:
            return  # admitted under an earlier state, or while disabled
        if self._state is _HALF_OPEN:
            del self._probes[permit]
        if failed is None:
            return
        if failed:
            self._record_failure()
        else:
            self._record_success()

    # ------------------------------------------------------------------ operator controls

    def force_open(self) -> None:
        """Reject every call (``retry_after`` None) until ``reset()``."""
        self._forced_open = True
        self._disabled = False
        self._transition(_OPEN)

    def disable(self) -> None:
        """Admit every call and record nothing until ``reset()``; the state reads CLOSED."""
        self._disabled = True
        self._forced_open = False
        self._transition(_CLOSED)

    def reset(self) -> None:
        """Back to CLOSED with the failure run, the window and the backoff cleared.

        Calls in flight are forgotten: their outcomes will not be recorded.
        """
        self._forced_open = self._disabled = False
        self._consecutive_failures = 0
        self._current_open_timeout = self.open_timeout
        self._transition(_CLOSED)

    # ------------------------------------------------------------------ internals

    def _classify(self, error: BaseException) -> bool | None:
        """True for a failure, None for a neutral outcome."""
        if isinstance(error, BaseExceptionGroup):
            return True if any(self._classify(leaf) for leaf in error.exceptions) else None
        if not isinstance(error, Exception) or isinstance(error, self.exclude):
            return None
        if self.is_failure is None:
            return True
        try:
            return True if self.is_failure(error) else None
        except Exception:
            logger.exception("breaker %r: is_failure raised; counting a failure", self.name)
            return True

    def _retry_after(self, now: float) -> float | None:
        if self._forced_open:
            return None
        if self._state is _OPEN:
            return self._opened_at + self._current_open_timeout - now
        if self._state is _HALF_OPEN and len(self._probes) >= self.half_open_max_calls:
            return next(iter(self._probes.values())) + self.half_open_timeout - now
        return 0.0

    def _refresh(self, now: float) -> None:
        """Apply the transitions that time has made due, each dated when it fell due."""
        if self._state is _HALF_OPEN and self._probes:
            deadline = next(iter(self._probes.values())) + self.half_open_timeout
            if now >= deadline:
                self._failures += 1
                self._consecutive_failures += 1
                self._open(deadline, backoff=True)
        if self._state is _OPEN and not self._forced_open:
            due = self._opened_at + self._current_open_timeout
            if now >= due:
                self._transition(_HALF_OPEN, due)

    def _record_failure(self) -> None:
        self._failures += 1
        self._consecutive_failures += 1
        if self._state is _HALF_OPEN:
            self._open(self.clock(), backoff=True)
        elif self.failure_rate_threshold is not None:
            self._record_in_window(True, self.failure_rate_threshold)
        elif self._consecutive_failures >= self.failure_threshold:
            self._open(self.clock())

    def _record_success(self) -> None:
        self._successes += 1
        self._consecutive_failures = 0
        if self._state is _HALF_OPEN:
            self._half_open_successes += 1
            if self._half_open_successes >= self.success_threshold:
                self._current_open_timeout = self.open_timeout
                self._transition(_CLOSED)
        elif self.failure_rate_threshold is not None:
            self._record_in_window(False, self.failure_rate_threshold)

    def _record_in_window(self, failed: bool, threshold: float) -> None:
        # The window is (now - window, now]; expiry pops only what has aged out.
        now = self.clock()
        outcomes = self._outcomes
        outcomes.append((now, failed))
        self._window_failures += failed
        horizon = now - self.window
        while outcomes[0][0] <= horizon:
            self._window_failures -= outcomes.popleft()[1]
        calls = len(outcomes)
        if calls >= self.minimum_calls and self._window_failures / calls >= threshold:
            self._open(now)

    def _open(self, at: float, *, backoff: bool = False) -> None:
        if backoff:  # a probe failed: stay open longer this time
            self._current_open_timeout = min(
                self._current_open_timeout * self.open_timeout_multiplier, self.max_open_timeout
            )
        self._opened_at = at
        self._transition(_OPEN, at)

    def _transition(self, new: BreakerState, at: float | None = None) -> None:
        """Enter ``new``: a fresh generation, even when ``new`` is the current state."""
        old = self._state
        self._state = new
        self._generation += 1
        self._probes.clear()
        self._half_open_successes = 0
        self._outcomes.clear()
        self._window_failures = 0
        if old is new:
            return
        self._last_transition_time = self.clock() if at is None else at
        if new is _OPEN:
            self._opened_count += 1
        for listener in tuple(self._listeners):
            try:
                listener(self, old, new)
            except Exception:
                logger.exception("breaker %r: transition listener %r raised", self.name, listener)
