"""Retry built on tenacity's strategies, with a free success path.

The first attempt is a plain call inside ``try``; only a failure builds a
tenacity `RetryCallState` and consults the ``retry``/``stop``/``wait``
strategies. One I/O-free core (`_Attempts.after_failure`) decides "sleep this
long" or "give up with this error"; the sync and async drivers only call the
function and sleep.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, NoReturn, ParamSpec, TypeVar

import tenacity
from tenacity.retry import retry_all, retry_any, retry_if_not_result, retry_if_result
from tenacity.stop import StopBaseT
from tenacity.wait import WaitBaseT

from resilience._clock import SYSTEM_CLOCK, Clock
from resilience._errors import ConfigurationError, RetryBudgetExhaustedError
from resilience._telemetry import Telemetry

from ._base import PolicyDecorator
from ._budget import RetryBudget
from ._deadline import remaining
from ._support import (
    DEFAULT_TELEMETRY,
    check_name,
    check_non_negative,
    check_positive,
    check_positive_int,
    emit,
)

__all__ = [
    "Retry",
    "RetryDetails",
    "RetryHook",
    "retry_testing_mode",
    "wait_backoff",
    "wait_retry_after",
]

P = ParamSpec("P")
T = TypeVar("T")

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]
ExceptionPredicate = Callable[[BaseException], bool]

_log = logging.getLogger("resilience.retry")


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What a retry hook is told: one object, so fields can be added later.

    Attributes:
        name: the `Retry` policy's name.
        attempt: the number of the attempt that just failed (1 for the first call).
        exception: the error that attempt raised.
        wait: seconds the policy will sleep before the next attempt.
        elapsed: seconds since the first failure.
    """

    name: str
    attempt: int
    exception: BaseException
    wait: float
    elapsed: float


RetryHook = Callable[[RetryDetails], None]
"""A callable told about each retry before the backoff sleep."""


class _Testing:
    __slots__ = ("attempts", "enabled", "lock")

    def __init__(self) -> None:
        self.enabled = False
        self.attempts: int | None = None
        self.lock = threading.Lock()


_TESTING: Final = _Testing()


@contextlib.contextmanager
def retry_testing_mode(*, attempts: int | None = None) -> Iterator[None]:
    """Turn off backoff sleeps of every `Retry` (and optionally cap attempts) inside the block.

    For test suites that exercise code with production retry settings: the
    retries still happen (hooks and telemetry fire, budgets are charged) but
    without waiting. The previous mode is restored on exit. Process-wide, so it
    also covers retries running in other threads.
    """
    if attempts is not None:
        check_positive_int("attempts", attempts)
    with _TESTING.lock:
        previous = (_TESTING.enabled, _TESTING.attempts)
        _TESTING.enabled, _TESTING.attempts = True, attempts
    try:
        yield
    finally:
        with _TESTING.lock:
            _TESTING.enabled, _TESTING.attempts = previous


class wait_backoff(tenacity.wait.wait_base):  # named like tenacity's strategies
    """Exponential backoff with a tunable share of jitter (a tenacity wait strategy).

    The backoff before retry *n* is ``b = min(maximum, initial * 2 ** (n - 1))``
    and the wait is ``b * (1 - jitter) + uniform(0, b * jitter)``: ``jitter=1``
    is AWS's "full jitter" (the default: it spreads a thundering herd best),
    ``0.5`` "equal jitter", ``0`` none.
    """

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, jitter: float = 1.0) -> None:
        self.initial = check_positive("wait_initial", initial)
        self.maximum = check_positive("wait_max", maximum)
        self.jitter = check_non_negative("wait_jitter", jitter)
        if self.jitter > 1:
            raise ConfigurationError("wait_jitter", f"must be between 0 and 1, got {jitter!r}")
        if self.maximum < self.initial:
            raise ConfigurationError("wait_max", "must be >= wait_initial")

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exponent = min(retry_state.attempt_number - 1, 64)
        backoff = min(self.maximum, self.initial * 2.0**exponent)
        return backoff * (1.0 - self.jitter) + random.uniform(0.0, backoff * self.jitter)

    def __repr__(self) -> str:
        return f"wait_backoff(initial={self.initial}, maximum={self.maximum}, jitter={self.jitter})"


