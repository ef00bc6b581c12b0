"""grpcio interceptors: a CLIENT span per call, a SERVER span per handled call.

Built on first use: grpcio (extra ``grpc``) is imported when a factory is
called, never by ``import resilience.tracing``. Spans follow the RPC semantic
conventions: name ``{package.Service}/{Method}``, ``rpc.system=grpc``,
``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from resilience._optional import require

from ._grpc import extract_grpc_metadata
from ._messaging import record_failure
from ._otel import OtelApi, api, tracer
from ._propagation import capture_context

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["grpc_client_interceptor", "grpc_server_interceptor"]

_OK: Final = 0
_UNKNOWN: Final = 2
# Codes that mean the *server* failed (the convention's list); the others
# (NOT_FOUND, INVALID_ARGUMENT, ...) are the caller's problem, not an error here.
_SERVER_ERRORS: Final = frozenset({2, 4, 12, 13, 14, 15})


def _rpc_attributes(full_method: str) -> tuple[str, dict[str, Any]]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    attributes: dict[str, Any] = {"rpc.system": "grpc"}
    if service:
        attributes["rpc.service"] = service
    if method:
        attributes["rpc.method"] = method
    return (f"{service}/{method}" if service else full_method or "grpc"), attributes


def _code_value(code: Any) -> int:
    """``grpc.StatusCode.X`` -> its integer (the enum's value is ``(int, str)``)."""
    value = getattr(code, "value", None)
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return value[0]
    return _UNKNOWN


def _finish(otel: OtelApi, span: Span, code: int, *, server: bool) -> None:
    span.set_attribute("rpc.grpc.status_code", code)
    failed = code in _SERVER_ERRORS if server else code != _OK
    if failed:
        span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR))


@functools.cache
def _client_class(grpc: Any) -> type:
    class _Details(
        collections.namedtuple(
            "_Details",
            ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
        ),
        grpc.ClientCallDetails,  # type: ignore[misc]
    ):
        pass

    class ClientInterceptor(
        grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
        grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
        grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
        grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
    ):
        def __init__(self, tracer_provider: TracerProvider | None) -> None:
            self.tracer_provider = tracer_provider

        def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
            otel = api()
            if otel is None:
                return continuation(details, request)
            name, attributes = _rpc_attributes(details.method)
            span = tracer(otel, self.tracer_provider).start_span(
                name, kind=otel.trace.SpanKind.CLIENT, attributes=attributes
            )
            headers = capture_context(context=otel.trace.set_span_in_context(span))
            trace_keys = set(headers)
            metadata = [(k, v) for k, v in (details.metadata or ()) if k.lower() not in trace_keys]
            metadata.extend(headers.items())
            new_details = _Details(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                getattr(details, "wait_for_ready", None),
                getattr(details, "compression", None),
            )
            try:
                call = continuation(new_details, request)
            except Exception as exc:
                record_failure(span, exc)
                span.end()
                raise

            def done(future: Any) -> None:
                _finish(otel, span, _code_value(future.code()), server=False)
                span.end()

            call.add_done_callback(done)
            return call

        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return self._call(continuation, details, request)

        def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return self._call(continuation, details, request)

        def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
            return self._call(continuation, details, requests)

        def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
            return self._call(continuation, details, requests)

    return ClientInterceptor


@functools.cache
def _server_class(grpc: Any) -> type:
    class ServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
        def __init__(self, tracer_provider: TracerProvider | None) -> None:
            self.tracer_provider = tracer_provider

        def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
            handler = continuation(handler_call_details)
            otel = api()
            if handler is None or otel is None:
                return handler
            name, attributes = _rpc_attributes(handler_call_details.method)
            metadata = handler_call_details.invocation_metadata
            provider = self.tracer_provider

            def start() -> tuple[Span, object]:
                parent = extract_grpc_metadata(metadata)
                span = tracer(otel, provider).start_span(
                    name, context=parent, kind=otel.trace.SpanKind.SERVER, attributes=attributes
                )
                token = otel.context.attach(otel.trace.set_span_in_context(span, parent))
                return span, token

            def end(span: Span, token: object | None, context: Any, exc: Exception | None) -> None:
                code = _code_value(context.code()) if context.code() is not None else None
                if exc is not None:
                    code = _UNKNOWN if code is None else code
                    if code in _SERVER_ERRORS:
                        record_failure(span, exc)
                _finish(otel, span, _OK if code is None else code, server=True)
                if token is not None:
                    otel.context.detach(token)
                span.end()

            def unary_response(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
                def run(request: Any, context: Any) -> Any:
                    span, token = start()
                    try:
                        response = behavior(request, context)
                    except Exception as exc:
                        end(span, token, context, exc)
                        raise
                    end(span, token, context, None)
                    return response

                return run

            def stream_response(
                behavior: Callable[[Any, Any], Iterator[Any]],
            ) -> Callable[[Any, Any], Iterator[Any]]:
                def run(request: Any, context: Any) -> Iterator[Any]:
                    span, token = start()
                    try:
                        iterator = iter(behavior(request, context))
                    except Exception as exc:
                        end(span, token, context, exc)
                        raise
                    # The span is current only while the servicer computes an item:
                    # between items the server may resume the generator elsewhere.
                    otel.context.detach(token)
                    error: Exception | None = None
                    try:
                        while True:
                            token = otel.context.attach(otel.trace.set_span_in_context(span))
                            try:
                                item = next(iterator)
                            except StopIteration:
                                break
                            finally:
                                otel.context.detach(token)
                            yield item
                    except Exception as exc:
                        error = exc
                        raise
                    finally:  # also when the client cancels (GeneratorExit)
                        end(span, None, context, error)

                return run

            kinds = (
                ("unary_unary", unary_response, grpc.unary_unary_rpc_method_handler),
                ("unary_stream", stream_response, grpc.unary_stream_rpc_method_handler),
                ("stream_unary", unary_response, grpc.stream_unary_rpc_method_handler),
                ("stream_stream", stream_response, grpc.stream_stream_rpc_method_handler),
            )
            for attribute, wrap, make in kinds:
                behavior = getattr(handler, attribute)
                if behavior is not None:
                    return make(
                        wrap(behavior),
                        request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer,
                    )
            return handler

    return ServerInterceptor


def grpc_client_interceptor(*, tracer_provider: TracerProvider | None = None) -> Any:
    """A grpcio client interceptor: a CLIENT span per call, its context sent in metadata.

    ``channel = grpc.intercept_channel(grpc.insecure_channel(target), grpc_client_interceptor())``.
    Covers the four call shapes; the span ends when the call completes (for
    streams, when the response stream ends) with ``rpc.grpc.status_code``; any
    non-OK status marks it failed. Without OpenTelemetry it only forwards.
    Needs grpcio (extra ``grpc``).
    """
    grpc = require("grpc", "grpc")
    return _client_class(grpc)(tracer_provider)


def grpc_server_interceptor(*, tracer_provider: TracerProvider | None = None) -> Any:
    """A grpcio server interceptor: each call runs in a SERVER span continuing the caller's trace.

    ``grpc.server(executor, interceptors=[grpc_server_interceptor()])``. The span
    is current while the servicer method runs (and while a streaming response
    is produced), so spans and ``outbox.add`` inside join the trace. Server-side
    codes (UNKNOWN, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED,
    DATA_LOSS) mark it failed; a client error such as ``context.abort(NOT_FOUND)``
    does not. Needs grpcio (extra ``grpc``).
    """
    grpc = require("grpc", "grpc")
    return _server_class(grpc)(tracer_provider)
