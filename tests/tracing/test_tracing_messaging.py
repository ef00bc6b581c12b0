"""PRODUCER and CONSUMER spans: names, kinds, attributes, parent vs link, failures."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from resilience import ConfigurationError
from resilience.messaging import Message, decode_message, encode_message
from resilience.tracing import (
    SpanRelation,
    TracingOptions,
    capture_context,
    configure_tracing,
    consumer_span,
    current_options,
    extract,
    producer_span,
)


def _order_message(tracer: trace.Tracer) -> tuple[Message, trace.SpanContext]:
    with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as request:
        message = Message(
            type="order.created", payload={"id": 42}, key="order-42", headers=capture_context()
        )
    return message, request.get_span_context()


def _only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def test_producer_span_is_a_child_of_the_captured_context_not_the_relay(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    message, request = _order_message(tracer)
    with (
        tracer.start_as_current_span("relay poll") as relay,
        producer_span(message, system="kafka", destination="orders") as wire,
    ):
        pass
    span = _only(exporter, "send orders")
    assert span.kind is SpanKind.PRODUCER
    assert span.parent is not None
    assert span.parent.span_id == request.span_id
    assert span.context.trace_id == request.trace_id != relay.get_span_context().trace_id
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.destination.name": "orders",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.id": message.id,
        "resilience.message.type": "order.created",
        "messaging.kafka.message.key": "order-42",
    }
    # The wire headers carry the producer span, so the consumer hangs off the send.
    sent = trace.get_current_span(extract(wire)).get_span_context()
    assert (sent.trace_id, sent.span_id) == (span.context.trace_id, span.context.span_id)


def test_producer_span_without_captured_context_is_a_root(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    message = Message(type="order.created", key="k")
    with (
        tracer.start_as_current_span("relay poll") as relay,
        producer_span(message, system="redis", destination="orders"),
    ):
        pass
    span = _only(exporter, "send orders")
    assert span.parent is None
    assert span.context.trace_id != relay.get_span_context().trace_id
    assert "messaging.kafka.message.key" not in (span.attributes or {})
    assert span.attributes is not None
    assert span.attributes["messaging.system"] == "redis"


def test_link_mode_starts_a_new_trace_linked_to_the_request(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    message, request = _order_message(tracer)
    with producer_span(message, system="kafka", destination="orders", relation="link"):
        pass
    span = _only(exporter, "send orders")
    assert span.parent is None
    assert span.context.trace_id != request.trace_id
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
        (request.trace_id, request.span_id)
    ]


def test_link_mode_without_upstream_context_has_no_links(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    with consumer_span(Message(type="t"), system="kafka", destination="d", relation="link"):
        pass
    span = _only(exporter, "process d")
    assert span.parent is None
    assert list(span.links) == []


def test_consumer_span_continues_the_producer_and_is_current_for_the_handler(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    message, request = _order_message(tracer)
    with producer_span(message, system="kafka", destination="orders") as wire:
        published = message.with_headers(**wire)
    received = decode_message(encode_message(published))
    with consumer_span(
        received,
        system="kafka",
        destination="orders",
        consumer_group="billing",
        attributes={"messaging.kafka.offset": 7, "messaging.destination.partition.id": "0"},
    ) as span:
        assert span is not None
        assert trace.get_current_span() is span
        with tracer.start_as_current_span("charge card"):
            downstream = capture_context()
    producer = _only(exporter, "send orders")
    consumer = _only(exporter, "process orders")
    handler = _only(exporter, "charge card")
    assert consumer.kind is SpanKind.CONSUMER
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert handler.parent is not None
    assert handler.parent.span_id == consumer.context.span_id
    assert {producer.context.trace_id, consumer.context.trace_id, handler.context.trace_id} == {
        request.trace_id
    }
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.consumer.group.name"] == "billing"
    assert consumer.attributes["messaging.kafka.offset"] == 7
    assert consumer.attributes["messaging.message.id"] == message.id
    # An event written by the handler continues the same trace.
    assert downstream["traceparent"].split("-")[1] == f"{request.trace_id:032x}"
    assert not trace.get_current_span().get_span_context().is_valid


def test_consumer_link_mode(tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    message, request = _order_message(tracer)
    with consumer_span(message, system="in_memory", destination="orders", relation="link"):
        pass
    span = _only(exporter, "process orders")
    assert span.parent is None
    assert span.context.trace_id != request.trace_id
    assert [link.context.span_id for link in span.links] == [request.span_id]


def test_baggage_in_the_message_is_current_in_the_handler(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        message, _ = _order_message(tracer)
    finally:
        context.detach(token)
    relations: tuple[SpanRelation, ...] = ("parent", "link")
    for relation in relations:
        with consumer_span(message, system="kafka", destination="o", relation=relation):
            assert baggage.get_baggage("tenant") == "acme"
    assert baggage.get_baggage("tenant") is None


def test_handler_failure_is_recorded_and_propagates(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    message, _ = _order_message(tracer)
    with (
        pytest.raises(KeyError, match="card"),
        consumer_span(message, system="kafka", destination="orders"),
    ):
        raise KeyError("card")
    span = _only(exporter, "process orders")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "KeyError"
    assert [e.name for e in span.events] == ["exception"]
    assert not trace.get_current_span().get_span_context().is_valid


def test_publish_failure_is_recorded_with_qualified_type(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    from resilience import PublishError

    message, _ = _order_message(tracer)
    with (
        pytest.raises(PublishError),
        producer_span(message, system="kafka", destination="orders"),
    ):
        raise PublishError("broker down")
    span = _only(exporter, "send orders")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "resilience._errors.PublishError"


def test_process_wide_defaults_and_per_call_override(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    message, request = _order_message(tracer)
    previous = configure_tracing(TracingOptions(producer_relation="link"))
    try:
        assert current_options().producer_relation == "link"
        with producer_span(message, system="kafka", destination="a"):
            pass
        with producer_span(message, system="kafka", destination="b", relation="parent"):
            pass
    finally:
        configure_tracing(previous)
    assert _only(exporter, "send a").parent is None
    parent_b = _only(exporter, "send b").parent
    assert parent_b is not None
    assert parent_b.span_id == request.span_id


def test_explicit_tracer_provider(tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    own = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "relay"}))
    provider.add_span_processor(SimpleSpanProcessor(own))
    message, _ = _order_message(tracer)
    with producer_span(message, system="kafka", destination="o", tracer_provider=provider):
        pass
    [span] = own.get_finished_spans()
    assert span.resource.attributes["service.name"] == "relay"
    assert [s.name for s in exporter.get_finished_spans()] == ["POST /orders"]


def test_bad_relation_is_a_configuration_error(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ConfigurationError, match="producer_relation"):
        TracingOptions(producer_relation="sibling")  # type: ignore[arg-type]
    with (
        pytest.raises(ConfigurationError, match="relation"),
        producer_span(Message(type="t"), system="kafka", destination="d", relation="x"),  # type: ignore[arg-type]
    ):
        pass
    with pytest.raises(ConfigurationError, match="options"):
        configure_tracing("link")  # type: ignore[arg-type]


def test_without_opentelemetry_spans_are_no_ops(tracer: trace.Tracer, no_otel: None) -> None:
    message = Message(type="t", headers={"traceparent": "whatever"})
    with producer_span(message, system="kafka", destination="d") as wire:
        assert wire == {}
    with consumer_span(message, system="kafka", destination="d") as span:
        assert span is None
    with (
        pytest.raises(ValueError, match="handler"),
        consumer_span(message, system="k", destination="d"),
    ):
        raise ValueError("handler")


def test_an_unsampled_upstream_stays_unsampled_but_keeps_its_trace_id(
    exporter: InMemorySpanExporter,
) -> None:
    unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    message = Message(type="order.created", headers={"traceparent": unsampled})
    with producer_span(message, system="kafka", destination="orders") as wire:
        pass
    with consumer_span(message.with_headers(**wire), system="kafka", destination="orders") as span:
        assert span is not None
        assert not span.is_recording()
    assert exporter.get_finished_spans() == ()  # the sampling decision is honoured
    _, trace_id, _, flags = wire["traceparent"].split("-")
    assert (trace_id, flags) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00")


async def test_concurrent_handlers_keep_their_own_traces(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    import asyncio

    messages = [_order_message(tracer)[0] for _ in range(20)]
    gate = asyncio.Event()

    async def handle(message: Message) -> None:
        with consumer_span(message, system="in_memory", destination="orders"):
            await gate.wait()  # every handler is suspended inside its span at once
            with tracer.start_as_current_span(f"handle {message.id}"):
                await asyncio.sleep(0)

    tasks = [asyncio.create_task(handle(m)) for m in messages]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*tasks)
    spans = exporter.get_finished_spans()
    consumers = {
        (s.attributes or {})["messaging.message.id"]: s for s in spans if s.name == "process orders"
    }
    for message in messages:
        handler = _only(exporter, f"handle {message.id}")
        consumer = consumers[message.id]
        assert handler.parent is not None
        assert handler.parent.span_id == consumer.context.span_id
        expected = message.headers["traceparent"].split("-")[1]
        assert f"{consumer.context.trace_id:032x}" == expected


def test_a_broken_propagator_does_not_fail_the_publish(
    tracer: trace.Tracer, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import propagate

    message, _ = _order_message(tracer)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("propagator bug")

    monkeypatch.setattr(propagate, "inject", broken)
    with producer_span(message, system="kafka", destination="orders") as wire:
        assert wire == {}
    assert _only(exporter, "send orders").status.status_code is StatusCode.UNSET