class wait_retry_after(tenacity.wait.wait_base):  # named like tenacity's strategies
    """Wait as long as the error asks (its ``retry_after``), else use *fallback*.

    When the other side says when to come back, guessing with backoff is
    worse than listening: `RateLimitedError`, `CircuitOpenError` and
    `IdempotencyInProgressError` carry ``retry_after`` (seconds), and so can
    your own error for an HTTP 429/503 with a ``Retry-After`` header. The wait
    is capped at *maximum* so a bogus hint cannot park a caller for an hour.
    """

    def __init__(self, fallback: WaitBaseT | None = None, maximum: float = 60.0) -> None:
        self.fallback: WaitBaseT = wait_backoff() if fallback is None else fallback
        if not callable(self.fallback):
            raise ConfigurationError(
                "fallback", f"must be a tenacity wait strategy, got {fallback!r}"
            )
        self.maximum = check_positive("maximum", maximum)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        hint = getattr(error, "retry_after", None)
        if (
            isinstance(hint, int | float)
            and not isinstance(hint, bool)
            and math.isfinite(hint)
            and hint >= 0
        ):
            return min(float(hint), self.maximum)
        return float(self.fallback(retry_state))

    def __repr__(self) -> str:
        return f"wait_retry_after(fallback={self.fallback!r}, maximum={self.maximum})"


def _reads_results(strategy: object) -> bool:
    if isinstance(strategy, retry_if_result | retry_if_not_result):
        return True
    if isinstance(strategy, retry_any | retry_all):
        return any(_reads_results(s) for s in strategy.retries)
    return False


def _retry_strategy(on: ExceptionTypes | ExceptionPredicate | None, retry: Any) -> Any:
    if on is not None and retry is not None:
        raise ConfigurationError("retry", "pass either on= or retry=, not both")
    if retry is not None:
        if not callable(retry):
            raise ConfigurationError("retry", f"must be a tenacity retry strategy, got {retry!r}")
        if _reads_results(retry):
            raise ConfigurationError(
                "retry",
                "result-based strategies are not supported (successful results are never "
                "inspected, which keeps the success path free); raise an exception instead",
            )
        return retry
    if on is None:
        raise ConfigurationError(
            "on", "declare which exceptions are retryable, e.g. on=(ConnectionError, TimeoutError)"
        )
    if isinstance(on, type):
        on = (on,)
    if isinstance(on, tuple):
        if not on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
            raise ConfigurationError("on", f"must be exception types or a predicate, got {on!r}")
        return tenacity.retry_if_exception_type(on)
    if callable(on):
        return tenacity.retry_if_exception(on)
    raise ConfigurationError("on", f"must be exception types or a predicate, got {on!r}")


