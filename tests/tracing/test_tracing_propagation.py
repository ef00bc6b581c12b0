"""capture_context / inject / extract / use_context, with and without OpenTelemetry."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilience.tracing import capture_context, extract, inject, use_context

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_capture_is_empty_without_an_active_span(exporter: InMemorySpanExporter) -> None:
    assert capture_context() == {}


def test_capture_holds_the_current_span(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("request") as span:
        headers = capture_context()
    ctx = span.get_span_context()
    assert (
        headers["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    )


def test_capture_carries_baggage_and_tracestate(tracer: trace.Tracer) -> None:
    parent = extract({"traceparent": TRACEPARENT, "tracestate": "vendor=abc"})
    token = context.attach(baggage.set_baggage("tenant", "acme", parent))
    try:
        headers = capture_context()
    finally:
        context.detach(token)
    assert headers == {
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=abc",
        "baggage": "tenant=acme",
    }


def test_round_trip_through_a_carrier(tracer: trace.Tracer) -> None:
    carrier: dict[str, str] = {"other": "kept"}
    with tracer.start_as_current_span("client") as span:
        inject(carrier)
    assert carrier["other"] == "kept"
    ctx = extract(carrier)
    remote = trace.get_current_span(ctx).get_span_context()
    assert remote.trace_id == span.get_span_context().trace_id
    assert remote.span_id == span.get_span_context().span_id
    assert remote.is_remote


def test_extract_ignores_header_case_and_ambient_context(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("ambient"):
        ctx = extract({"TraceParent": TRACEPARENT})
    assert trace.get_current_span(ctx).get_span_context().trace_id == int(
        "4bf92f3577b34da6a3ce929d0e0e4736", 16
    )
    with tracer.start_as_current_span("ambient"):
        empty = extract({})
    assert not trace.get_current_span(empty).get_span_context().is_valid


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not-a-traceparent",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "x" * 10_000,
    ],
)
def test_garbage_traceparent_gives_an_empty_context(
    exporter: InMemorySpanExporter, garbage: str
) -> None:
    ctx = extract({"traceparent": garbage})
    assert not trace.get_current_span(ctx).get_span_context().is_valid


def test_use_context_makes_the_remote_span_the_parent(tracer: trace.Tracer) -> None:
    with use_context({"traceparent": TRACEPARENT}):
        assert capture_context()["traceparent"] == TRACEPARENT
        with tracer.start_as_current_span("handler") as span:
            pass
    assert not trace.get_current_span().get_span_context().is_valid  # detached again
    assert isinstance(span, ReadableSpan)
    assert span.parent is not None
    assert span.parent.span_id == 0x00F067AA0BA902B7
    assert span.get_span_context().trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736


def test_use_context_detaches_on_error(tracer: trace.Tracer) -> None:
    with pytest.raises(RuntimeError), use_context({"traceparent": TRACEPARENT}):
        raise RuntimeError("boom")
    assert capture_context() == {}


def test_without_opentelemetry_everything_is_a_no_op(tracer: trace.Tracer, no_otel: None) -> None:
    carrier: dict[str, str] = {}
    with tracer.start_as_current_span("request"):
        assert capture_context() == {}
        inject(carrier)
        assert extract({"traceparent": TRACEPARENT}) is None
        with use_context({"traceparent": TRACEPARENT}) as ctx:
            assert ctx is None
    assert carrier == {}


def test_a_failing_propagator_never_breaks_capture(
    tracer: trace.Tracer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import propagate

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("propagator bug")

    monkeypatch.setattr(propagate, "inject", broken)
    with tracer.start_as_current_span("request"):
        assert capture_context() == {}
        carrier: dict[str, str] = {}
        inject(carrier)
    assert carrier == {}


def test_works_in_a_process_where_opentelemetry_cannot_be_imported() -> None:
    code = """
import sys
for name in ("opentelemetry", "opentelemetry.trace", "opentelemetry.context",
             "opentelemetry.propagate", "opentelemetry.baggage", "opentelemetry.metrics"):
    sys.modules[name] = None
from resilience.messaging import Message
from resilience.tracing import capture_context, consumer_span, extract, inject, producer_span
msg = Message(type="order.created", headers={"traceparent": "x"})
carrier = {}
inject(carrier)
with producer_span(msg, system="kafka", destination="orders") as wire:
    pass
with consumer_span(msg, system="kafka", destination="orders") as span:
    pass
print(capture_context(), carrier, wire, span, extract({}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{} {} {} None None"


def test_threads_need_copy_context_as_the_docs_say(tracer: trace.Tracer) -> None:
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool, tracer.start_as_current_span("request"):
        bare = pool.submit(capture_context).result()
        copied = pool.submit(contextvars.copy_context().run, capture_context).result()
    assert bare == {}
    assert "traceparent" in copied
