"""format_trace: the text view of finished spans."""

from __future__ import annotations

import re
from types import SimpleNamespace

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from resilience.messaging import Message
from resilience.tracing import capture_context, consumer_span, format_trace, producer_span


def _service() -> str:
    """The service name of the installed provider: "tests" when this suite installed it,
    another one when an earlier suite of the session did (OpenTelemetry sets it once)."""
    provider = trace.get_tracer_provider()
    return str(provider.resource.attributes["service.name"])  # type: ignore[attr-defined]


def test_empty() -> None:
    assert format_trace([]) == "(no spans)"


def test_tree_of_one_order(tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("insert order"):
            pass
        message = Message(type="order.created", key="order-1", headers=capture_context())
    with producer_span(message, system="kafka", destination="orders") as wire:
        pass
    with consumer_span(message.with_headers(**wire), system="kafka", destination="orders"):
        with tracer.start_as_current_span("reserve stock"):
            pass
        try:
            with tracer.start_as_current_span("charge card"):
                raise RuntimeError("declined")
        except RuntimeError:
            pass
    spans = exporter.get_finished_spans()
    [trace_id] = {s.context.trace_id for s in spans}
    service = _service()
    assert format_trace(spans, timings=False) == "\n".join(
        [
            f"trace {trace_id:032x}",
            f"└─ POST /orders  [SERVER]  {service}",
            f"   ├─ insert order  [INTERNAL]  {service}",
            f"   └─ send orders  [PRODUCER]  {service}",
            f"      └─ process orders  [CONSUMER]  {service}",
            f"         ├─ reserve stock  [INTERNAL]  {service}",
            f"         └─ charge card  [INTERNAL]  {service}  ERROR",
        ]
    )
    with_times = format_trace(spans, attributes=["messaging.kafka.message.key"])
    assert f"send orders  [PRODUCER]  {_service()}  +" in with_times
    assert with_times.count(" ms") == 2 * len(spans)
    assert "messaging.kafka.message.key=order-1" in with_times


def test_links_remote_parents_and_several_traces(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    remote = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    with tracer.start_as_current_span("request") as request:
        message = Message(type="t", headers=capture_context())
    with consumer_span(message, system="in_memory", destination="q", relation="link"):
        pass
    with consumer_span(Message(type="t", headers=remote), system="in_memory", destination="r"):
        pass
    text = format_trace(exporter.get_finished_spans(), timings=False)
    blocks = re.split(r"^trace ", text, flags=re.MULTILINE)[1:]
    assert len(blocks) == 3
    assert blocks[0].startswith(f"{request.get_span_context().trace_id:032x}")
    assert "↪ linked to request" in blocks[1]
    assert blocks[2].startswith("4bf92f3577b34da6a3ce929d0e0e4736")
    assert f"process r  [CONSUMER]  {_service()}  (remote parent)" in blocks[2]


def test_works_on_span_like_objects_without_the_sdk() -> None:
    def ctx(span_id: int) -> SimpleNamespace:
        return SimpleNamespace(trace_id=1, span_id=span_id)

    root = SimpleNamespace(
        name="root", context=ctx(1), parent=None, kind=None, start_time=0, end_time=2_000_000
    )
    child = SimpleNamespace(
        name="child",
        context=ctx(2),
        parent=ctx(1),
        kind="custom",
        start_time=500_000,
        end_time=1_000_000,
        attributes=None,
    )
    assert format_trace([child, root]) == "\n".join(
        [
            f"trace {1:032x}",
            "└─ root  [INTERNAL]  ?  +0.0 ms  2.0 ms",
            "   └─ child  [custom]  ?  +0.5 ms  0.5 ms",
        ]
    )