class _Attempts:
    """The retry decision for one logical call, created at its first failure."""

    __slots__ = ("policy", "start", "state")

    def __init__(
        self, policy: Retry, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.policy = policy
        self.state = tenacity.RetryCallState(policy._retrying, fn, args, kwargs)
        self.start = policy._clock.monotonic()
        self.state.start_time = self.start

    def _give_up(self, error: Exception, reason: str) -> NoReturn:
        policy = self.policy
        emit(
            policy._telemetry,
            "retry",
            policy.name,
            "gave_up",
            reason=reason,
            attempts=self.state.attempt_number,
            error=type(error).__name__,
        )
        if not policy.reraise and self.state.outcome is not None:
            raise tenacity.RetryError(self.state.outcome) from error
        raise error

    def after_failure(self, error: Exception) -> float:
        """Seconds to wait before the next attempt; raises when giving up."""
        policy = self.policy
        state = self.state
        outcome = tenacity.Future(state.attempt_number)
        outcome.set_exception(error)
        state.outcome = outcome
        now = policy._clock.monotonic()
        state.outcome_timestamp = now
        if not policy._retry(state):
            raise error  # not declared retryable: propagate untouched
        testing = _TESTING.enabled
        if testing and _TESTING.attempts is not None and state.attempt_number >= _TESTING.attempts:
            self._give_up(error, "exhausted")
        if policy._stop(state):
            self._give_up(error, "exhausted")
        wait = 0.0 if testing else max(0.0, float(policy._wait(state)))
        left = remaining()
        if left is not None and wait >= left:
            self._give_up(error, "deadline")  # sleeping would outlive the caller
        budget = policy.budget
        if budget is not None and not budget.try_withdraw():
            emit(
                policy._telemetry,
                "retry",
                policy.name,
                "gave_up",
                reason="budget",
                attempts=state.attempt_number,
                error=type(error).__name__,
                budget=budget.name,
            )
            raise RetryBudgetExhaustedError(budget.name) from error
        state.upcoming_sleep = wait
        state.idle_for += wait
        details = RetryDetails(policy.name, state.attempt_number, error, wait, now - self.start)
        for hook in policy._hooks:
            try:
                hook(details)
            except Exception:
                _log.exception("retry hook %r failed", hook)
        emit(
            policy._telemetry,
            "retry",
            policy.name,
            "retry",
            attempt=state.attempt_number,
            wait=wait,
            error=type(error).__name__,
        )
        state.prepare_for_next_attempt()
        return wait


class Retry(PolicyDecorator):
    """Retry a call on declared, transient errors, with backoff and a shared budget.

    Strategies are tenacity's own objects: pass ``stop=``, ``wait=``,
    ``retry=`` as you would to ``tenacity.retry``, or use the shortcuts
    ``attempts``, ``on``, ``wait_initial``, ``wait_max``, ``wait_jitter``.
    Defaults: 3 attempts, exponential backoff from 0.1 s to 5 s with full
    jitter, and nothing retried unless declared with ``on=``/``retry=``.

    When attempts run out, the last exception is re-raised unchanged (set
    ``reraise=False`` for tenacity's `RetryError`). A backoff that would end
    after the current deadline is not slept: the last error is raised at once.
    With a `RetryBudget`, a retry the budget cannot pay for raises
    `RetryBudgetExhaustedError` chained from the original error.

    The first attempt is a direct call; the tenacity machinery is engaged only
    after a failure, so the success path costs a ``try`` block.
    """

    __slots__ = (
        "_clock",
        "_hooks",
        "_retry",
        "_retrying",
        "_stop",
        "_telemetry",
        "_wait",
        "budget",
        "name",
        "reraise",
    )

    def __init__(
        self,
        *,
        on: ExceptionTypes | ExceptionPredicate | None = None,
        attempts: int | None = None,
        wait_initial: float | None = None,
        wait_max: float | None = None,
        wait_jitter: float | None = None,
        stop: StopBaseT | None = None,
        wait: WaitBaseT | None = None,
        retry: Any = None,
        budget: RetryBudget | None = None,
        reraise: bool = True,
        on_retry: RetryHook | Iterable[RetryHook] = (),
        name: str = "retry",
        clock: Clock = SYSTEM_CLOCK,
        telemetry: Telemetry = DEFAULT_TELEMETRY,
    ) -> None:
        self.name = check_name(name)
        self._retry = _retry_strategy(on, retry)
        if stop is not None and attempts is not None:
            raise ConfigurationError("stop", "pass either attempts= or stop=, not both")
        if stop is not None:
            if not callable(stop):
                raise ConfigurationError("stop", f"must be a tenacity stop strategy, got {stop!r}")
            self._stop: StopBaseT = stop
        else:
            self._stop = tenacity.stop_after_attempt(
                check_positive_int("attempts", 3 if attempts is None else attempts)
            )
        shortcuts = (wait_initial, wait_max, wait_jitter)
        if wait is not None:
            if any(s is not None for s in shortcuts):
                raise ConfigurationError(
                    "wait", "pass either wait= or wait_initial/wait_max/wait_jitter, not both"
                )
            if not callable(wait):
                raise ConfigurationError("wait", f"must be a tenacity wait strategy, got {wait!r}")
            self._wait: WaitBaseT = wait
        else:
            self._wait = wait_backoff(
                0.1 if wait_initial is None else wait_initial,
                max(5.0, wait_initial or 0.0) if wait_max is None else wait_max,
                1.0 if wait_jitter is None else wait_jitter,
            )
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError("budget", f"must be a RetryBudget, got {budget!r}")
        self.budget = budget
        self.reraise = bool(reraise)
        hooks = (on_retry,) if callable(on_retry) else tuple(on_retry)
        if not all(callable(h) for h in hooks):
            raise ConfigurationError("on_retry", "must be a callable or an iterable of callables")
        self._hooks: tuple[RetryHook, ...] = hooks
        self._clock = clock
        self._telemetry = telemetry
        # The tenacity object strategies may look at via retry_state.retry_object.
        self._retrying = tenacity.Retrying(
            stop=self._stop, wait=self._wait, retry=self._retry, reraise=True, sleep=clock.sleep
        )

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)``, retrying declared failures."""
        if self.budget is not None:
            self.budget.deposit()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            error = exc
        attempts = _Attempts(self, fn, args, kwargs)
        sleep = self._clock.sleep
        while True:
            delay = attempts.after_failure(error)
            if delay > 0:
                sleep(delay)
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                error = exc

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)``, retrying declared failures."""
        if self.budget is not None:
            self.budget.deposit()
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            error = exc
        attempts = _Attempts(self, fn, args, kwargs)
        asleep = self._clock.asleep
        while True:
            delay = attempts.after_failure(error)
            if delay > 0:
                await asleep(delay)
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                error = exc

    def __repr__(self) -> str:
        return f"Retry(name={self.name!r}, stop={self._stop!r}, wait={self._wait!r})"
