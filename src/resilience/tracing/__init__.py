"""OpenTelemetry context propagation across HTTP, the outbox, brokers and consumers.

Nobody can tell where an order got stuck unless the request, the outbox row,
the broker record and every consumer share one trace. This package carries the
W3C trace context along that path and opens spans that follow the
OpenTelemetry semantic conventions:

- `capture_context` stamps a message with the current context when it is
  written to the outbox; `producer_span` and `consumer_span` continue it when
  the relay publishes and the consumer processes (as a child, or linked:
  `TracingOptions`).
- `TraceContextMiddleware` (ASGI servers), `httpx_event_hooks` /
  `inject_headers` (HTTP clients) and `inject_grpc_metadata` /
  `extract_grpc_metadata` (gRPC metadata; `grpc_client_interceptor` and
  `grpc_server_interceptor` for grpcio) carry it between services.
- `inject` / `extract` / `use_context` work on any string carrier.
- `OpenTelemetryTelemetry` turns policy events into metrics and span events;
  `format_trace` prints finished spans as a tree.

Only ``opentelemetry-api`` is needed (extra ``otel``), and it is imported on
first use, never by ``import resilience.tracing``. Without it every function
is a cheap no-op.
"""

from ._grpc import extract_grpc_metadata, inject_grpc_metadata
from ._grpc_interceptors import grpc_client_interceptor, grpc_server_interceptor
from ._http import TraceContextMiddleware, httpx_event_hooks, inject_headers
from ._messaging import (
    SpanRelation,
    TracingOptions,
    configure_tracing,
    consumer_span,
    current_options,
    producer_span,
    record_failure,
)
from ._metrics import CALLS_METRIC, EVENTS_METRIC, STATE_METRIC, OpenTelemetryTelemetry
from ._propagation import capture_context, extract, inject, use_context
from ._view import format_trace

__all__ = [
    "CALLS_METRIC",
    "EVENTS_METRIC",
    "STATE_METRIC",
    "OpenTelemetryTelemetry",
    "SpanRelation",
    "TraceContextMiddleware",
    "TracingOptions",
    "capture_context",
    "configure_tracing",
    "consumer_span",
    "current_options",
    "extract",
    "extract_grpc_metadata",
    "format_trace",
    "grpc_client_interceptor",
    "grpc_server_interceptor",
    "httpx_event_hooks",
    "inject",
    "inject_grpc_metadata",
    "inject_headers",
    "producer_span",
    "record_failure",
    "use_context",
]
