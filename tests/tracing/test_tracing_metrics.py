"""OpenTelemetryTelemetry: events become metrics and span events."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilience import Event, Telemetry, TelemetryFanout
from resilience.tracing import EVENTS_METRIC, STATE_METRIC, OpenTelemetryTelemetry


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def sink(reader: InMemoryMetricReader) -> OpenTelemetryTelemetry:
    return OpenTelemetryTelemetry(meter_provider=MeterProvider(metric_readers=[reader]))


def _points(reader: InMemoryMetricReader, name: str) -> dict[tuple[Any, ...], Any]:
    data = reader.get_metrics_data()
    out: dict[tuple[Any, ...], Any] = {}
    if data is None:  # nothing was ever recorded
        return out
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        out[tuple(sorted((point.attributes or {}).items()))] = value
    return out


def test_is_a_telemetry_sink(sink: OpenTelemetryTelemetry) -> None:
    assert isinstance(sink, Telemetry)


def test_events_are_counted_by_component_name_and_kind(
    sink: OpenTelemetryTelemetry, reader: InMemoryMetricReader
) -> None:
    for _ in range(3):
        sink.emit(Event("retry", "correios", "retry", {"attempt": 1}))
    sink.emit(Event("circuit_breaker", "correios", "rejected"))
    points = _points(reader, EVENTS_METRIC)
    assert points == {
        (
            ("resilience.component", "retry"),
            ("resilience.kind", "retry"),
            ("resilience.name", "correios"),
        ): 3,
        (
            ("resilience.component", "circuit_breaker"),
            ("resilience.kind", "rejected"),
            ("resilience.name", "correios"),
        ): 1,
    }


def test_state_gauge_follows_breaker_transitions(
    sink: OpenTelemetryTelemetry, reader: InMemoryMetricReader
) -> None:
    sink.emit(Event("circuit_breaker", "pix", "state_change", {"from": "closed", "to": "open"}))
    sink.emit(Event("circuit_breaker", "pix", "state_change", {"from": "open", "to": "half_open"}))

    def states() -> dict[str, int]:
        return {
            dict(key)["resilience.state"]: value
            for key, value in _points(reader, STATE_METRIC).items()
            if dict(key)["resilience.name"] == "pix"
        }

    assert states() == {"closed": 0, "open": 0, "half_open": 1}
    sink.emit(
        Event("circuit_breaker", "pix", "state_change", {"from": "half_open", "to": "closed"})
    )
    assert states() == {"closed": 1, "open": 0, "half_open": 0}


def test_events_become_span_events_on_the_current_span(
    tracer: trace.Tracer, exporter: InMemorySpanExporter, sink: OpenTelemetryTelemetry
) -> None:
    sink.emit(Event("retry", "x", "retry"))  # no span: nothing to attach to, no error
    with tracer.start_as_current_span("checkout"):
        sink.emit(
            Event(
                "retry", "correios", "retry", {"attempt": 2, "delay": 0.5, "error": KeyError("k")}
            )
        )
    [span] = exporter.get_finished_spans()
    [event] = span.events
    assert event.name == "resilience.retry.retry"
    assert dict(event.attributes or {}) == {
        "resilience.component": "retry",
        "resilience.name": "correios",
        "resilience.attempt": 2,
        "resilience.delay": 0.5,
        "resilience.error": "'k'",
    }


def test_switches(tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    reader = InMemoryMetricReader()
    sink = OpenTelemetryTelemetry(
        meter_provider=MeterProvider(metric_readers=[reader]), metrics=False, span_events=False
    )
    with tracer.start_as_current_span("checkout"):
        sink.emit(Event("retry", "x", "retry"))
    assert _points(reader, EVENTS_METRIC) == {}
    assert exporter.get_finished_spans()[0].events == ()


def test_a_broken_meter_never_raises(
    sink: OpenTelemetryTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def add(self, *args: object) -> None:
            raise RuntimeError("exporter bug")

    sink._counter = Broken()
    with caplog.at_level(logging.DEBUG, logger="resilience.tracing"):
        TelemetryFanout(sink).emit(Event("retry", "x", "retry"))
    assert "OpenTelemetry sink failed" in caplog.text


def test_without_opentelemetry_it_is_inert(no_otel: None) -> None:
    sink = OpenTelemetryTelemetry()
    sink.emit(Event("circuit_breaker", "pix", "state_change", {"to": "open"}))
    assert sink._counter is None
    assert not sink.span_events


def test_a_real_circuit_breaker_feeds_the_sink(
    tracer: trace.Tracer,
    exporter: InMemorySpanExporter,
    sink: OpenTelemetryTelemetry,
    reader: InMemoryMetricReader,
) -> None:
    from resilience import CircuitOpenError
    from resilience.policies import CircuitBreaker, CircuitBreakerConfig
    from resilience.testing import FakeClock

    breaker = CircuitBreaker(
        "acquirer",
        CircuitBreakerConfig(consecutive_failures=2, open_duration=30),
        clock=FakeClock(),
        telemetry=sink,
    )

    def charge() -> None:
        raise ConnectionError("acquirer down")

    with tracer.start_as_current_span("POST /payments"):
        for _ in range(2):
            with pytest.raises(ConnectionError):
                breaker.call(charge)
        with pytest.raises(CircuitOpenError):
            breaker.call(charge)
    counts = {dict(k)["resilience.kind"]: v for k, v in _points(reader, EVENTS_METRIC).items()}
    assert counts == {"failure": 2, "state_change": 1, "rejected": 1}
    states = {dict(k)["resilience.state"]: v for k, v in _points(reader, STATE_METRIC).items()}
    assert states == {"closed": 0, "open": 1}
    [span] = exporter.get_finished_spans()
    names = sorted(e.name for e in span.events)
    assert names == [
        "resilience.circuit_breaker.failure",
        "resilience.circuit_breaker.failure",
        "resilience.circuit_breaker.rejected",
        "resilience.circuit_breaker.state_change",
    ]
    [change] = [e for e in span.events if e.name.endswith("state_change")]
    attributes = change.attributes or {}
    assert (attributes["resilience.from"], attributes["resilience.to"]) == ("closed", "open")


def test_call_listener_counts_every_call_by_outcome(
    sink: OpenTelemetryTelemetry, reader: InMemoryMetricReader
) -> None:
    from resilience import CircuitOpenError
    from resilience.policies import CircuitBreaker, CircuitBreakerConfig
    from resilience.testing import FakeClock
    from resilience.tracing import CALLS_METRIC

    breaker = CircuitBreaker(
        "acquirer",
        CircuitBreakerConfig(consecutive_failures=2, open_duration=30),
        clock=FakeClock(),
        listeners=[sink.call_listener()],
        telemetry=None,
    )

    def fail() -> None:
        raise ConnectionError("acquirer down")

    for _ in range(3):
        assert breaker.call(lambda: "ok") == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    with pytest.raises(CircuitOpenError):
        breaker.call(fail)
    counts = {dict(k)["resilience.outcome"]: v for k, v in _points(reader, CALLS_METRIC).items()}
    assert counts == {"success": 3, "failure": 2, "rejected": 1}
