"""Set up the OpenTelemetry SDK once, at process start (before any span is made).

Run it: ``python docs/tracing/setup_sdk.py`` prints one span as JSON.
"""

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from resilience.messaging import Message
from resilience.tracing import capture_context

provider = TracerProvider(resource=Resource.create({"service.name": "orders-api"}))
provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(provider)

with trace.get_tracer("orders").start_as_current_span("create order"):
    headers = capture_context()  # what outbox.add stores next to the event
    message = Message("order.created", {"id": "o-1"}, key="o-1", headers=headers)

print(message.headers)  # {'traceparent': '00-<trace id>-<span id>-01'}
provider.shutdown()  # flush the batch processor before exit
