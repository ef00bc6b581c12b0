"""An OpenTelemetry sink for the events policies and relays emit.

Policies report what an operator must see (a breaker opening, a retry, a
dead letter) as `resilience.Event`s; this sink turns them into metrics a
dashboard can alert on and into span events on the request that hit them, so
a slow trace shows *why* it was slow ("retry 2 of 3", "circuit open").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from resilience._telemetry import Event

from ._otel import INSTRUMENTATION_NAME, api

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.util.types import AttributeValue

__all__ = ["CALLS_METRIC", "EVENTS_METRIC", "STATE_METRIC", "OpenTelemetryTelemetry"]

EVENTS_METRIC: Final = "resilience.events"
"""Counter of events, with attributes ``resilience.component``, ``resilience.name``, ``resilience.kind``."""

CALLS_METRIC: Final = "resilience.calls"
"""Counter of calls through a circuit breaker by outcome (``resilience.outcome``: ``success``,
``failure``, ``rejected``), fed by `OpenTelemetryTelemetry.call_listener`."""

_OUTCOMES: Final = frozenset({"success", "failure", "rejected"})

STATE_METRIC: Final = "resilience.state"
"""Gauge: 1 for the current state of each stateful component (a circuit breaker), 0 for states it left."""

_log = logging.getLogger("resilience.tracing")


def _attribute(value: Any) -> AttributeValue:
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return str(value)


class OpenTelemetryTelemetry:
    """A `resilience.Telemetry` sink: events become OTel metrics and span events.

    Every event increments the ``resilience.events`` counter. An event of kind
    ``"state_change"`` with a ``"to"`` attribute (what circuit breakers emit)
    also moves the ``resilience.state`` gauge, which reports 1 for the state a
    component is in and 0 for states it has been in before (the "state set"
    shape, so ``max by (state)`` works in any backend). When a span is
    recording, the event is added to it as ``resilience.<component>.<kind>``.

    Without OpenTelemetry installed, `emit` returns at once. It never raises.

    Args:
        meter_provider: where to create instruments; the global provider if None.
        metrics: record the counter and the gauge.
        span_events: add span events to the current span.
    """

    __slots__ = ("_calls", "_counter", "_lock", "_states", "_trace", "span_events")

    def __init__(
        self,
        *,
        meter_provider: MeterProvider | None = None,
        metrics: bool = True,
        span_events: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], tuple[str, set[str]]] = {}
        otel = api()
        self._trace: Any = otel.trace if otel is not None else None
        self.span_events = span_events and otel is not None
        self._counter: Any = None
        self._calls: Any = None
        if otel is not None and metrics:
            meter = otel.metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=meter_provider)
            self._counter = meter.create_counter(
                EVENTS_METRIC, unit="{event}", description="Events emitted by resilience components"
            )
            meter.create_observable_gauge(
                STATE_METRIC,
                callbacks=[self._observe],
                unit="1",
                description="1 for the state each resilience component is in, 0 for states it left",
            )
            self._calls = meter.create_counter(
                CALLS_METRIC,
                unit="{call}",
                description="Calls through a circuit breaker by outcome",
            )

    def call_listener(self) -> Callable[[Any], None]:
        """A circuit-breaker listener that counts every call by outcome in ``resilience.calls``.

        Opt-in, because it runs on every call (telemetry events never include
        successes): ``CircuitBreaker(..., listeners=[sink.call_listener()])``.
        """
        calls = self._calls

        def listener(event: Any) -> None:
            if calls is None or event.kind not in _OUTCOMES:
                return
            try:
                calls.add(1, {"resilience.name": event.name, "resilience.outcome": event.kind})
            except Exception:  # telemetry must never take the service down
                _log.debug("OpenTelemetry call counter failed", exc_info=True)

        return listener

    def emit(self, event: Event) -> None:
        """Record *event*; never raises."""
        if self._counter is None and not self.span_events:
            return
        try:
            self._record(event)
        except Exception:  # telemetry must never take the service down
            _log.debug("OpenTelemetry sink failed on %r", event, exc_info=True)

    def _record(self, event: Event) -> None:
        if self._counter is not None:
            self._counter.add(
                1,
                {
                    "resilience.component": event.component,
                    "resilience.name": event.name,
                    "resilience.kind": event.kind,
                },
            )
            to = event.attributes.get("to")
            if event.kind == "state_change" and to is not None:
                key = (event.component, event.name)
                with self._lock:
                    _, seen = self._states.get(key, ("", set()))
                    seen = seen | {str(to)}
                    if (previous := event.attributes.get("from")) is not None:
                        seen.add(str(previous))
                    self._states[key] = (str(to), seen)
        if self.span_events:
            span = self._trace.get_current_span()
            if span.is_recording():
                span.add_event(
                    f"resilience.{event.component}.{event.kind}", _event_attributes(event)
                )

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        with self._lock:
            states = list(self._states.items())
        return [
            Observation(
                1 if state == current else 0,
                {
                    "resilience.component": component,
                    "resilience.name": name,
                    "resilience.state": state,
                },
            )
            for (component, name), (current, seen) in states
            for state in sorted(seen)
        ]


def _event_attributes(event: Event) -> Mapping[str, AttributeValue]:
    def items() -> Iterator[tuple[str, AttributeValue]]:
        yield "resilience.component", event.component
        yield "resilience.name", event.name
        for key, value in event.attributes.items():
            if value is not None:  # OpenTelemetry attributes cannot be null
                yield f"resilience.{key}", _attribute(value)

    return dict(items())
