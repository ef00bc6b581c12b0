"""TraceContextMiddleware and client-side injection, in process and over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from resilience.tracing import (
    TraceContextMiddleware,
    capture_context,
    httpx_event_hooks,
    inject_headers,
)

pytestmark = pytest.mark.integration  # uvicorn on loopback

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736


async def create_order(request: Request) -> JSONResponse:
    with trace.get_tracer("tests.handler").start_as_current_span("insert order"):
        captured = capture_context()
    return JSONResponse({"order": request.path_params["order_id"], "captured": captured})


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("database down")


async def unavailable(request: Request) -> PlainTextResponse:
    return PlainTextResponse("try later", status_code=503)


def make_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/orders/{order_id}", create_order, methods=["POST"]),
            Route("/boom", boom),
            Route("/unavailable", unavailable),
        ]
    )
    app.add_middleware(TraceContextMiddleware)
    return app


def _server_spans(exporter: InMemorySpanExporter, count: int = 1) -> list[ReadableSpan]:
    # The server span ends after the response is on the wire: the client may see
    # the response first, so wait (bounded) for the span to be exported.
    deadline = time.monotonic() + 10
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


async def test_continues_the_incoming_trace(exporter: InMemorySpanExporter) -> None:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(
            "/orders/42?dry=1", headers={"traceparent": TRACEPARENT, "tracestate": "a=1"}
        )
    assert response.status_code == 200
    [server] = _server_spans(exporter)
    [handler] = [s for s in exporter.get_finished_spans() if s.name == "insert order"]
    assert server.name == "POST /orders/{order_id}"
    assert server.context.trace_id == TRACE_ID
    assert server.parent is not None
    assert server.parent.span_id == 0x00F067AA0BA902B7
    assert server.parent.is_remote
    assert dict(server.attributes or {}) == {
        "http.request.method": "POST",
        "url.path": "/orders/42",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.route": "/orders/{order_id}",
        "http.response.status_code": 200,
    }
    assert handler.parent is not None
    assert handler.parent.span_id == server.context.span_id
    # What the handler would stamp on an outbox message: the request's trace.
    captured = response.json()["captured"]
    assert captured["traceparent"].split("-")[1] == f"{TRACE_ID:032x}"
    assert captured["tracestate"] == "a=1"


async def test_without_traceparent_the_server_span_is_a_root(
    exporter: InMemorySpanExporter,
) -> None:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.post("/orders/1", headers={"traceparent": "garbage"})
    [server] = _server_spans(exporter)
    assert server.parent is None


async def test_exceptions_and_5xx_mark_the_span_failed(exporter: InMemorySpanExporter) -> None:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/boom")).status_code == 500
        assert (await client.get("/unavailable")).status_code == 503
        assert (await client.get("/missing")).status_code == 404
    spans = {s.name: s for s in _server_spans(exporter, 3)}
    boom = spans["GET /boom"]
    assert boom.status.status_code is StatusCode.ERROR
    assert boom.attributes is not None
    assert boom.attributes["error.type"] == "RuntimeError"
    assert [e.name for e in boom.events] == ["exception"]
    unavailable = spans["GET /unavailable"]
    assert unavailable.status.status_code is StatusCode.ERROR
    assert unavailable.attributes is not None
    assert unavailable.attributes["http.response.status_code"] == 503
    not_found = spans["GET"]  # no route matched: no high-cardinality path in the name
    assert not_found.status.status_code is StatusCode.UNSET  # 4xx is the client's fault
    assert not_found.attributes is not None
    assert "http.route" not in not_found.attributes


async def test_unknown_methods_and_non_http_scopes(exporter: InMemorySpanExporter) -> None:
    seen: list[str] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    middleware = TraceContextMiddleware(app)
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.request("BREW", "/pot")).status_code == 204
    assert seen == ["lifespan", "http"]
    [server] = _server_spans(exporter)
    assert server.name == "HTTP"
    assert server.attributes is not None
    assert server.attributes["http.request.method"] == "_OTHER"


async def test_middleware_without_opentelemetry_passes_through(
    exporter: InMemorySpanExporter, no_otel: None
) -> None:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/orders/1", headers={"traceparent": TRACEPARENT})
    assert response.json()["captured"] == {}
    # Only the handler's own span (made with the OTel API directly), as a root.
    [handler] = exporter.get_finished_spans()
    assert handler.name == "insert order"
    assert handler.parent is None


def test_inject_headers_copies(tracer: trace.Tracer) -> None:
    original = {"Idempotency-Key": "k1"}
    assert inject_headers(original) == original
    with tracer.start_as_current_span("call") as span:
        headers = inject_headers(original)
    assert original == {"Idempotency-Key": "k1"}
    assert headers["Idempotency-Key"] == "k1"
    assert headers["traceparent"].split("-")[2] == f"{span.get_span_context().span_id:016x}"
    assert inject_headers() == {}


@pytest.fixture
def server_url(serve: Callable[[Any], str]) -> str:
    """make_app() served by uvicorn on a loopback port."""
    return serve(make_app())


def test_real_http_round_trip_with_the_sync_hook(
    server_url: str, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    with (
        httpx.Client(base_url=server_url, event_hooks=httpx_event_hooks()) as client,
        tracer.start_as_current_span("checkout", kind=SpanKind.CLIENT) as caller,
    ):
        response = client.post("/orders/7")
    assert response.status_code == 200
    [server] = _server_spans(exporter)
    assert server.context.trace_id == caller.get_span_context().trace_id
    assert server.parent is not None
    assert server.parent.span_id == caller.get_span_context().span_id
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/orders/{order_id}"


async def test_real_http_round_trip_with_the_async_hook(
    server_url: str, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    hooks = httpx_event_hooks(asynchronous=True)
    async with httpx.AsyncClient(base_url=server_url, event_hooks=hooks) as client:
        with tracer.start_as_current_span("checkout") as caller:
            first = await client.post("/orders/1")
        second = await client.post("/orders/2")  # no span now: no traceparent sent
    assert first.status_code == second.status_code == 200
    spans = sorted(_server_spans(exporter, 2), key=lambda s: s.start_time or 0)
    assert spans[0].context.trace_id == caller.get_span_context().trace_id
    assert spans[1].parent is None
    assert spans[1].context.trace_id != caller.get_span_context().trace_id


async def test_steps_aside_when_fastapi_already_traces_the_request(
    exporter: InMemorySpanExporter,
) -> None:
    from fastapi import FastAPI

    app = FastAPI()  # recent FastAPI releases open their own SERVER span
    app.add_middleware(TraceContextMiddleware)

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/items/1", headers={"traceparent": TRACEPARENT})).is_success
        assert (await client.get("/items/2")).is_success
    servers = _server_spans(exporter, 2)
    assert len(servers) == 2  # one per request, not two
    assert {s.instrumentation_scope.name for s in servers if s.instrumentation_scope} <= {"fastapi"}
    assert sorted(s.context.trace_id == TRACE_ID for s in servers) == [False, True]


async def test_added_twice_still_one_server_span(exporter: InMemorySpanExporter) -> None:
    app = TraceContextMiddleware(TraceContextMiddleware(make_app()))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.post("/orders/1", headers={"traceparent": TRACEPARENT})
        await client.post("/orders/2")
    servers = _server_spans(exporter, 2)
    assert len(servers) == 2


async def test_an_in_process_call_from_a_handler_gets_its_own_server_span(
    exporter: InMemorySpanExporter,
) -> None:
    inner = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=make_app()),
        base_url="http://inner",
        event_hooks=httpx_event_hooks(asynchronous=True),
    )

    async def outer_endpoint(request: Request) -> JSONResponse:
        response = await inner.post("/orders/9")
        return JSONResponse(response.json())

    outer = Starlette(routes=[Route("/checkout", outer_endpoint, methods=["POST"])])
    outer.add_middleware(TraceContextMiddleware)
    transport = httpx.ASGITransport(app=outer)
    async with inner, httpx.AsyncClient(transport=transport, base_url="http://outer") as client:
        assert (await client.post("/checkout")).is_success
    spans = {s.name: s for s in _server_spans(exporter, 2)}
    checkout, order = spans["POST /checkout"], spans["POST /orders/{order_id}"]
    assert order.parent is not None
    assert order.parent.span_id == checkout.context.span_id
