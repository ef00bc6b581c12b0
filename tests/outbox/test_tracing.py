"""One trace from the request that wrote the event to the relay's publish."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from resilience.messaging import Message
from resilience.outbox import Inbox, Outbox
from resilience.tracing import TracingOptions, configure_tracing

from .conftest import RecordingPublisher, make_relay


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = configure_tracing(TracingOptions(tracer_provider=provider))
    yield provider, exporter
    configure_tracing(previous)


def test_relay_publishes_inside_a_producer_span_of_the_writers_trace(
    sqlite_engine: sa.Engine,
    sqlite_tables: tuple[Outbox, Inbox, sa.Table],
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    outbox = sqlite_tables[0]
    with provider.get_tracer("test").start_as_current_span("POST /orders") as request:
        with sqlite_engine.begin() as conn:
            outbox.add(conn, Message("order.created", key="o1"))
        trace_id = request.get_span_context().trace_id
    publisher = RecordingPublisher()
    assert make_relay(sqlite_engine, outbox, publisher).run_once().published == 1
    [producer] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert producer.context.trace_id == trace_id
    assert producer.parent is not None
    assert producer.parent.span_id == request.get_span_context().span_id
    # The wire carries the producer span's context, so consumers continue from the send.
    [sent] = publisher.published
    assert format(producer.context.span_id, "016x") in sent.headers["traceparent"]


def test_no_spans_and_no_cost_when_tracing_is_off(
    sqlite_engine: sa.Engine,
    sqlite_tables: tuple[Outbox, Inbox, sa.Table],
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = spans
    outbox = sqlite_tables[0]
    with sqlite_engine.begin() as conn:
        outbox.add(conn, Message("order.created", key="o1"))
    make_relay(sqlite_engine, outbox, RecordingPublisher(), tracing=False).run_once()
    assert exporter.get_finished_spans() == ()
