"""CircuitBreaker behaviour, sync and async side by side, on a FakeClock."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from resilience import CircuitOpenError, ConfigurationError, Event
from resilience.policies import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerEvent,
    CircuitState,
    Policy,
)
from resilience.testing import FakeClock, RecordingTelemetry


class Boom(Exception):
    pass


class NotFound(Exception):
    pass


def make(clock: FakeClock | None = None, **options: Any) -> CircuitBreaker:
    options.setdefault("minimum_calls", 4)
    options.setdefault("window_size", 10)
    options.setdefault("open_duration", 10.0)
    return CircuitBreaker("dep", CircuitBreakerConfig(**options), clock=clock or FakeClock())


def ok() -> str:
    return "ok"


def boom() -> str:
    raise Boom("down")


async def aok() -> str:
    await asyncio.sleep(0)
    return "ok"


async def aboom() -> str:
    await asyncio.sleep(0)
    raise Boom("down")


class Runner:
    """Drives a breaker through ``call`` or ``acall`` with one sync-looking API."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def run(self, breaker: CircuitBreaker, fn: Callable[[], Any]) -> Any:
        if self.mode == "sync":
            return breaker.call(fn)
        afn: Callable[[], Awaitable[Any]] = aok if fn is ok else aboom if fn is boom else fn
        return asyncio.run(breaker.acall(afn))

    def fail(self, breaker: CircuitBreaker, times: int = 1) -> None:
        for _ in range(times):
            with pytest.raises(Boom):
                self.run(breaker, boom)

    def succeed(self, breaker: CircuitBreaker, times: int = 1) -> None:
        for _ in range(times):
            assert self.run(breaker, ok) == "ok"


@pytest.fixture(params=["sync", "async"])
def runner(request: pytest.FixtureRequest) -> Runner:
    return Runner(request.param)


# ---------------------------------------------------------------------- closed -> open


def test_success_passes_result_through_and_stays_closed(runner: Runner) -> None:
    breaker = make()
    runner.succeed(breaker, 50)
    assert breaker.state is CircuitState.CLOSED
    m = breaker.metrics()
    assert (m.buffered_calls, m.failed_calls, m.failure_rate) == (10, 0, 0.0)


def test_trips_on_failure_rate_after_minimum_calls(runner: Runner) -> None:
    breaker = make(failure_rate_threshold=50)
    runner.fail(breaker, 3)  # 100 % but below minimum_calls=4
    assert breaker.state is CircuitState.CLOSED
    runner.succeed(breaker, 4)
    runner.fail(breaker)  # 4 / 8 = 50 %
    assert breaker.state is CircuitState.OPEN


def test_does_not_trip_below_threshold(runner: Runner) -> None:
    breaker = make(failure_rate_threshold=50)
    for _ in range(20):
        runner.succeed(breaker, 2)
        runner.fail(breaker)  # 33 %
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics().failure_rate == pytest.approx(100 * 3 / 10, abs=10)


def test_count_window_forgets_old_failures(runner: Runner) -> None:
    breaker = make(failure_rate_threshold=50, window_size=10, minimum_calls=10)
    runner.fail(breaker, 4)
    runner.succeed(breaker, 10)  # the four failures slid out
    assert breaker.metrics().failed_calls == 0
    runner.fail(breaker, 4)
    assert breaker.state is CircuitState.CLOSED  # 4 / 10


def test_open_rejects_without_calling_and_reports_retry_after(runner: Runner) -> None:
    clock = FakeClock()
    breaker = make(clock)
    runner.fail(breaker, 4)
    calls = []

    def tracked() -> str:
        calls.append(1)
        return "ok"

    async def atracked() -> str:
        calls.append(1)
        return "ok"

    clock.advance(4)
    with pytest.raises(CircuitOpenError) as info:
        runner.run(breaker, tracked if runner.mode == "sync" else atracked)
    assert calls == []
    err = info.value
    assert (err.name, err.state) == ("dep", "open")
    assert err.retry_after == pytest.approx(6.0)
    assert breaker.metrics().not_permitted_calls == 1


