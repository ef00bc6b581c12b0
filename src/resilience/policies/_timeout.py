"""Timeout: stop waiting for a call after a fixed time (or the deadline, if sooner).

Async calls are cancelled (``asyncio.timeout``). A sync call cannot be
cancelled -- Python cannot kill a thread -- so the sync flavour runs the call
on a worker thread and stops the *caller's* wait; the worker keeps running
until the function returns. The pool of workers is bounded, so a dependency
that hangs forever can pin at most ``max_workers`` threads; once they are all
stuck, further calls are rejected at once with `BulkheadFullError` instead of
queueing without limit.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import queue
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, Final, ParamSpec, TypeVar

from resilience._errors import BulkheadFullError, DeadlineExceededError, TimeoutExceededError
from resilience._telemetry import Telemetry

from ._base import PolicyDecorator
from ._deadline import current_deadline
from ._support import DEFAULT_TELEMETRY, check_name, check_positive, check_positive_int, emit

__all__ = ["Timeout"]

P = ParamSpec("P")
T = TypeVar("T")

_Task = tuple[Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


_IDLE_EXIT_SECONDS: Final = 30.0


class _WorkerPool:
    """At most *size* daemon threads; never queues more work than it has threads for.

    Accounting (all under ``_lock``; tasks are queued under it too):
    ``idle == workers waiting for a task + workers started but not yet running
    one - queued tasks``. A submission either reserves an idle worker
    (``idle -= 1``) or starts a thread, so every accepted task has a worker
    that picks it up at once. A worker returns its slot only after counting
    itself idle, and leaves after ``idle_exit`` seconds without work when no
    task is queued, so threads created during an incident do not linger.
    Daemon threads: a call that never returns cannot block interpreter exit.
    """

    __slots__ = (
        "_idle",
        "_lock",
        "_name",
        "_numbers",
        "_queue",
        "_size",
        "_slots",
        "_threads",
        "idle_exit",
    )

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._slots = threading.BoundedSemaphore(size)
        self._queue: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._numbers = itertools.count(1)
        self.idle_exit = _IDLE_EXIT_SECONDS

    def try_submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any] | None:
        if not self._slots.acquire(blocking=False):
            return None
        future: Future[Any] = Future()
        task: _Task = (future, contextvars.copy_context(), fn, args, kwargs)
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"{self._name}-{next(self._numbers)}", daemon=True
                ).start()
            self._queue.put(task)
        return future

    def _work(self) -> None:
        while True:
            try:
                future, context, fn, args, kwargs = self._queue.get(timeout=self.idle_exit)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # nothing reserved for anyone: this worker is idle
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            if future.set_running_or_notify_cancel():
                try:
                    result = context.run(fn, *args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, context, fn, args, kwargs
            with self._lock:
                self._idle += 1
            self._slots.release()

    @property
    def busy(self) -> int:
        with self._lock:
            return self._threads - self._idle - self._queue.qsize()

    @property
    def threads(self) -> int:
        with self._lock:
            return self._threads


class Timeout(PolicyDecorator):
    """Give up on a call after *seconds*, or when the current deadline passes, if sooner.

    Raises `TimeoutExceededError` (or `DeadlineExceededError` when the
    propagated deadline was the tighter bound). Async calls are cancelled. Sync
    calls run on one of at most *max_workers* daemon threads (the context,
    deadline included, is copied over); when every worker is still busy with
    earlier, abandoned calls, the call is rejected immediately with
    `BulkheadFullError` -- at most *max_workers* threads can ever leak.
    """

    __slots__ = ("_pool", "_telemetry", "max_workers", "name", "seconds")

    def __init__(
        self,
        seconds: float,
        *,
        max_workers: int = 32,
        name: str = "timeout",
        telemetry: Telemetry = DEFAULT_TELEMETRY,
    ) -> None:
        self.seconds = check_positive("seconds", seconds)
        self.max_workers = check_positive_int("max_workers", max_workers)
        self.name = check_name(name)
        self._telemetry = telemetry
        self._pool = _WorkerPool(self.max_workers, f"resilience-timeout-{self.name}")

    def _limit(self) -> tuple[float, bool]:
        """(seconds to allow, whether the deadline is the tighter bound)."""
        current = current_deadline()
        if current is not None:
            left = current.remaining()
            if left <= self.seconds:
                if left <= 0:
                    self._expired(0.0, deadline=True, started=False)
                return left, True
        return self.seconds, False

    def _expired(self, limit: float, *, deadline: bool, started: bool = True) -> Exception:
        emit(
            self._telemetry,
            "timeout",
            self.name,
            "deadline_exceeded" if deadline else "timeout",
            limit=limit,
            started=started,
        )
        if deadline:
            error: TimeoutExceededError = DeadlineExceededError(
                limit,
                f"{self.name!r}: deadline exceeded after {limit:.3f}s"
                if started
                else f"{self.name!r}: deadline already passed; call not started",
            )
        else:
            error = TimeoutExceededError(limit, f"{self.name!r}: no result within {limit:.3f}s")
        if not started:
            raise error
        return error

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on a bounded worker thread and wait at most the limit for it."""
        limit, by_deadline = self._limit()
        future = self._pool.try_submit(fn, args, kwargs)
        if future is None:
            emit(self._telemetry, "timeout", self.name, "rejected", max_workers=self.max_workers)
            error = BulkheadFullError(self.name, self.max_workers)
            error.args = (
                f"timeout {self.name!r}: all {self.max_workers} worker threads are still busy "
                "(with calls that timed out but have not returned); rejecting instead of queueing",
            )
            raise error
        try:
            result: T = future.result(timeout=limit)
        except TimeoutError:
            if not future.done():
                raise self._expired(limit, deadline=by_deadline) from None
            raise  # the function itself raised TimeoutError
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn``, cancelling it when the limit passes."""
        limit, by_deadline = self._limit()
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                return await fn(*args, **kwargs)
        except TimeoutError:
            if scope.expired():
                raise self._expired(limit, deadline=by_deadline) from None
            raise

    @property
    def busy_workers(self) -> int:
        """Worker threads currently running a (possibly abandoned) sync call."""
        return self._pool.busy

    def __repr__(self) -> str:
        return (
            f"Timeout(name={self.name!r}, seconds={self.seconds}, max_workers={self.max_workers})"
        )
