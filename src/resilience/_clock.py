"""Time sources.

Every time-dependent component takes a `Clock` so tests can drive time by hand
instead of sleeping (`resilience.testing.FakeClock`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "MonotonicClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic seconds plus the two ways of waiting."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread."""

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task."""


class MonotonicClock:
    """The real clock: `time.monotonic`, `time.sleep`, `asyncio.sleep`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "MonotonicClock()"


SYSTEM_CLOCK: Clock = MonotonicClock()