def test_trips_on_slow_call_rate(runner: Runner) -> None:
    clock = FakeClock()
    breaker = make(
        clock, slow_call_duration=1.0, slow_call_rate_threshold=50, failure_rate_threshold=100
    )

    def slow() -> str:
        clock.advance(2.0)
        return "late"

    async def aslow() -> str:
        clock.advance(2.0)
        return "late"

    fn: Any = slow if runner.mode == "sync" else aslow
    runner.succeed(breaker, 2)
    for _ in range(2):
        assert runner.run(breaker, fn) == "late"
    assert breaker.state is CircuitState.OPEN
    m = breaker.metrics()
    assert m.state is CircuitState.OPEN


def test_time_window_buckets_expire(runner: Runner) -> None:
    clock = FakeClock()
    breaker = make(clock, window_type="time", window_size=5, minimum_calls=4)
    runner.fail(breaker, 3)
    clock.advance(6)  # the three failures are older than the window
    assert breaker.metrics().buffered_calls == 0
    runner.succeed(breaker, 2)
    runner.fail(breaker, 2)
    assert breaker.state is CircuitState.OPEN  # 2 / 4 within the window


def test_time_window_counts_within_the_window(runner: Runner) -> None:
    clock = FakeClock()
    breaker = make(clock, window_type="time", window_size=10, minimum_calls=4)
    for _ in range(3):
        runner.fail(breaker)
        clock.advance(2)
    runner.succeed(breaker, 2)
    assert breaker.state is CircuitState.OPEN or breaker.metrics().failed_calls == 3
    runner.fail(breaker)
    assert breaker.state is CircuitState.OPEN


def test_consecutive_mode_trips_after_n_in_a_row(runner: Runner) -> None:
    breaker = make(consecutive_failures=3)
    runner.fail(breaker, 2)
    runner.succeed(breaker)  # resets the streak
    runner.fail(breaker, 2)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics().consecutive_failures == 2
    runner.fail(breaker)
    assert breaker.state is CircuitState.OPEN


# ---------------------------------------------------------------------- half-open


def test_half_open_after_open_duration_then_closes_on_good_trials(runner: Runner) -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=3)
    runner.fail(breaker, 4)
    clock.advance(10)
    runner.succeed(breaker, 2)
    assert breaker.state is CircuitState.HALF_OPEN
    runner.succeed(breaker)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics().buffered_calls == 0  # a fresh window


def test_half_open_reopens_when_trials_fail(runner: Runner) -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=4, failure_rate_threshold=50)
    runner.fail(breaker, 4)
    clock.advance(10)
    runner.succeed(breaker)
    runner.fail(breaker)
    assert breaker.state is CircuitState.HALF_OPEN  # 1 of 4 failed: verdict not certain
    runner.fail(breaker)  # 2 of 4 = 50 %: certain, reopen at once
    assert breaker.state is CircuitState.OPEN


def test_half_open_rejects_beyond_permitted_trials() -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=2)
    for _ in range(4):
        with pytest.raises(Boom):
            breaker.call(boom)
    clock.advance(10)
    seen: list[str] = []

    def nested() -> str:
        # while this trial runs, a second one is admitted and a third rejected
        seen.append(breaker.call(ok))
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(ok)
        assert info.value.state == "half_open"
        return "outer"

    assert breaker.call(nested) == "outer"
    assert seen == ["ok"]
    assert breaker.state is CircuitState.CLOSED


def test_open_duration_grows_and_is_capped(runner: Runner) -> None:
    clock = FakeClock()
    breaker = make(
        clock,
        open_duration=10,
        open_duration_multiplier=2,
        max_open_duration=30,
        permitted_calls_in_half_open=1,
    )
    runner.fail(breaker, 4)
    waits = []
    for _ in range(4):
        waits.append(breaker.metrics().retry_after)
        clock.advance(waits[-1])
        runner.fail(breaker)  # the trial fails: open again, longer
    assert waits == [10, 20, 30, 30]
    clock.advance(30)
    runner.succeed(breaker)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics().open_duration == 10  # back to base after recovery


