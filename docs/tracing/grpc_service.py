"""grpcio with the tracing interceptors: one trace from the caller to the servicer.

Needs grpcio (extra ``grpc``). Run it: ``python docs/tracing/grpc_service.py``.
"""

from concurrent import futures

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilience.tracing import format_trace, grpc_client_interceptor, grpc_server_interceptor

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("shop")


def charge(request: bytes, context: grpc.ServicerContext) -> bytes:
    with tracer.start_as_current_span("authorize with acquirer"):
        return b"captured " + request


# Generated servicers work the same; raw-bytes handlers keep the sample protobuf-free.
payments = grpc.method_handlers_generic_handler(
    "shop.Payments", {"Charge": grpc.unary_unary_rpc_method_handler(charge)}
)
server = grpc.server(
    futures.ThreadPoolExecutor(max_workers=2), interceptors=[grpc_server_interceptor()]
)
server.add_generic_rpc_handlers((payments,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()

with grpc.insecure_channel(f"127.0.0.1:{port}") as raw_channel:
    channel = grpc.intercept_channel(raw_channel, grpc_client_interceptor())
    with tracer.start_as_current_span("checkout"):
        print(channel.unary_unary("/shop.Payments/Charge")(b"o-1"))
server.stop(grace=1).wait()

print(
    format_trace(exporter.get_finished_spans(), attributes=["rpc.grpc.status_code"], timings=False)
)
assert len({s.context.trace_id for s in exporter.get_finished_spans()}) == 1
