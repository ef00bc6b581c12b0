from __future__ import annotations

import asyncio
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A `resilience.Clock` whose time moves only when told to.

    ``sleep`` and ``asleep`` advance the clock instead of waiting, so code under
    test that backs off for a minute finishes instantly while still observing
    the minute pass. Thread-safe.
    """

    __slots__ = ("_lock", "_now", "sleeps")

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []
        """Every duration passed to ``sleep``/``asleep``, in order."""

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by *seconds* (must not be negative)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)  # still yield, so other tasks get their turn

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"
