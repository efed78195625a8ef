"""A bounded set of named circuit breakers, built from one BreakerConfig on first use.

Theory of operation: the registry maps names to ``CircuitBreaker`` objects in a dict whose
insertion order is recency order (``get`` moves a breaker to the end).
* At most ``max_breakers`` breakers exist. Creating one more evicts the least recently used
  breaker that is ``evictable`` (CLOSED, not disabled, no call in flight), so no breaker that is
  protecting a dependency or serving a call is ever forgotten; with none evictable, ``get``
  raises BreakerRegistryFull and the registry is unchanged.
* A listener added to the registry reaches every breaker, existing and future.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs
import trio

from wshub.core.breaker import CircuitBreaker, TransitionListener
from wshub.core.breaker_state import BreakerStatistics
from wshub.core.sections import BreakerConfig

__all__ = ["BreakerRegistry", "BreakerRegistryFull"]


class BreakerRegistryFull(RuntimeError):
    """BreakerRegistry.get needed a new breaker, but all max_breakers are busy or not CLOSED."""


def _config_or_default(config: BreakerConfig | None) -> BreakerConfig:
    return BreakerConfig() if config is None else config


@attrs.define(eq=False)
class BreakerRegistry:
    """Named breakers built from one BreakerConfig on first use, at most ``max_breakers``.

    ``max_breakers`` defaults to ``config.max_breakers``. Iterating yields the breakers, least
    recently used first; ``name in registry`` tests for a breaker by name.
    """

    config: BreakerConfig = attrs.field(default=None, converter=_config_or_default)
    max_breakers: int = attrs.field(
        default=attrs.Factory(lambda self: self.config.max_breakers, takes_self=True),
        validator=attrs.validators.ge(1),
        kw_only=True,
    )
    clock: Callable[[], float] = attrs.field(default=trio.current_time, kw_only=True, repr=False)
    # Insertion order is recency order: get() moves a breaker to the end.
    _breakers: dict[str, CircuitBreaker] = attrs.field(factory=dict, init=False, repr=False)
    _listeners: list[TransitionListener] = attrs.field(factory=list, init=False, repr=False)

    def get(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``, created from the config if missing.

        At capacity, creating one evicts the least recently used breaker that is CLOSED, not
        disabled and has no call in flight; raises BreakerRegistryFull when there is none.
        """
        breaker = self._breakers.pop(name, None)
        if breaker is None:
            if len(self._breakers) >= self.max_breakers:
                self._evict_one(name)
            breaker = CircuitBreaker.from_config(name, self.config, clock=self.clock)
            for listener in self._listeners:
                breaker.add_listener(listener)
        self._breakers[name] = breaker
        return breaker

    def add_listener(self, callback: TransitionListener) -> None:
        """Add a transition listener to every breaker, existing and future."""
        self._listeners.append(callback)
        for breaker in self._breakers.values():
            breaker.add_listener(callback)

    def statistics(self) -> dict[str, BreakerStatistics]:
        """Each breaker's statistics, by name."""
        return {name: breaker.statistics() for name, breaker in self._breakers.items()}

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(tuple(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def _evict_one(self, wanted: str) -> None:
        for name, breaker in self._breakers.items():
            if breaker.evictable:
                del self._breakers[name]
                return
        raise BreakerRegistryFull(
            f"cannot create breaker {wanted!r}: all {self.max_breakers} breakers are open, "
            "half-open, disabled or in use"
        )
