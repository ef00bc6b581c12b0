"""The trace of one order: HTTP request → outbox → relay → broker → consumer.

Three services run in this one process for the demo (each with its own
``service.name``); in production each process sets its global provider once.
Run it: ``python docs/tracing/one_order.py``.
"""

import asyncio
import tempfile

import httpx
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resilience.messaging import Consumer, InMemoryBroker, Message, TopicRouter
from resilience.outbox import Outbox, Relay
from resilience.tracing import (
    TraceContextMiddleware,
    TracingOptions,
    configure_tracing,
    format_trace,
)

exporter = InMemorySpanExporter()  # every span, from every "service", lands here


def provider(service: str) -> TracerProvider:
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": service}))
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


orders_api, outbox_relay, billing = provider("orders-api"), provider("relay"), provider("billing")

# --- the orders service: the order row and its event commit in one transaction
engine = sa.create_engine(f"sqlite:///{tempfile.mkdtemp()}/shop.db")
metadata = sa.MetaData()
outbox = Outbox(metadata, router=TopicRouter())  # stamps each event with the current trace
orders = sa.Table("orders", metadata, sa.Column("id", sa.String(40), primary_key=True))
metadata.create_all(engine)


async def create_order(request: Request) -> JSONResponse:
    order_id = request.path_params["order_id"]
    with engine.begin() as conn:
        conn.execute(orders.insert().values(id=order_id))
        outbox.add(conn, Message("order.created", {"id": order_id}, key=order_id))
    return JSONResponse({"id": order_id}, status_code=201)


app = Starlette(routes=[Route("/orders/{order_id}", create_order, methods=["POST"])])
app.add_middleware(TraceContextMiddleware, tracer_provider=orders_api)


async def place_order() -> None:
    # The caller (a browser, a gateway) sends its own traceparent.
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
        response = await client.post("/orders/o-1", headers={"traceparent": caller})
    assert response.status_code == 201


asyncio.run(place_order())

# --- the relay: later, in another process, with no request in sight
broker = InMemoryBroker()
configure_tracing(TracingOptions(tracer_provider=outbox_relay))
Relay(engine, outbox, broker.publisher()).run_once()


# --- the billing service
def bill(message: Message) -> None:
    with billing.get_tracer("billing").start_as_current_span("charge card"):
        pass  # call the acquirer, write the payment, maybe outbox.add(...) again


configure_tracing(TracingOptions(tracer_provider=billing))
Consumer(broker.subscribe("order", "billing"), bill).run_once(timeout=1)

print(format_trace(exporter.get_finished_spans(), attributes=["messaging.destination.name"]))
trace_ids = {span.context.trace_id for span in exporter.get_finished_spans()}
assert trace_ids == {0x0AF7651916CD43DD8448EB211C80319C}, "one order, one trace"
assert trace.get_current_span() is trace.INVALID_SPAN  # nothing leaked into this context
