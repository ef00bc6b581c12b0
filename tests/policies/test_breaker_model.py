"""Model-based test: the breaker against a deliberately naive reference model.

The model keeps the window as a plain list and recomputes every rate from
scratch; hypothesis drives both with random calls (ok, failing, slow),
clock advances and manual transitions, and checks after every step that the
state, the window counts, the rejections and their ``retry_after`` agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from resilience import CircuitOpenError
from resilience.policies import CircuitBreaker, CircuitBreakerConfig, CircuitState
from resilience.testing import FakeClock

SLOW_AFTER = 1.0


class Boom(Exception):
    pass


@dataclass
class Model:
    """The specification, written for clarity rather than speed."""

    window_type: str
    window_size: int
    minimum_calls: int
    failure_threshold: float
    slow_threshold: float
    slow_detection: bool
    consecutive: int | None
    base: float
    multiplier: float
    cap: float
    permitted: int
    now: float
    state: CircuitState = CircuitState.CLOSED
    outcomes: list[tuple[float, bool, bool]] = field(default_factory=list)  # (time, failed, slow)
    trials: list[tuple[bool, bool]] = field(default_factory=list)
    issued: int = 0
    open_until: float = 0.0
    trips: int = 0
    streak: int = 0
    rejected: int = 0

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        if self.window_type == "count":
            return self.outcomes[-self.window_size :]
        oldest = math.floor(now) - self.window_size + 1
        return [o for o in self.outcomes if math.floor(o[0]) >= oldest]

    def counts(self, now: float) -> tuple[int, int, int]:
        if self.state is CircuitState.HALF_OPEN:
            items = self.trials
            return len(items), sum(f for f, _ in items), sum(s for _, s in items)
        w = self.window(now)
        return len(w), sum(f for _, f, _ in w), sum(s for _, _, s in w)

    def enter(self, state: CircuitState, now: float) -> None:
        if state in (CircuitState.CLOSED, CircuitState.METRICS_ONLY):
            self.outcomes = []
            if state is CircuitState.CLOSED:
                self.trips = 0
                self.streak = 0
        elif state is CircuitState.OPEN:
            duration = min(self.base * self.multiplier**self.trips, self.cap)
            self.trips += 1
            self.open_until = now + duration
        elif state is CircuitState.HALF_OPEN:
            self.trials = []
            self.issued = 0
        self.state = state

    def admit(self, now: float) -> float | None:
        """``None`` when admitted, else the expected ``retry_after``."""
        if self.state is CircuitState.OPEN:
            if now < self.open_until:
                self.rejected += 1
                return self.open_until - now
            self.enter(CircuitState.HALF_OPEN, now)
        if self.state is CircuitState.HALF_OPEN:
            if self.issued >= self.permitted:
                self.rejected += 1
                return 0.0
            self.issued += 1
        if self.state is CircuitState.FORCED_OPEN:
            self.rejected += 1
            return math.inf
        return None

    def outcome(self, failed: bool, slow: bool, now: float) -> None:
        if self.state is CircuitState.DISABLED:
            return
        self.streak = self.streak + 1 if failed else 0
        if self.state in (CircuitState.CLOSED, CircuitState.METRICS_ONLY):
            self.outcomes.append((now, failed, slow))
            if self.state is CircuitState.METRICS_ONLY or not (failed or slow):
                return
            if self.consecutive is not None and failed and self.streak >= self.consecutive:
                self.enter(CircuitState.OPEN, now)
                return
            calls, failures, slows = self.counts(now)
            if calls < self.minimum_calls:
                return
            if (self.consecutive is None and failures * 100 >= self.failure_threshold * calls) or (
                slow and slows * 100 >= self.slow_threshold * calls
            ):
                self.enter(CircuitState.OPEN, now)
        elif self.state is CircuitState.HALF_OPEN:
            self.trials.append((failed, slow))
            failures = sum(f for f, _ in self.trials)
            slows = sum(s for _, s in self.trials)
            successes = len(self.trials) - failures
            if self.consecutive is not None:
                if failed:
                    self.enter(CircuitState.OPEN, now)
                elif successes >= self.permitted:
                    self.enter(CircuitState.CLOSED, now)
                return
            if (
                failures * 100 >= self.failure_threshold * self.permitted
                or slows * 100 >= self.slow_threshold * self.permitted
            ):
                self.enter(CircuitState.OPEN, now)
            elif len(self.trials) >= self.permitted:
                self.enter(CircuitState.CLOSED, now)


class BreakerMachine(RuleBasedStateMachine):
    clock: FakeClock
    breaker: CircuitBreaker
    model: Model

    @initialize(
        window_type=st.sampled_from(["count", "time"]),
        window_size=st.integers(1, 8),
        minimum_calls=st.integers(1, 6),
        failure_threshold=st.sampled_from([10.0, 33.3, 50.0, 100.0]),
        slow_threshold=st.sampled_from([25.0, 50.0, 100.0]),
        slow_detection=st.booleans(),
        consecutive=st.none() | st.integers(1, 4),
        base=st.sampled_from([0.0, 1.0, 5.0]),
        multiplier=st.sampled_from([1.0, 2.0, 3.0]),
        permitted=st.integers(1, 4),
    )
    def setup(
        self,
        window_type: str,
        window_size: int,
        minimum_calls: int,
        failure_threshold: float,
        slow_threshold: float,
        slow_detection: bool,
        consecutive: int | None,
        base: float,
        multiplier: float,
        permitted: int,
    ) -> None:
        self.clock = FakeClock(start=100.0)
        cap = base * 4
        config = CircuitBreakerConfig(
            window_type=window_type,  # type: ignore[arg-type]
            window_size=window_size,
            minimum_calls=minimum_calls,
            failure_rate_threshold=failure_threshold,
            slow_call_rate_threshold=slow_threshold,
            slow_call_duration=SLOW_AFTER if slow_detection else None,
            consecutive_failures=consecutive,
            open_duration=base,
            open_duration_multiplier=multiplier,
            max_open_duration=cap,
            permitted_calls_in_half_open=permitted,
        )
        self.breaker = CircuitBreaker("model", config, clock=self.clock)
        self.model = Model(
            window_type=window_type,
            window_size=window_size,
            minimum_calls=minimum_calls,
            failure_threshold=failure_threshold,
            slow_threshold=slow_threshold,
            slow_detection=slow_detection,
            consecutive=consecutive,
            base=base,
            multiplier=multiplier,
            cap=cap,
            permitted=permitted,
            now=self.clock.monotonic(),
        )

    @rule(failed=st.booleans(), duration=st.sampled_from([0.0, 0.0, 0.5, 2.0]))
    def call(self, failed: bool, duration: float) -> None:
        clock, model = self.clock, self.model
        expected = model.admit(clock.monotonic())

        def fn() -> str:
            clock.advance(duration)
            if failed:
                raise Boom
            return "ok"

        if expected is not None:
            with pytest.raises(CircuitOpenError) as info:
                self.breaker.call(fn)
            assert info.value.retry_after == pytest.approx(expected)
            assert info.value.state == model.state.value
            return
        if failed:
            with pytest.raises(Boom):
                self.breaker.call(fn)
        else:
            assert self.breaker.call(fn) == "ok"
        slow = model.slow_detection and duration >= SLOW_AFTER
        model.outcome(failed, slow, clock.monotonic())

    @rule(seconds=st.sampled_from([0.3, 1.0, 2.5, 5.0, 20.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(state=st.sampled_from(list(CircuitState)))
    def manual(self, state: CircuitState) -> None:
        self.breaker.transition_to(state)
        self.model.enter(state, self.clock.monotonic())

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.enter(CircuitState.CLOSED, self.clock.monotonic())

    @invariant()
    def agrees_with_model(self) -> None:
        if not hasattr(self, "breaker"):
            return
        now = self.clock.monotonic()
        m = self.breaker.metrics()
        assert m.state is self.model.state
        assert (m.buffered_calls, m.failed_calls, m.slow_calls) == self.model.counts(now)
        assert m.not_permitted_calls == self.model.rejected
        assert m.consecutive_failures == self.model.streak
        if m.state is CircuitState.OPEN:
            assert m.retry_after == pytest.approx(max(self.model.open_until - now, 0.0))


BreakerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerModel = BreakerMachine.TestCase
