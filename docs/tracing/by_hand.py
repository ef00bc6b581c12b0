"""Tracing a transport of your own: the four calls the outbox relay and the consumer make.

Run it: ``python docs/tracing/by_hand.py``.
"""

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilience.messaging import Message, decode_message, encode_message
from resilience.tracing import capture_context, consumer_span, format_trace, producer_span

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("shop")

# 1. Where the event is created: stamp it with the current context.
with tracer.start_as_current_span("POST /orders"):
    event = Message("order.created", {"id": "o-7"}, key="o-7", headers=capture_context())

# 2. Where it is published: a PRODUCER span, and its context on the wire.
with producer_span(event, system="kafka", destination="orders") as wire_headers:
    record = encode_message(event.with_headers(**wire_headers))
    # producer.produce(topic, key=record.key, value=record.value, headers=record.headers)

# 3. Where it is consumed: a CONSUMER span, current while the handler runs.
received = decode_message(record)
with (
    consumer_span(received, system="kafka", destination="orders", consumer_group="billing"),
    tracer.start_as_current_span("charge card"),
):
    follow_up = Message("payment.captured", headers=capture_context())  # 4. same trace

print(format_trace(exporter.get_finished_spans(), timings=False))
assert len({s.context.trace_id for s in exporter.get_finished_spans()}) == 1
