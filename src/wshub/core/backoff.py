"""Full-jitter exponential backoff: how long a client waits before its next connection attempt.

Theory of operation: the ``retry``-th consecutive retry (0 for the first) waits a uniformly random
time in ``[0, min(cap, base * 2**retry)]`` ("full jitter", as in the AWS architecture blog's
"Exponential Backoff And Jitter"). Spreading the waits over the whole interval keeps a crowd of
clients that lost the same hub from coming back in step. The random source is injected, so a
test with a seeded ``random.Random`` knows every delay in advance.
"""

from __future__ import annotations

import random

import attrs

__all__ = ["Backoff"]


def _check_cap(instance: Backoff, attribute: attrs.Attribute[float], value: float) -> None:
    if value < instance.base:
        raise ValueError(f"backoff cap must be >= base ({instance.base:g}), got {value:g}")


@attrs.define
class Backoff:
    """Delays for consecutive retries: ``delay(retry)`` is uniform in ``[0, bound(retry)]``.

    Raises ValueError when ``base`` is not > 0 or ``cap`` is below ``base``.
    """

    base: float = attrs.field(default=0.1, validator=attrs.validators.gt(0))
    cap: float = attrs.field(default=10.0, validator=_check_cap)
    rng: random.Random = attrs.field(factory=random.Random, repr=False)

    def bound(self, retry: int) -> float:
        """The longest wait of retry number ``retry`` (0-based): ``min(cap, base * 2**retry)``."""
        # Compare exponents rather than computing 2**retry for a huge retry count.
        if retry >= 1024 or self.base * 2.0**retry >= self.cap:
            return self.cap
        return self.base * 2.0**retry

    def delay(self, retry: int) -> float:
        """A random wait for retry number ``retry``: uniform in ``[0, bound(retry)]``."""
        return self.rng.uniform(0.0, self.bound(retry))
