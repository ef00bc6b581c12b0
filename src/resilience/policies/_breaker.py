"""`CircuitBreaker`: thin sync and async drivers around `BreakerCore`.

The driver reads the clock, asks the core for a permit, runs the function
with no lock held, classifies the outcome and reports it back. Everything
stateful lives in the core; ``call`` and ``acall`` differ only in ``await``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from resilience._clock import SYSTEM_CLOCK, Clock, MonotonicClock
from resilience._errors import CircuitOpenError, ConfigurationError
from resilience._telemetry import Event, Telemetry

from ._base import PolicyDecorator
from ._breaker_config import CircuitBreakerConfig, CircuitState
from ._breaker_core import BreakerCore, CircuitBreakerMetrics, Epoch, Rejection, Transition
from ._breaker_windows import FAILURE, SLOW
from ._support import DEFAULT_TELEMETRY

if TYPE_CHECKING:
    from ._breaker_redis import SharedState

__all__ = ["CircuitBreaker", "CircuitBreakerEvent", "CircuitBreakerListener"]

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger("resilience.policies.breaker")
_COMPONENT = "circuit_breaker"


@dataclass(frozen=True, slots=True)
class CircuitBreakerEvent:
    """What a listener receives: one object, so new fields never break listeners.

    Attributes:
        name: the breaker's name.
        kind: ``"state_change"``, ``"success"``, ``"failure"``, ``"slow_call"``,
            ``"rejected"`` or ``"ignored_error"``.
        state: the state after the event.
        from_state: for ``state_change``, the state left.
        reason: for ``state_change``, why (``"failure_rate"``, ``"manual"``...).
        duration: how long the call ran (``None`` when not measured).
        exception: the exception raised by the call, if any.
        retry_after: for ``rejected``, seconds until a call may be admitted.
    """

    name: str
    kind: str
    state: CircuitState
    from_state: CircuitState | None = None
    reason: str = ""
    duration: float | None = None
    exception: BaseException | None = None
    retry_after: float | None = None


CircuitBreakerListener = Callable[[CircuitBreakerEvent], object]
"""A listener: any callable taking one `CircuitBreakerEvent` (its return value is ignored)."""


class CircuitBreaker(PolicyDecorator):
    """Stops calling a dependency that is failing, so its outage stays its own.

    When the failure rate (or the slow-call rate) over a sliding window
    crosses a threshold the breaker *opens*: calls fail immediately with
    `resilience.CircuitOpenError` instead of tying up a worker on a dependency
    that is down. After ``open_duration`` a few trial calls are admitted
    (*half-open*); their outcome closes the circuit or opens it again.

    Use it as ``breaker.call(fn, *args)``, ``await breaker.acall(fn, *args)``
    or as a decorator on sync and async functions. No lock is held while the
    protected function runs, so concurrent calls never queue behind each other.

    Args:
        name: identifies the breaker in errors, telemetry and the shared state.
        config: thresholds and windows (`CircuitBreakerConfig`; defaults if omitted).
        clock: time source (tests pass `resilience.testing.FakeClock`).
        telemetry: receives state changes, failures, slow calls and rejections
            as `resilience.Event` (never per success); defaults to the
            ``resilience`` logger at DEBUG, like every policy; ``None`` turns
            it off.
        listeners: callables receiving a `CircuitBreakerEvent` for every event,
            successes included.
        shared: a `RedisSharedState` (or any `SharedState`) so the breakers of
            several processes trip and recover together.
    """

    __slots__ = (
        "_classify_ignore",
        "_classify_record",
        "_clock",
        "_core",
        "_failure_predicate",
        "_listeners",
        "_name",
        "_now",
        "_result_predicate",
        "_shared",
        "_slow",
        "_telemetry",
        "config",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        telemetry: Telemetry | None = DEFAULT_TELEMETRY,
        listeners: tuple[CircuitBreakerListener, ...] | list[CircuitBreakerListener] = (),
        shared: SharedState | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name", f"must be a non-empty string, got {name!r}")
        if config is None:
            config = CircuitBreakerConfig()
        elif not isinstance(config, CircuitBreakerConfig):
            raise ConfigurationError("config", f"must be a CircuitBreakerConfig, got {config!r}")
        self._name = name
        self.config = config
        self._clock = clock
        # The system clock's bound method costs a frame; time.monotonic is the same source.
        self._now: Callable[[], float] = (
            time.monotonic if type(clock) is MonotonicClock else clock.monotonic
        )
        self._telemetry = telemetry
        self._listeners: tuple[CircuitBreakerListener, ...] = tuple(listeners)
        self._slow = config.slow_call_duration
        self._classify_record = config.record_exceptions
        self._classify_ignore = config.ignore_exceptions
        self._failure_predicate = config.failure_predicate
        self._result_predicate = config.result_predicate
        self._core = BreakerCore(config, self._now())
        self._shared = shared
        if self._listeners or shared is not None:
            self._core.set_fast_allowed(False)
        if shared is not None:
            shared.bind(name, self._core, self._now, self._announce)

    # ------------------------------------------------------------------ public API

    @property
    def name(self) -> str:
        """The name given at construction (used in errors and telemetry)."""
        return self._name

    @property
    def core(self) -> BreakerCore:
        """The state machine (for drivers such as the pybreaker facade and the shared state)."""
        return self._core

    @property
    def shared(self) -> SharedState | None:
        """The cross-process state this breaker follows, if any."""
        return self._shared

    @property
    def clock(self) -> Clock:
        """The clock this breaker reads."""
        return self._clock

    @property
    def state(self) -> CircuitState:
        """The current state (an automatic OPEN → HALF_OPEN is applied when due)."""
        now = self._now()
        if self._shared is not None:
            self._shared.before_call(now)
        state = self._core.current_state(now)
        if self._core.events:
            self._announce()
        return state

    def metrics(self) -> CircuitBreakerMetrics:
        """A snapshot of the window, the state and the rejection count."""
        now = self._now()
        if self._shared is not None:
            self._shared.before_call(now)
        snapshot = self._core.metrics(now)
        if self._core.events:
            self._announce()
        return snapshot

    def add_listener(self, listener: CircuitBreakerListener) -> None:
        """Register *listener*; it receives every event, successes included.

        Listeners run on the calling thread, after the breaker's lock is
        released; an exception in a listener is logged and swallowed.
        """
        self._listeners = (*self._listeners, listener)
        self._core.set_fast_allowed(False)

    def remove_listener(self, listener: CircuitBreakerListener) -> None:
        """Unregister *listener* (the success lane is re-enabled when none remain)."""
        self._listeners = tuple(x for x in self._listeners if x != listener)
        if not self._listeners and self._shared is None:
            self._core.set_fast_allowed(True)

    def transition_to(self, state: CircuitState | str, reason: str = "manual") -> None:
        """Move to *state* by hand (a name such as ``"forced_open"`` is accepted).

        Unknown names raise `resilience.ConfigurationError`.
        """
        target = CircuitState.parse(state, "state")
        self._core.transition(target, self._now(), reason)
        self._announce()

    def transition_to_closed(self) -> None:
        """Close the circuit now, clearing the window."""
        self.transition_to(CircuitState.CLOSED)

    def transition_to_open(self) -> None:
        """Open the circuit now, for the configured open duration."""
        self.transition_to(CircuitState.OPEN)

    def transition_to_half_open(self) -> None:
        """Start admitting trial calls now."""
        self.transition_to(CircuitState.HALF_OPEN)

    def transition_to_forced_open(self) -> None:
        """Reject every call until another manual transition (an operator's big red switch)."""
        self.transition_to(CircuitState.FORCED_OPEN)

    def transition_to_disabled(self) -> None:
        """Let every call through and record nothing until another manual transition."""
        self.transition_to(CircuitState.DISABLED)

    def transition_to_metrics_only(self) -> None:
        """Let every call through, keep measuring and announcing, never trip."""
        self.transition_to(CircuitState.METRICS_ONLY)

    def force_open(self) -> None:
        """Alias of `transition_to_forced_open`."""
        self.transition_to(CircuitState.FORCED_OPEN)

    def disable(self) -> None:
        """Alias of `transition_to_disabled`."""
        self.transition_to(CircuitState.DISABLED)

    def reset(self) -> None:
        """Back to CLOSED with an empty window and the open duration back to its base."""
        self.transition_to(CircuitState.CLOSED, "reset")

    # ------------------------------------------------------------------ drivers

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` if the circuit admits it.

        Raises `resilience.CircuitOpenError` without calling *fn* when the
        circuit is open; otherwise returns *fn*'s result or re-raises its
        exception unchanged after recording the outcome.
        """
        core = self._core
        permit = core.fast
        if permit is not None:  # CLOSED, count window, nobody listening: lock-free lane
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._settle_error(permit, exc, None)
                raise
            permit.buf[next(permit.slots)] = 0  # one atomic store: see CountWindow
            core.consecutive = 0  # informational in rate mode (the lane is off in consecutive mode)
            return result
        start = self._now()
        permit = self._admit(start)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._settle_error(permit, exc, start)
            raise
        self._settle_result(permit, result, start)
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` if the circuit admits it (see `call`).

        Cancellation gives a half-open trial slot back without counting an outcome.
        """
        core = self._core
        permit = core.fast
        if permit is not None:
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._settle_error(permit, exc, None)
                raise
            permit.buf[next(permit.slots)] = 0
            core.consecutive = 0
            return result
        start = self._now()
        permit = self._admit(start)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._settle_error(permit, exc, start)
            raise
        self._settle_result(permit, result, start)
        return result

    # ------------------------------------------------------------------ shared by both drivers

    def _admit(self, now: float) -> Epoch:
        core = self._core
        shared = self._shared
        if shared is not None:
            shared.before_call(now)
        permit = core.try_acquire(now)
        if core.events:
            self._announce()
        if type(permit) is Rejection:
            self._reject(permit)
        return permit  # type: ignore[return-value]

    def _reject(self, rejection: Rejection) -> None:
        state, retry_after = rejection
        if self._telemetry is not None or self._listeners:
            self._emit(
                CircuitBreakerEvent(self._name, "rejected", state, retry_after=retry_after),
                {"state": state.value, "retry_after": retry_after},
            )
        raise CircuitOpenError(self._name, state.value, retry_after)

    def is_failure(self, exc: BaseException) -> bool:
        """Whether *exc* counts as a failure (``False``: ignored, neither success nor failure)."""
        predicate = self._failure_predicate
        if predicate is not None:
            try:
                return bool(predicate(exc))
            except Exception:
                _log.exception(
                    "failure_predicate of breaker %r raised; counting a failure", self._name
                )
                return True
        if self._classify_ignore and isinstance(exc, self._classify_ignore):
            return False
        return isinstance(exc, self._classify_record)

    def _settle_error(self, permit: Epoch, exc: BaseException, start: float | None) -> None:
        core = self._core
        if not self.is_failure(exc):
            core.release(permit)
            if self._listeners:
                self._emit(
                    CircuitBreakerEvent(self._name, "ignored_error", permit.state, exception=exc),
                    None,
                )
            return
        now = self._now()
        code = FAILURE
        slow = self._slow
        if slow is not None and start is not None and now - start >= slow:
            code |= SLOW
        core.record(permit, code, now)
        if self._shared is not None:
            self._shared.recorded(code, now)
        if core.events:
            self._announce()
        if self._telemetry is not None or self._listeners:
            duration = now - start if start is not None else None
            self._emit(
                CircuitBreakerEvent(
                    self._name, "failure", core.epoch.state, duration=duration, exception=exc
                ),
                {"error": type(exc).__name__, "duration": duration},
            )
            if code & SLOW:
                self._emit(
                    CircuitBreakerEvent(
                        self._name, "slow_call", core.epoch.state, duration=duration
                    ),
                    {"duration": duration},
                )

    def _settle_result(self, permit: Epoch, result: object, start: float) -> None:
        core = self._core
        now = self._now()
        code = 0
        predicate = self._result_predicate
        if predicate is not None:
            try:
                if predicate(result):
                    code = FAILURE
            except Exception:
                _log.exception(
                    "result_predicate of breaker %r raised; counting a success", self._name
                )
        slow = self._slow
        duration = now - start
        if slow is not None and duration >= slow:
            code |= SLOW
        core.record(permit, code, now)
        if self._shared is not None:
            self._shared.recorded(code, now)
        if core.events:
            self._announce()
        if self._telemetry is not None or self._listeners:
            state = core.epoch.state
            if code & FAILURE:
                self._emit(
                    CircuitBreakerEvent(self._name, "failure", state, duration=duration),
                    {"error": "result", "duration": duration},
                )
            elif self._listeners:
                self._emit(
                    CircuitBreakerEvent(self._name, "success", state, duration=duration), None
                )
            if code & SLOW:
                self._emit(
                    CircuitBreakerEvent(self._name, "slow_call", state, duration=duration),
                    {"duration": duration},
                )

    def _announce(self) -> None:
        for transition in self._core.drain():
            self._announce_one(transition)

    def _announce_one(self, t: Transition) -> None:
        if self._shared is not None:
            self._shared.transitioned(t)
        self._emit(
            CircuitBreakerEvent(
                self._name, "state_change", t.to_state, from_state=t.from_state, reason=t.reason
            ),
            {
                "from": t.from_state.value,
                "to": t.to_state.value,
                "reason": t.reason,
                "open_duration": t.open_duration,
            },
        )

    def _emit(self, event: CircuitBreakerEvent, attributes: dict[str, Any] | None) -> None:
        telemetry = self._telemetry
        if telemetry is not None and attributes is not None:
            try:
                telemetry.emit(Event(_COMPONENT, self._name, event.kind, attributes))
            except Exception:
                _log.exception("telemetry of breaker %r failed", self._name)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("listener %r of breaker %r failed", listener, self._name)

    # ------------------------------------------------------------------ background transitions

    def start_monitor(self, interval: float = 1.0) -> Callable[[], None]:
        """Check every *interval* seconds whether OPEN should become HALF_OPEN.

        Only useful with ``automatic_half_open=True`` when nothing calls or
        reads the breaker but dashboards should still see the transition on
        time. Runs a daemon thread; returns a function that stops it.
        """
        if not interval > 0 or math.isinf(interval):
            raise ConfigurationError("interval", f"must be a finite number > 0, got {interval!r}")
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval):
                try:
                    _ = self.state
                except Exception:  # never let the monitor die silently
                    _log.exception("monitor of breaker %r failed", self._name)

        thread = threading.Thread(target=run, name=f"breaker-monitor-{self._name}", daemon=True)
        thread.start()

        def stop_monitor() -> None:
            stop.set()
            thread.join(timeout=5)

        return stop_monitor

    def __repr__(self) -> str:
        return f"CircuitBreaker({self._name!r}, state={self._core.epoch.state.value!r})"