def test_cancelled_trial_gives_its_slot_back() -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=1)
    for _ in range(4):
        with pytest.raises(Boom):
            breaker.call(boom)
    clock.advance(10)

    async def scenario() -> None:
        started = asyncio.Event()

        async def hang() -> str:
            started.set()
            await asyncio.sleep(3600)
            return "never"

        task = asyncio.create_task(breaker.acall(hang))
        await started.wait()
        with pytest.raises(CircuitOpenError):
            await breaker.acall(aok)  # the only slot is taken
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await breaker.acall(aok) == "ok"  # the slot came back

    asyncio.run(scenario())
    assert breaker.state is CircuitState.CLOSED


def test_lazy_mode_reports_open_until_a_call_arrives() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(4):
        with pytest.raises(Boom):
            breaker.call(boom)
    clock.advance(11)
    assert breaker.state is CircuitState.OPEN
    breaker.call(ok)
    assert breaker.state is CircuitState.HALF_OPEN


def test_automatic_mode_moves_to_half_open_when_observed() -> None:
    clock = FakeClock()
    breaker = make(clock, automatic_half_open=True)
    for _ in range(4):
        with pytest.raises(Boom):
            breaker.call(boom)
    clock.advance(11)
    assert breaker.state is CircuitState.HALF_OPEN


def test_monitor_announces_half_open_without_traffic() -> None:
    clock = FakeClock()
    seen: list[CircuitBreakerEvent] = []
    breaker = make(clock, automatic_half_open=True)
    breaker.add_listener(seen.append)
    breaker.transition_to_open()
    stop = breaker.start_monitor(interval=0.01)
    try:
        clock.advance(11)
        for _ in range(500):
            if any(e.state is CircuitState.HALF_OPEN for e in seen):
                break
            import time

            time.sleep(0.01)
    finally:
        stop()
    assert [e.state for e in seen if e.kind == "state_change"][-1] is CircuitState.HALF_OPEN
    with pytest.raises(ConfigurationError):
        breaker.start_monitor(interval=0)


# ---------------------------------------------------------------------- what counts as failure


def test_ignored_exceptions_count_as_nothing(runner: Runner) -> None:
    breaker = make(ignore_exceptions=(NotFound,))

    def missing() -> str:
        raise NotFound("404")

    async def amissing() -> str:
        raise NotFound("404")

    for _ in range(10):
        with pytest.raises(NotFound):
            runner.run(breaker, missing if runner.mode == "sync" else amissing)
    m = breaker.metrics()
    assert (m.state, m.buffered_calls) == (CircuitState.CLOSED, 0)


def test_record_exceptions_limit_what_fails(runner: Runner) -> None:
    breaker = make(record_exceptions=(ConnectionError,))
    runner.fail(breaker, 10)  # Boom is not a ConnectionError
    assert breaker.state is CircuitState.CLOSED


def test_failure_predicate_decides_alone(runner: Runner) -> None:
    breaker = make(failure_predicate=lambda exc: "down" in str(exc))
    runner.fail(breaker, 4)
    assert breaker.state is CircuitState.OPEN


def test_base_exceptions_are_not_failures_by_default() -> None:
    breaker = make()

    def interrupt() -> None:
        raise KeyboardInterrupt

    for _ in range(10):
        with pytest.raises(KeyboardInterrupt):
            breaker.call(interrupt)
    assert breaker.state is CircuitState.CLOSED


@dataclass
class Response:
    status: int


def test_result_predicate_counts_503_as_failure_without_raising(runner: Runner) -> None:
    breaker = make(result_predicate=lambda r: isinstance(r, Response) and r.status >= 500)

    def unavailable() -> Response:
        return Response(503)

    async def aunavailable() -> Response:
        return Response(503)

    for _ in range(4):
        assert runner.run(breaker, unavailable if runner.mode == "sync" else aunavailable) == (
            Response(503)
        )
    assert breaker.state is CircuitState.OPEN


def test_a_raising_predicate_is_logged_not_propagated(caplog: pytest.LogCaptureFixture) -> None:
    def bad(_: object) -> bool:
        raise RuntimeError("bug in predicate")

    breaker = make(result_predicate=bad, failure_predicate=bad)
    assert breaker.call(ok) == "ok"
    with pytest.raises(Boom):
        breaker.call(boom)
    assert "predicate" in caplog.text
    assert breaker.metrics().failed_calls == 1  # an exception still counts when unsure


# ---------------------------------------------------------------------- manual control


