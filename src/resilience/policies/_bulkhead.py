"""Bulkhead: cap how many calls to one dependency may be in flight at once.

In the Correios cascade the postal API slowed down, every worker of the
service ended up blocked on it, and unrelated endpoints starved. A bulkhead
gives the dependency a fixed number of slots; calls beyond that are rejected
(or wait briefly) instead of taking the whole worker pool with them.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from resilience._errors import BulkheadFullError
from resilience._telemetry import Telemetry

from ._base import PolicyDecorator
from ._deadline import remaining
from ._support import DEFAULT_TELEMETRY, check_name, check_non_negative, check_positive_int, emit

__all__ = ["Bulkhead"]

P = ParamSpec("P")
T = TypeVar("T")


class _ThreadWaiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.granted = False

    def grant(self) -> bool:
        self.granted = True
        self.event.set()
        return True


class _TaskWaiter:
    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False

    def _wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def grant(self) -> bool:
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # its event loop is closed: nobody is waiting any more
            return False
        self.granted = True
        return True


class Bulkhead(PolicyDecorator):
    """At most *max_concurrent* calls run at once; the rest wait up to *max_wait* or fail.

    One object serves threads and asyncio tasks alike (they share the same
    slots). Slots are tokens in a deque: taking and returning one are single
    atomic deque operations, so the success path takes no lock. When none is
    free, the call waits up to *max_wait* seconds (never past the current
    deadline), then raises `BulkheadFullError`. With the default
    ``max_wait=0`` it is rejected at once, which is what protects the caller's
    own worker pool: fail fast instead of queueing behind a slow dependency.
    Waiters are served in arrival order, though a call arriving just as a
    slot frees may take it first.
    """

    __slots__ = ("_lock", "_telemetry", "_tokens", "_waiters", "max_concurrent", "max_wait", "name")

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_wait: float = 0.0,
        name: str = "bulkhead",
        telemetry: Telemetry = DEFAULT_TELEMETRY,
    ) -> None:
        self.max_concurrent = check_positive_int("max_concurrent", max_concurrent)
        self.max_wait = check_non_negative("max_wait", max_wait)
        self.name = check_name(name)
        self._telemetry = telemetry
        self._lock = threading.Lock()
        # Invariant: tokens + calls holding one == max_concurrent, always.
        self._tokens: deque[None] = deque([None] * self.max_concurrent)
        self._waiters: deque[_ThreadWaiter | _TaskWaiter] = deque()

    @property
    def in_flight(self) -> int:
        """Calls holding a slot right now."""
        return self.max_concurrent - len(self._tokens)

    def _wait_budget(self) -> float:
        left = remaining()
        return self.max_wait if left is None else min(self.max_wait, left)

    def _reject(self, waited: float) -> BulkheadFullError:
        emit(
            self._telemetry,
            "bulkhead",
            self.name,
            "rejected",
            max_concurrent=self.max_concurrent,
            waited=waited,
        )
        return BulkheadFullError(self.name, self.max_concurrent)

    def _hand_over(self) -> None:
        """Give free tokens to waiters, oldest first."""
        tokens = self._tokens
        with self._lock:
            waiters = self._waiters
            while waiters:
                try:
                    tokens.pop()
                except IndexError:
                    return
                if not waiters.popleft().grant():
                    tokens.append(None)

    def _release(self) -> None:
        self._tokens.append(None)
        if self._waiters:
            self._hand_over()

    def _enqueue(self, waiter: _ThreadWaiter | _TaskWaiter) -> bool:
        """Queue *waiter*; True if a token turned up meanwhile (then it is not queued)."""
        with self._lock:
            try:
                self._tokens.pop()
            except IndexError:
                self._waiters.append(waiter)
                return False
            return True

    def _acquire_or_wait(self) -> None:
        wait = self._wait_budget()
        if wait <= 0:
            raise self._reject(0.0)
        waiter = _ThreadWaiter()
        if self._enqueue(waiter):
            return
        waiter.event.wait(wait)
        with self._lock:
            if waiter.granted:
                return
            self._waiters.remove(waiter)
        raise self._reject(wait)

    async def _aacquire_or_wait(self) -> None:
        wait = self._wait_budget()
        if wait <= 0:
            raise self._reject(0.0)
        waiter = _TaskWaiter(asyncio.get_running_loop())
        if self._enqueue(waiter):
            return
        try:
            async with asyncio.timeout(wait):
                await waiter.future
        except TimeoutError:
            with self._lock:
                if waiter.granted:
                    return
                self._waiters.remove(waiter)
            raise self._reject(wait) from None
        except BaseException:  # cancelled while waiting: give back a token we may have got
            with self._lock:
                granted = waiter.granted
                if not granted:
                    self._waiters.remove(waiter)
            if granted:
                self._release()
            raise

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` in a slot, or raise `BulkheadFullError`."""
        try:
            self._tokens.pop()
        except IndexError:
            self._acquire_or_wait()
        try:
            return fn(*args, **kwargs)
        finally:
            self._tokens.append(None)
            if self._waiters:
                self._hand_over()

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn`` in a slot, or raise `BulkheadFullError`."""
        try:
            self._tokens.pop()
        except IndexError:
            await self._aacquire_or_wait()
        try:
            return await fn(*args, **kwargs)
        finally:
            self._tokens.append(None)
            if self._waiters:
                self._hand_over()

    def __repr__(self) -> str:
        return (
            f"Bulkhead(name={self.name!r}, max_concurrent={self.max_concurrent}, "
            f"max_wait={self.max_wait}, in_flight={self.in_flight})"
        )
