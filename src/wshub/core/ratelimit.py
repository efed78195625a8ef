"""A token bucket for per-client rate limits.

Pure state: no I/O and no tasks. Tokens are refilled lazily from the injected ``clock``
(``trio.current_time`` by default) whenever the bucket is looked at.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

__all__ = ["TokenBucket", "TokenBucketStatistics"]

# Refill arithmetic is floating point: waiting exactly ``retry_after(n)`` seconds can leave the
# bucket a hair short of ``n`` tokens. Shortfalls below this are treated as none.
_TOLERANCE = 1e-9


@attrs.frozen
class TokenBucketStatistics:
    """A snapshot of a ``TokenBucket``."""

    tokens: float
    rate: float
    burst: int
    acquired: int
    """Tokens handed out by ``try_acquire``."""
    rejected: int
    """Calls to ``try_acquire`` that were refused."""


@attrs.define
class TokenBucket:
    """Allow ``rate`` operations per second on average and bursts of up to ``burst``.

    The bucket starts full with ``burst`` tokens and refills continuously at ``rate`` tokens
    per second, never beyond ``burst``. Its clock must not go backwards (a backwards step is
    ignored: no refill until the clock passes its previous reading again).
    """

    rate: float = attrs.field(
        validator=[attrs.validators.instance_of((int, float)), attrs.validators.gt(0.0)],
        on_setattr=attrs.setters.frozen,
    )
    burst: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)],
        on_setattr=attrs.setters.frozen,
    )
    clock: Callable[[], float] = attrs.field(
        default=trio.current_time, on_setattr=attrs.setters.frozen
    )
    _tokens: float = attrs.field(init=False)
    # None until first looked at, so a bucket can be built outside a Trio run.
    _updated: float | None = attrs.field(init=False, default=None)
    _acquired: int = attrs.field(init=False, default=0)
    _rejected: int = attrs.field(init=False, default=0)

    @_tokens.default
    def _start_full(self) -> float:
        return float(self.burst)

    @property
    def tokens(self) -> float:
        """The tokens available now (fractional between refills)."""
        self._refill()
        return self._tokens

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens if available and return True; otherwise take none, return False.

        Raises:
            ValueError: ``n`` is below 1 or above ``burst`` (such a request could never pass).
        """
        self._check(n)
        self._refill()
        if self._tokens + _TOLERANCE >= n:
            self._tokens = max(self._tokens - n, 0.0)
            self._acquired += n
            return True
        self._rejected += 1
        return False

    def retry_after(self, n: int = 1) -> float:
        """Return the seconds until ``n`` tokens are available (0.0 when they are now).

        Raises:
            ValueError: ``n`` is below 1 or above ``burst``.
        """
        self._check(n)
        self._refill()
        shortfall = n - self._tokens
        return shortfall / self.rate if shortfall > _TOLERANCE else 0.0

    def statistics(self) -> TokenBucketStatistics:
        """Return the tokens available now, the settings and the counters."""
        return TokenBucketStatistics(
            tokens=self.tokens,
            rate=self.rate,
            burst=self.burst,
            acquired=self._acquired,
            rejected=self._rejected,
        )

    def _check(self, n: int) -> None:
        if not 1 <= n <= self.burst:
            raise ValueError(f"cannot acquire {n} tokens: allowed is 1 to burst={self.burst}")

    def _refill(self) -> None:
        now = self.clock()
        if self._updated is None:
            self._updated = now
        elif now > self._updated:
            self._tokens = min(self._tokens + (now - self._updated) * self.rate, self.burst)
            self._updated = now
