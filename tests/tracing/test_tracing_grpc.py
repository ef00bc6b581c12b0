"""Trace context in gRPC metadata."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilience import MissingExtraError
from resilience.tracing import (
    extract_grpc_metadata,
    grpc_client_interceptor,
    grpc_server_interceptor,
    inject_grpc_metadata,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_inject_keeps_entries_and_replaces_stale_trace_context(tracer: trace.Tracer) -> None:
    metadata: list[tuple[str, str | bytes]] = [
        ("X-Tenant", "acme"),
        ("traceparent", TRACEPARENT),
        ("blob-bin", b"\x00"),
    ]
    with tracer.start_as_current_span("call") as span:
        out = inject_grpc_metadata(metadata)
    ctx = span.get_span_context()
    assert out[:2] == [("x-tenant", "acme"), ("blob-bin", b"\x00")]
    assert [k for k, _ in out].count("traceparent") == 1
    assert dict(out)["traceparent"] == (
        f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    )
    assert all(k == k.lower() for k, _ in out)


def test_inject_without_a_span_or_metadata(exporter: InMemorySpanExporter) -> None:
    assert inject_grpc_metadata(None) == []
    assert inject_grpc_metadata((("a", "1"),)) == [("a", "1")]


def test_round_trip(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("client") as span:
        metadata = inject_grpc_metadata()
    remote = trace.get_current_span(extract_grpc_metadata(metadata)).get_span_context()
    assert (remote.trace_id, remote.span_id) == (
        span.get_span_context().trace_id,
        span.get_span_context().span_id,
    )


def test_extract_skips_binary_entries_and_combines_repeats(exporter: InMemorySpanExporter) -> None:
    ctx = extract_grpc_metadata(
        [
            ("traceparent-bin", b"\x01"),
            ("TraceParent", TRACEPARENT),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ]
    )
    span_context = trace.get_current_span(ctx).get_span_context()
    assert span_context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert span_context.trace_state.to_header() == "a=1,b=2"
    assert not trace.get_current_span(extract_grpc_metadata(None)).get_span_context().is_valid


def test_no_op_without_opentelemetry(tracer: trace.Tracer, no_otel: None) -> None:
    with tracer.start_as_current_span("call"):
        assert inject_grpc_metadata([("a", "1")]) == [("a", "1")]
    assert extract_grpc_metadata([("traceparent", TRACEPARENT)]) is None


def test_interceptors_name_the_extra_when_grpcio_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)
    for factory in (grpc_client_interceptor, grpc_server_interceptor):
        with pytest.raises(MissingExtraError, match=r"resilience-toolkit\[grpc\]"):
            factory()


def test_importing_the_package_imports_neither_grpc_nor_opentelemetry() -> None:
    code = (
        "import sys, resilience.tracing\n"
        "print(sorted(m for m in ('grpc', 'opentelemetry', 'httpx', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
