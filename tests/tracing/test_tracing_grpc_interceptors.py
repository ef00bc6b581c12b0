"""grpcio interceptors over a real gRPC connection on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from resilience.tracing import capture_context, grpc_client_interceptor, grpc_server_interceptor

grpc = pytest.importorskip("grpc")

SERVICE = "shop.Payments"


class Servicer:
    """Raw-bytes handlers (no protobuf needed): what each call saw of the trace."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer("payments")
        self.seen: list[dict[str, str]] = []

    def charge(self, request: bytes, context: Any) -> bytes:
        with self.tracer.start_as_current_span("charge card"):
            self.seen.append(capture_context())
        if request == b"crash":
            raise RuntimeError("acquirer exploded")
        if request == b"missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
        return b"ok:" + request

    def receipts(self, request: bytes, context: Any) -> Iterator[bytes]:
        for i in range(3):
            self.seen.append(capture_context())
            yield f"line {i}".encode()

    def total(self, requests: Iterator[bytes], context: Any) -> bytes:
        return str(sum(len(r) for r in requests)).encode()

    def echo(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        yield from requests


@pytest.fixture
def servicer() -> Servicer:
    return Servicer()


@pytest.fixture
def channel(servicer: Servicer) -> Iterator[Any]:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Charge": grpc.unary_unary_rpc_method_handler(servicer.charge),
            "Receipts": grpc.unary_stream_rpc_method_handler(servicer.receipts),
            "Total": grpc.stream_unary_rpc_method_handler(servicer.total),
            "Echo": grpc.stream_stream_rpc_method_handler(servicer.echo),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[grpc_server_interceptor()]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    raw = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield grpc.intercept_channel(raw, grpc_client_interceptor())
    finally:
        raw.close()
        server.stop(grace=None).wait(5)


def _by_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


def _parent_id(span: ReadableSpan) -> int:
    assert span.parent is not None, span.name
    return span.parent.span_id


def _wait_for(exporter: InMemorySpanExporter, kind: SpanKind, count: int) -> list[ReadableSpan]:
    import time

    deadline = time.monotonic() + 10  # the server span ends just after the response is sent
    while len(spans := _by_kind(exporter, kind)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return spans


def test_unary_call_is_one_trace_client_server_handler(
    channel: Any, servicer: Servicer, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    with tracer.start_as_current_span("checkout") as checkout:
        assert (
            channel.unary_unary(f"/{SERVICE}/Charge")(b"o-1", metadata=[("x-t", "1")]) == b"ok:o-1"
        )
    [client] = _wait_for(exporter, SpanKind.CLIENT, 1)
    [server] = _wait_for(exporter, SpanKind.SERVER, 1)
    [handler] = [s for s in exporter.get_finished_spans() if s.name == "charge card"]
    trace_id = checkout.get_span_context().trace_id
    assert {client.context.trace_id, server.context.trace_id, handler.context.trace_id} == {
        trace_id
    }
    assert _parent_id(client) == checkout.get_span_context().span_id
    assert _parent_id(server) == client.context.span_id
    assert _parent_id(handler) == server.context.span_id
    assert client.name == server.name == "shop.Payments/Charge"
    for span in (client, server):
        assert dict(span.attributes or {}) == {
            "rpc.system": "grpc",
            "rpc.service": "shop.Payments",
            "rpc.method": "Charge",
            "rpc.grpc.status_code": 0,
        }


def test_server_failure_and_client_error_codes(
    channel: Any, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    charge = channel.unary_unary(f"/{SERVICE}/Charge")
    with pytest.raises(grpc.RpcError) as crashed:
        charge(b"crash")
    assert crashed.value.code() is grpc.StatusCode.UNKNOWN
    with pytest.raises(grpc.RpcError) as missing:
        charge(b"missing")
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    servers = _wait_for(exporter, SpanKind.SERVER, 2)
    clients = _by_kind(exporter, SpanKind.CLIENT)
    codes = {(s.kind, (s.attributes or {})["rpc.grpc.status_code"]): s for s in servers + clients}
    server_crash, server_missing = codes[(SpanKind.SERVER, 2)], codes[(SpanKind.SERVER, 5)]
    assert server_crash.status.status_code is StatusCode.ERROR
    assert [e.name for e in server_crash.events] == ["exception"]
    assert server_missing.status.status_code is StatusCode.UNSET  # NOT_FOUND: the caller's problem
    assert codes[(SpanKind.CLIENT, 2)].status.status_code is StatusCode.ERROR
    assert codes[(SpanKind.CLIENT, 5)].status.status_code is StatusCode.ERROR  # the caller failed


def test_streaming_calls(
    channel: Any, servicer: Servicer, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    with tracer.start_as_current_span("checkout") as checkout:
        lines = list(channel.unary_stream(f"/{SERVICE}/Receipts")(b"o-1"))
        total = channel.stream_unary(f"/{SERVICE}/Total")(iter([b"ab", b"cde"]))
        echoed = list(channel.stream_stream(f"/{SERVICE}/Echo")(iter([b"x", b"y"])))
    assert lines == [b"line 0", b"line 1", b"line 2"]
    assert total == b"5"
    assert echoed == [b"x", b"y"]
    servers = _wait_for(exporter, SpanKind.SERVER, 3)
    clients = _wait_for(exporter, SpanKind.CLIENT, 3)
    assert (
        sorted(s.name for s in servers)
        == sorted(s.name for s in clients)
        == [
            "shop.Payments/Echo",
            "shop.Payments/Receipts",
            "shop.Payments/Total",
        ]
    )
    trace_id = checkout.get_span_context().trace_id
    assert {s.context.trace_id for s in servers + clients} == {trace_id}
    # While the streaming servicer produced each item, its server span was current.
    [receipts] = [s for s in servers if s.name.endswith("Receipts")]
    assert len(servicer.seen) == 3
    assert all(
        h["traceparent"].split("-")[2] == f"{receipts.context.span_id:016x}" for h in servicer.seen
    )


def test_without_opentelemetry_the_interceptors_forward(
    channel: Any, servicer: Servicer, exporter: InMemorySpanExporter, no_otel: None
) -> None:
    assert channel.unary_unary(f"/{SERVICE}/Charge")(b"o-9") == b"ok:o-9"
    assert servicer.seen == [{}]
    assert _by_kind(exporter, SpanKind.CLIENT) == _by_kind(exporter, SpanKind.SERVER) == []
