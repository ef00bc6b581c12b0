"""Trace context in gRPC metadata, without importing grpcio.

Run it: ``python docs/tracing/grpc_metadata.py``.
"""

from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider

from resilience.tracing import extract_grpc_metadata, inject_grpc_metadata

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("checkout")

# Client side: pass the metadata to the stub, e.g. stub.Charge(request, metadata=metadata).
with tracer.start_as_current_span("charge") as client_span:
    metadata = inject_grpc_metadata([("x-tenant", "acme")])
print(metadata)

# Server side: in the servicer, continue the caller's trace.
# incoming = grpc_context.invocation_metadata()
incoming = metadata
token = context.attach(extract_grpc_metadata(incoming))
try:
    with tracer.start_as_current_span("Payments/Charge", kind=trace.SpanKind.SERVER) as server:
        pass
finally:
    context.detach(token)
assert server.get_span_context().trace_id == client_span.get_span_context().trace_id
