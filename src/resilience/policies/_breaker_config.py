"""Circuit breaker configuration and states (validated at construction)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from resilience._errors import ConfigurationError

__all__ = ["CircuitBreakerConfig", "CircuitState"]


class CircuitState(StrEnum):
    """Where a circuit breaker stands.

    The three automatic states (``CLOSED``, ``OPEN``, ``HALF_OPEN``) are the
    classic pattern; the three manual ones let an operator take over during an
    incident: ``FORCED_OPEN`` rejects everything until released, ``DISABLED``
    lets everything through and records nothing, ``METRICS_ONLY`` lets
    everything through but still measures (to watch a new dependency before
    trusting the breaker with it).
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"
    FORCED_OPEN = "forced_open"
    METRICS_ONLY = "metrics_only"

    @classmethod
    def parse(cls, value: CircuitState | str, field: str = "state") -> CircuitState:
        """Accept a state or its name (``"half_open"``, ``"half-open"``, any case).

        Unknown names raise `ConfigurationError` naming *field*, so an operator
        typo never silently becomes a default.
        """
        if isinstance(value, CircuitState):
            return value
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_")
            for state in cls:
                if state.value == key:
                    return state
        valid = ", ".join(s.value for s in cls)
        raise ConfigurationError(field, f"unknown circuit state {value!r}; valid: {valid}")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(name, f"must be an integer >= 1, got {value!r}")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigurationError(name, f"must be a number, got {value!r}")
    return float(value)


def _percentage(name: str, value: object) -> None:
    number = _number(name, value)
    if not 0 < number <= 100:
        raise ConfigurationError(name, f"must be a percentage in (0, 100], got {value!r}")


def _exception_types(name: str, value: object) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise ConfigurationError(name, f"must be a tuple of exception classes, got {value!r}")


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """How a `CircuitBreaker` decides to trip and to recover.

    Validated at construction: a bad value raises `resilience.ConfigurationError`
    naming the field, so a typo in a deployment fails at start-up instead of
    leaving a dependency unprotected.

    Attributes:
        failure_rate_threshold: trip when at least this percentage of the calls
            in the window failed (and at least ``minimum_calls`` were recorded).
            Also the verdict over the half-open trial calls.
        slow_call_rate_threshold: trip when at least this percentage of the
            calls were slower than ``slow_call_duration``.
        slow_call_duration: seconds after which a call counts as slow; ``None``
            (the default) disables slow-call detection and its two clock reads
            per call.
        window_type: ``"count"`` (the last ``window_size`` calls) or ``"time"``
            (the calls of the last ``window_size`` seconds, one bucket per second).
        window_size: calls (count window, at most 1,000,000) or seconds (time
            window, at most 3600).
        minimum_calls: no rate verdict before this many calls are in the window,
            so three failures at start-up do not count as a 100 % failure rate.
        consecutive_failures: when set, switch to consecutive mode (pybreaker's
            ``fail_max``): trip after this many failures in a row instead of on
            the failure rate, and in half-open reopen on the first failed trial.
        open_duration: seconds the circuit stays open after the first trip.
        open_duration_multiplier: each trip that follows a failed half-open
            trial multiplies the open duration by this factor (``1`` = fixed).
        max_open_duration: cap of the growing open duration.
        permitted_calls_in_half_open: trial calls admitted in half-open; every
            other call is rejected until they report back.
        automatic_half_open: ``False`` (lazy, the default) moves OPEN to
            HALF_OPEN on the first call after ``open_duration``; ``True`` also
            moves it when anyone looks (``state``, ``metrics()``, the CLI) or
            when `CircuitBreaker.start_monitor` runs, so dashboards show the
            transition on time. No timer is ever needed for correctness.
        record_exceptions: exception classes that count as failures.
        ignore_exceptions: exception classes that count as neither success nor
            failure (a 404 raised as an exception is the caller's fault, not
            the dependency's). Checked before ``record_exceptions``.
        failure_predicate: when set, decides alone: ``True`` means the exception
            counts as a failure, ``False`` means it is ignored.
        result_predicate: ``True`` means a *returned* value is a failure (e.g. a
            response with status 503), recorded without raising.
        initial_state: the state a new breaker starts in (name or `CircuitState`).
    """

    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration: float | None = None
    window_type: Literal["count", "time"] = "count"
    window_size: int = 100
    minimum_calls: int = 10
    consecutive_failures: int | None = None
    open_duration: float = 30.0
    open_duration_multiplier: float = 1.0
    max_open_duration: float = 300.0
    permitted_calls_in_half_open: int = 5
    automatic_half_open: bool = False
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    failure_predicate: Callable[[BaseException], bool] | None = None
    result_predicate: Callable[[Any], bool] | None = None
    initial_state: CircuitState | str = CircuitState.CLOSED

    def __post_init__(self) -> None:
        _percentage("failure_rate_threshold", self.failure_rate_threshold)
        _percentage("slow_call_rate_threshold", self.slow_call_rate_threshold)
        if self.slow_call_duration is not None and not (
            _number("slow_call_duration", self.slow_call_duration) > 0
        ):
            raise ConfigurationError(
                "slow_call_duration",
                f"must be > 0 seconds or None, got {self.slow_call_duration!r}",
            )
        if self.window_type not in ("count", "time"):
            raise ConfigurationError(
                "window_type", f"must be 'count' or 'time', got {self.window_type!r}"
            )
        _positive_int("window_size", self.window_size)
        if self.window_type == "count" and self.window_size > 1_000_000:
            raise ConfigurationError(
                "window_size",
                f"a count window holds at most 1,000,000 calls, got {self.window_size}",
            )
        if self.window_type == "time" and self.window_size > 3600:
            raise ConfigurationError(
                "window_size", f"a time window holds at most 3600 seconds, got {self.window_size}"
            )
        _positive_int("minimum_calls", self.minimum_calls)
        if self.consecutive_failures is not None:
            _positive_int("consecutive_failures", self.consecutive_failures)
        open_duration = _number("open_duration", self.open_duration)
        if not 0 <= open_duration < math.inf:
            raise ConfigurationError(
                "open_duration", f"must be a finite number of seconds >= 0, got {open_duration!r}"
            )
        if _number("open_duration_multiplier", self.open_duration_multiplier) < 1:
            raise ConfigurationError(
                "open_duration_multiplier",
                f"must be >= 1 (1 keeps the duration fixed), got {self.open_duration_multiplier!r}",
            )
        if _number("max_open_duration", self.max_open_duration) < open_duration:
            raise ConfigurationError(
                "max_open_duration",
                f"must be >= open_duration ({open_duration}), got {self.max_open_duration!r}",
            )
        _positive_int("permitted_calls_in_half_open", self.permitted_calls_in_half_open)
        if not isinstance(self.automatic_half_open, bool):
            raise ConfigurationError(
                "automatic_half_open", f"must be a bool, got {self.automatic_half_open!r}"
            )
        _exception_types("record_exceptions", self.record_exceptions)
        _exception_types("ignore_exceptions", self.ignore_exceptions)
        for name in ("failure_predicate", "result_predicate"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigurationError(name, f"must be callable or None, got {value!r}")
        object.__setattr__(
            self, "initial_state", CircuitState.parse(self.initial_state, "initial_state")
        )