def test_manual_states(runner: Runner) -> None:
    breaker = make()
    breaker.force_open()
    with pytest.raises(CircuitOpenError) as info:
        runner.run(breaker, ok)
    assert info.value.state == "forced_open"
    assert math.isinf(info.value.retry_after)

    breaker.disable()
    runner.fail(breaker, 20)
    assert breaker.state is CircuitState.DISABLED
    assert breaker.metrics().buffered_calls == 0

    breaker.transition_to_metrics_only()
    runner.fail(breaker, 20)
    m = breaker.metrics()
    assert (m.state, m.failed_calls) == (CircuitState.METRICS_ONLY, 10)

    breaker.transition_to_half_open()
    runner.succeed(breaker, 5)
    assert breaker.state is CircuitState.CLOSED

    breaker.transition_to_open()
    assert breaker.state is CircuitState.OPEN
    breaker.reset()
    assert breaker.state is CircuitState.CLOSED
    runner.succeed(breaker)


def test_transition_by_name_and_unknown_names() -> None:
    breaker = make()
    breaker.transition_to("half-open")
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.transition_to("FORCED_OPEN")
    assert breaker.state is CircuitState.FORCED_OPEN
    with pytest.raises(ConfigurationError) as info:
        breaker.transition_to("ajar")
    assert info.value.field == "state"
    assert "ajar" in str(info.value)


# ---------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_rate_threshold", 0),
        ("failure_rate_threshold", 101),
        ("failure_rate_threshold", -5),
        ("failure_rate_threshold", float("nan")),
        ("slow_call_rate_threshold", 150),
        ("slow_call_duration", 0),
        ("slow_call_duration", -1.0),
        ("window_type", "sliding"),
        ("window_size", 0),
        ("window_size", -10),
        ("window_size", 2.5),
        ("minimum_calls", 0),
        ("minimum_calls", True),
        ("consecutive_failures", 0),
        ("open_duration", -1),
        ("open_duration", float("inf")),
        ("open_duration_multiplier", 0.5),
        ("max_open_duration", 1.0),
        ("permitted_calls_in_half_open", 0),
        ("permitted_calls_in_half_open", -3),
        ("automatic_half_open", "yes"),
        ("record_exceptions", [Exception]),
        ("ignore_exceptions", (int,)),
        ("failure_predicate", 42),
        ("result_predicate", "x"),
        ("initial_state", "ajar"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        CircuitBreakerConfig(**{field: value})
    assert info.value.field == field
    assert field in str(info.value)


def test_window_sizes_are_bounded() -> None:
    with pytest.raises(ConfigurationError, match="window_size"):
        CircuitBreakerConfig(window_type="time", window_size=100_000)
    with pytest.raises(ConfigurationError, match="window_size"):
        CircuitBreakerConfig(window_type="count", window_size=10_000_000)


def test_config_is_frozen_and_slotted() -> None:
    config = CircuitBreakerConfig()
    with pytest.raises(AttributeError):
        config.window_size = 3  # type: ignore[misc]
    assert not hasattr(config, "__dict__")
    assert config.initial_state is CircuitState.CLOSED
    assert CircuitBreakerConfig(initial_state="half-open").initial_state is CircuitState.HALF_OPEN


def test_bad_breaker_arguments() -> None:
    with pytest.raises(ConfigurationError, match="name"):
        CircuitBreaker("")
    with pytest.raises(ConfigurationError, match="config"):
        CircuitBreaker("x", {"window_size": 3})  # type: ignore[arg-type]


def test_initial_state_open_rejects() -> None:
    breaker = make(initial_state="open")
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)


# ---------------------------------------------------------------------- events, telemetry, metrics


