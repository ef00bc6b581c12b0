"""A retry budget: retries may add at most a fixed fraction of load to a dependency.

Per-call retry limits ("3 attempts") multiply load exactly when a dependency is
drowning: every caller triples its traffic. A budget shared by all callers of a
dependency caps the *extra* load instead (Finagle's ``RetryBudget``, gRPC's
retry throttling): retries are allowed while

    retries in the last ``ttl`` <= ratio * calls in the last ``ttl``
                                   + min_retries_per_second * ttl

The floor lets a quiet client still retry its occasional failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from resilience._clock import SYSTEM_CLOCK, Clock, MonotonicClock
from resilience._errors import ConfigurationError

from ._support import check_name, check_non_negative, check_positive

__all__ = ["RetryBudget"]

_BUCKETS = 10


class RetryBudget:
    """Allows retries up to *ratio* of recent calls plus *min_retries_per_second*.

    Share one instance between every `Retry` that talks to the same dependency.
    Counts live in a ring of ten time buckets spanning *ttl*, so `deposit` and
    `try_withdraw` are O(1); one lock makes them safe from threads and tasks.
    """

    __slots__ = (
        "_clock",
        "_deposits",
        "_epoch",
        "_lock",
        "_now",
        "_reserve",
        "_total_deposits",
        "_total_withdrawals",
        "_width",
        "_withdrawals",
        "min_retries_per_second",
        "name",
        "ratio",
        "ttl",
    )

    def __init__(
        self,
        ratio: float = 0.1,
        min_retries_per_second: float = 10.0,
        ttl: float = 10.0,
        *,
        name: str = "retry-budget",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ratio = check_non_negative("ratio", ratio)
        if self.ratio > 1000:
            raise ConfigurationError("ratio", f"must be at most 1000, got {ratio!r}")
        self.min_retries_per_second = check_non_negative(
            "min_retries_per_second", min_retries_per_second
        )
        self.ttl = check_positive("ttl", ttl)
        self.name = check_name(name)
        self._clock = clock
        # The system clock's bound method costs a frame; time.monotonic is the same source.
        self._now: Callable[[], float] = (
            time.monotonic if type(clock) is MonotonicClock else clock.monotonic
        )
        self._reserve = self.min_retries_per_second * self.ttl
        self._width = self.ttl / _BUCKETS
        self._deposits = [0] * _BUCKETS
        self._withdrawals = [0] * _BUCKETS
        self._total_deposits = 0
        self._total_withdrawals = 0
        self._epoch = int(clock.monotonic() / self._width)
        self._lock = threading.Lock()

    def _advance(self, epoch: int) -> None:
        """Expire buckets older than ttl. Lock held."""
        if epoch <= self._epoch:
            return  # a clock that stood still (or a stale reading from another thread)
        for i in range(1, min(epoch - self._epoch, _BUCKETS) + 1):
            index = (self._epoch + i) % _BUCKETS
            self._total_deposits -= self._deposits[index]
            self._total_withdrawals -= self._withdrawals[index]
            self._deposits[index] = 0
            self._withdrawals[index] = 0
        self._epoch = epoch

    def _rotate(self) -> int:
        """Expire old buckets; return the current bucket's index. Lock held."""
        epoch = int(self._now() / self._width)
        if epoch != self._epoch:
            self._advance(epoch)
        return self._epoch % _BUCKETS

    def deposit(self) -> None:
        """Record one call (first attempts only; retries are not calls)."""
        epoch = int(self._now() / self._width)
        lock = self._lock
        lock.acquire()  # explicit acquire/release: half the cost of `with` on the hot path
        try:
            if epoch != self._epoch:
                self._advance(epoch)
            self._deposits[self._epoch % _BUCKETS] += 1
            self._total_deposits += 1
        finally:
            lock.release()

    def try_withdraw(self) -> bool:
        """Take permission for one retry; False when the budget is spent."""
        with self._lock:
            index = self._rotate()
            allowed = self._reserve + self.ratio * self._total_deposits
            if self._total_withdrawals + 1 > allowed:
                return False
            self._withdrawals[index] += 1
            self._total_withdrawals += 1
            return True

    def available(self) -> float:
        """How many retries could be taken right now (for dashboards and tests)."""
        with self._lock:
            self._rotate()
            return max(
                0.0, self._reserve + self.ratio * self._total_deposits - self._total_withdrawals
            )

    def __repr__(self) -> str:
        return (
            f"RetryBudget(name={self.name!r}, ratio={self.ratio}, "
            f"min_retries_per_second={self.min_retries_per_second}, ttl={self.ttl})"
        )
