"""Sliding windows of call outcomes for the circuit breaker.

Both windows store one small code per outcome: ``SUCCESS`` (0), ``FAILURE``
(1), ``SLOW`` (2, a slow success), ``SLOW_FAILURE`` (3). They are plain data
structures: the core serialises access to them (except the count window's
lock-free success lane, see `CountWindow`).
"""

from __future__ import annotations

import itertools
import math

__all__ = ["EMPTY", "FAILURE", "SLOW", "SLOW_FAILURE", "SUCCESS", "CountWindow", "TimeWindow"]

SUCCESS = 0
FAILURE = 1
SLOW = 2
SLOW_FAILURE = 3
EMPTY = 255


class CountWindow:
    """The outcomes of the last *size* calls, in a ring of bytes.

    There are no running sums: the counts are read with ``bytearray.count``
    (a C loop over at most *size* bytes) only when a verdict is needed, which
    is when a failure or a slow call arrives, since a success can only lower
    the rates. That makes recording a success a single C-level store,
    ``buf[next(slots)] = SUCCESS``, each step atomic under the GIL, so the
    breaker's success lane needs no lock: ``slots`` is an endless
    ``itertools.cycle`` that hands each call its own slot.
    """

    __slots__ = ("buf", "size", "slots")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = bytearray([EMPTY]) * size
        self.slots = itertools.cycle(range(size))

    def add(self, code: int, now: float) -> None:
        self.buf[next(self.slots)] = code

    def counts(self, now: float) -> tuple[int, int, int]:
        """``(calls, failed, slow)`` currently in the window."""
        buf = self.buf
        failed = buf.count(FAILURE)
        slow = buf.count(SLOW)
        both = buf.count(SLOW_FAILURE)
        return self.size - buf.count(EMPTY), failed + both, slow + both


class TimeWindow:
    """The outcomes of the last *seconds* seconds, one bucket per second.

    Buckets are indexed by ``int(now) % seconds`` and remember which second
    they hold; running totals are kept and the buckets that slid out of the
    window are subtracted lazily, so both recording and reading cost O(1)
    amortised (at most *seconds* buckets are cleared after a long idle gap).
    """

    __slots__ = (
        "_calls",
        "_failed",
        "_last",
        "_second",
        "_slow",
        "size",
        "total_calls",
        "total_failed",
        "total_slow",
    )

    def __init__(self, seconds: int) -> None:
        self.size = seconds
        self._calls = [0] * seconds
        self._failed = [0] * seconds
        self._slow = [0] * seconds
        self._second = [-1] * seconds
        self._last = -1  # the newest second any bucket was advanced to
        self.total_calls = 0
        self.total_failed = 0
        self.total_slow = 0

    def _advance(self, now: float) -> int:
        second = math.floor(now)
        last = self._last
        if second > last:
            size = self.size
            start = max(last + 1, second - size + 1)
            for sec in range(start, second + 1):
                i = sec % size
                if self._second[i] != sec:
                    self.total_calls -= self._calls[i]
                    self.total_failed -= self._failed[i]
                    self.total_slow -= self._slow[i]
                    self._calls[i] = self._failed[i] = self._slow[i] = 0
                    self._second[i] = sec
            self._last = second
        return second

    def add(self, code: int, now: float) -> None:
        second = self._advance(now)
        if second < self._last - self.size + 1:
            return  # older than the window (a clock that went backwards): drop it
        i = second % self.size
        self._calls[i] += 1
        self.total_calls += 1
        if code & FAILURE:
            self._failed[i] += 1
            self.total_failed += 1
        if code & SLOW:
            self._slow[i] += 1
            self.total_slow += 1

    def counts(self, now: float) -> tuple[int, int, int]:
        """``(calls, failed, slow)`` in the last ``size`` seconds."""
        self._advance(now)
        return self.total_calls, self.total_failed, self.total_slow