def test_listeners_get_every_event_and_telemetry_never_successes(runner: Runner) -> None:
    clock = FakeClock()
    telemetry = RecordingTelemetry()
    seen: list[CircuitBreakerEvent] = []
    breaker = CircuitBreaker(
        "correios",
        CircuitBreakerConfig(minimum_calls=2, window_size=4, open_duration=5),
        clock=clock,
        telemetry=telemetry,
        listeners=[seen.append],
    )
    runner.succeed(breaker)
    runner.fail(breaker)  # 1/2 = 50 %: trips
    with pytest.raises(CircuitOpenError):
        runner.run(breaker, ok)
    kinds = [e.kind for e in seen]
    assert kinds == ["success", "state_change", "failure", "rejected"]
    change = seen[1]
    assert (change.from_state, change.state, change.reason) == (
        CircuitState.CLOSED,
        CircuitState.OPEN,
        "failure_rate",
    )
    assert isinstance(seen[2].exception, Boom)
    assert [e.kind for e in telemetry.events] == ["state_change", "failure", "rejected"]
    assert all(isinstance(e, Event) and e.component == "circuit_breaker" for e in telemetry.events)
    assert telemetry.events[0].attributes["from"] == "closed"
    assert telemetry.events[0].attributes["to"] == "open"
    assert telemetry.events[2].attributes["retry_after"] == pytest.approx(5.0)


def test_slow_call_event() -> None:
    clock = FakeClock()
    seen: list[CircuitBreakerEvent] = []
    breaker = make(clock, slow_call_duration=0.5)
    breaker.add_listener(seen.append)

    def slow() -> str:
        clock.advance(1)
        return "ok"

    breaker.call(slow)
    assert [e.kind for e in seen] == ["success", "slow_call"]
    assert seen[1].duration == pytest.approx(1.0)


def test_a_failing_listener_never_breaks_the_call(caplog: pytest.LogCaptureFixture) -> None:
    def bad(_: CircuitBreakerEvent) -> None:
        raise RuntimeError("listener bug")

    class BadTelemetry:
        def emit(self, event: Event) -> None:
            raise RuntimeError("sink down")

    breaker = CircuitBreaker("x", clock=FakeClock(), listeners=[bad], telemetry=BadTelemetry())
    assert breaker.call(ok) == "ok"
    with pytest.raises(Boom):
        breaker.call(boom)
    assert "listener" in caplog.text
    assert "telemetry" in caplog.text


def test_removing_the_last_listener_restores_the_fast_lane() -> None:
    breaker = make()
    assert breaker.core.fast is not None
    seen: list[CircuitBreakerEvent] = []
    breaker.add_listener(seen.append)
    assert breaker.core.fast is None
    breaker.call(ok)
    breaker.remove_listener(seen.append)
    assert breaker.core.fast is not None
    breaker.call(ok)
    assert len(seen) == 1
    assert breaker.metrics().buffered_calls == 2


def test_stale_outcomes_are_discarded() -> None:
    breaker = make()

    def trip_meanwhile() -> str:
        breaker.transition_to_open()
        raise Boom

    with pytest.raises(Boom):
        breaker.call(trip_meanwhile)
    breaker.reset()
    assert breaker.metrics().buffered_calls == 0


def test_metrics_snapshot_is_frozen() -> None:
    breaker = make()
    breaker.call(ok)
    m = breaker.metrics()
    with pytest.raises(AttributeError):
        m.state = CircuitState.OPEN  # type: ignore[misc]
    assert m.retry_after == 0.0


# ---------------------------------------------------------------------- policy protocol, decorator


def test_is_a_policy_and_decorates_sync_and_async() -> None:
    breaker = make()
    assert isinstance(breaker, Policy)
    assert breaker.name == "dep"

    @breaker
    def add(a: int, b: int) -> int:
        return a + b

    @breaker
    async def aadd(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3
    assert asyncio.run(aadd(2, 3)) == 5
    assert add.__name__ == "add"
    assert asyncio.iscoroutinefunction(aadd)
    assert breaker.metrics().buffered_calls == 2
    assert "dep" in repr(breaker)


def test_nests_in_a_pipeline_sync_and_async() -> None:
    from resilience.policies import Fallback, Pipeline

    clock = FakeClock()
    breaker = make(clock, minimum_calls=2)
    pipeline = Pipeline(Fallback("estimated later", on=(CircuitOpenError,)), breaker)
    for _ in range(2):
        with pytest.raises(Boom):
            pipeline.call(boom)
    assert breaker.state is CircuitState.OPEN
    assert pipeline.call(ok) == "estimated later"
    assert asyncio.run(pipeline.acall(aok)) == "estimated later"
    clock.advance(10)
    assert pipeline.call(ok) == "ok"  # the trial goes through the pipeline
