"""Trace context over HTTP: an ASGI server middleware and client-side injection.

The server side extracts ``traceparent`` from the request and runs the
handler inside a SERVER span, so ``outbox.add`` in the handler stamps events
with the request's trace. The client side adds ``traceparent`` to outgoing
calls (plain header dicts, or an httpx event hook). Neither Starlette nor
httpx is imported here: the middleware speaks raw ASGI and the hook only
touches ``request.headers``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final

from ._messaging import record_failure
from ._otel import INSTRUMENTATION_NAME, OtelApi, api, tracer
from ._propagation import extract, inject

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

__all__ = ["TraceContextMiddleware", "httpx_event_hooks", "inject_headers"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_KNOWN_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"}
)
_SERVER_ERROR: Final = 500


def _request_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        # Repeated headers (tracestate, baggage) combine with commas (RFC 9110 §5.3).
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    return headers


def _route(scope: Scope) -> str | None:
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else None


def _already_traced(otel: OtelApi, parent: Context | None) -> bool:
    """Whether an outer middleware already opened a SERVER span for this very request.

    Recent FastAPI releases trace requests natively, and users may also run
    ``opentelemetry-instrumentation-asgi`` or add this middleware twice. Such a
    span is current, is of kind SERVER, and continues the same remote parent
    we extracted; a SERVER span of *another* request (an in-process call from
    a handler) has a different parent, so that request still gets its own span.
    """
    current = otel.trace.get_current_span()
    if getattr(current, "kind", None) is not otel.trace.SpanKind.SERVER:
        return False
    current_parent = getattr(current, "parent", None)
    remote = otel.trace.get_current_span(parent).get_span_context()
    if not remote.is_valid:
        return current_parent is None
    return (
        current_parent is not None
        and current_parent.trace_id == remote.trace_id
        and current_parent.span_id == remote.span_id
    )


class TraceContextMiddleware:
    """Pure ASGI middleware: continue the caller's trace in a SERVER span.

    Extracts the W3C context from the request headers, starts a SERVER span
    named ``"{method} {route}"`` (``http.request.method``, ``url.path``,
    ``url.scheme``, ``http.route`` when the framework reports one,
    ``http.response.status_code``) and makes it current for the handler, so
    spans, log correlation and ``outbox.add`` inside all join the trace. A 5xx
    response or an exception marks the span failed; the exception propagates.
    Non-HTTP scopes (lifespan, websocket) pass straight through, as does
    everything when OpenTelemetry is not installed, and so does a request an
    outer instrumentation (FastAPI's native telemetry,
    ``opentelemetry-instrumentation-asgi``) already opened a SERVER span for:
    one request, one server span. ``url.query`` is not recorded: query strings
    carry tokens and signatures.

    ``app.add_middleware(TraceContextMiddleware)`` in Starlette/FastAPI, or
    wrap any ASGI app: ``TraceContextMiddleware(app)``.

    Args:
        app: the ASGI application to wrap.
        tracer_name: instrumentation scope name of the spans.
        tracer_provider: the global provider if None.
    """

    __slots__ = ("app", "tracer_name", "tracer_provider")

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_name: str = INSTRUMENTATION_NAME,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.app = app
        self.tracer_name = tracer_name
        self.tracer_provider = tracer_provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        otel = api()
        if otel is None or scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        parent = extract(_request_headers(scope.get("headers") or ()))
        if _already_traced(otel, parent):
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET")).upper()
        method = method if method in _KNOWN_METHODS else "_OTHER"
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method,
            "url.path": str(scope.get("path", "")),
            "url.scheme": str(scope.get("scheme", "http")),
            "network.protocol.version": str(scope.get("http_version", "1.1")),
        }
        span = tracer(otel, self.tracer_provider, self.tracer_name).start_span(
            "HTTP" if method == "_OTHER" else method,
            context=parent,
            kind=otel.trace.SpanKind.SERVER,
            attributes=attributes,
        )
        token = otel.context.attach(otel.trace.set_span_in_context(span, parent))
        status: list[int] = []

        async def send_with_status(message: Message) -> None:
            if message.get("type") == "http.response.start":
                status.append(int(message["status"]))
                span.set_attribute("http.response.status_code", status[0])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except Exception as exc:
            record_failure(span, exc)
            raise
        finally:
            if (route := _route(scope)) is not None:
                span.set_attribute("http.route", route)
                if method != "_OTHER":
                    span.update_name(f"{method} {route}")
            if status and status[0] >= _SERVER_ERROR:
                span.set_attribute("error.type", str(status[0]))
                span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR))
            otel.context.detach(token)
            span.end()


def inject_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of *headers* with the current trace context added, for an outgoing call.

    ``requests.post(url, json=body, headers=inject_headers({"Idempotency-Key": key}))``.
    Unchanged (but copied) without OpenTelemetry or without an active span.
    """
    out = dict(headers or {})
    inject(out)
    return out


def httpx_event_hooks(*, asynchronous: bool = False) -> dict[str, list[Callable[[Any], Any]]]:
    """Event hooks that put ``traceparent`` on every request an httpx client sends.

    ``httpx.Client(event_hooks=httpx_event_hooks())``, or
    ``httpx.AsyncClient(event_hooks=httpx_event_hooks(asynchronous=True))``
    (httpx awaits the hooks of an async client). The context is read when the
    request is sent, so the hook follows whatever span is current then.
    """

    def add_trace_context(request: Any) -> None:
        inject(request.headers)

    async def add_trace_context_async(request: Any) -> None:
        inject(request.headers)

    return {"request": [add_trace_context_async if asynchronous else add_trace_context]}
