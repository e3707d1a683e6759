"""Reconnect backoff: the delays between attempts to reach a server."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Exponential reconnect backoff with jitter (delays in seconds): the n-th delay is
    drawn from [d * (1 - jitter), d] where d = min(initial * multiplier**n, maximum)."""

    initial: float = 0.05
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each delay is drawn from [d * (1 - jitter), d]

    def delays(self, rng: Callable[[], float] = random.random) -> _DelayIterator:
        return _DelayIterator(self, rng)


class _DelayIterator:
    def __init__(self, backoff: Backoff, rng: Callable[[], float]) -> None:
        self._b = backoff
        self._rng = rng
        self._next = backoff.initial

    def __iter__(self) -> _DelayIterator:
        return self

    def __next__(self) -> float:
        d = self._next
        self._next = min(d * self._b.multiplier, self._b.maximum)
        return d * (1.0 - self._b.jitter * self._rng())
