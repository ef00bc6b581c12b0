"""Clock, telemetry and the policy decorator mixin."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from resilience import SYSTEM_CLOCK, Clock, Event, LoggingTelemetry, TelemetryFanout
from resilience.policies import Policy, PolicyDecorator
from resilience.testing import FakeClock, RecordingTelemetry


def test_fake_clock_sleeps_without_waiting() -> None:
    clock = FakeClock(start=10.0)
    started = time.monotonic()
    clock.sleep(3600)
    assert time.monotonic() - started < 1
    assert clock.monotonic() == 3610.0
    assert clock.sleeps == [3600]
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


async def test_fake_clock_async_sleep_yields_to_other_tasks() -> None:
    clock = FakeClock()
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    task = asyncio.create_task(other())
    await clock.asleep(5)
    order.append("after sleep")
    await task
    assert order == ["other", "after sleep"]
    assert clock.monotonic() == 1005.0


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SYSTEM_CLOCK, Clock)
    assert isinstance(FakeClock(), Clock)
    first = SYSTEM_CLOCK.monotonic()
    assert SYSTEM_CLOCK.monotonic() >= first


def test_logging_telemetry_logs_events(caplog: pytest.LogCaptureFixture) -> None:
    sink = LoggingTelemetry()
    with caplog.at_level(logging.INFO, logger="resilience"):
        sink.emit(Event("circuit_breaker", "correios", "state_change", {"to": "open"}))
    assert "circuit_breaker 'correios' state_change {'to': 'open'}" in caplog.text
    assert caplog.records[0].resilience_event.kind == "state_change"  # type: ignore[attr-defined]


def test_fanout_survives_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def emit(self, event: Event) -> None:
            raise RuntimeError("exporter down")

    recorder = RecordingTelemetry()
    fanout = TelemetryFanout(Broken(), recorder)
    with caplog.at_level(logging.ERROR, logger="resilience"):
        fanout.emit(Event("retry", "x", "retry"))
    assert [e.kind for e in recorder.events] == ["retry"]
    assert recorder.of_kind("retry")
    assert "failed" in caplog.text


class _Counting(PolicyDecorator):
    """The smallest possible policy: counts calls."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def call(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return fn(*args, **kwargs)

    async def acall(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return await fn(*args, **kwargs)


async def test_decorator_routes_sync_and_async_functions() -> None:
    policy = _Counting()
    assert isinstance(policy, Policy)

    @policy
    def add(a: int, b: int = 0) -> int:
        """Adds."""
        return a + b

    @policy
    async def aadd(a: int, b: int = 0) -> int:
        return a + b

    assert add(1, b=2) == 3
    assert await aadd(2, b=3) == 5
    assert asyncio.iscoroutinefunction(aadd)
    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    assert policy.calls == 2


def test_policies_nest_without_closures() -> None:
    outer, inner = _Counting(), _Counting()
    assert outer.call(inner.call, lambda x: x * 2, 21) == 42
    assert (outer.calls, inner.calls) == (1, 1)


def test_base_decorator_requires_an_implementation() -> None:
    with pytest.raises(NotImplementedError):
        PolicyDecorator().call(print)


def test_default_policy_telemetry_adds_opentelemetry_when_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from resilience.policies._support import _DefaultTelemetry
    from resilience.tracing import OpenTelemetryTelemetry

    with_otel = _DefaultTelemetry()
    with_otel.emit(Event("retry", "acquirer", "retry"))  # resolves on first use
    assert [type(s) for s in with_otel.sinks] == [LoggingTelemetry, OpenTelemetryTelemetry]

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "opentelemetry" else real_find_spec(name, *a),
    )
    without = _DefaultTelemetry()
    assert [type(s) for s in without.sinks] == [LoggingTelemetry]
