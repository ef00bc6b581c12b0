"""The issue's key proof: one order is one trace.

HTTP request (SERVER) → ``outbox.add`` in the handler, committed with the order →
relay (PRODUCER, started from the context stored in the outbox row, not from
the relay's own) → in-memory broker → consumer (CONSUMER) → the handler's own
span, and an event the handler writes to its outbox continues the same trace.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resilience.messaging import (
    Consumer,
    InMemoryBroker,
    KafkaPublisher,
    KafkaSubscription,
    Message,
    Publisher,
    Router,
    Subscription,
    TopicRouter,
)
from resilience.outbox import Outbox, Relay
from resilience.testing import FakeClock
from resilience.tracing import (
    TraceContextMiddleware,
    TracingOptions,
    configure_tracing,
    format_trace,
    httpx_event_hooks,
)

pytestmark = pytest.mark.timeout(60)


class Shop:
    """An order service (HTTP + outbox) and a billing consumer, sharing one database."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        publisher: Publisher | None = None,
        subscribe: Callable[[], Subscription] | None = None,
        router: Router | None = None,
    ) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.engine = engine
        self.metadata = sa.MetaData()
        self.outbox = Outbox(self.metadata, name=f"outbox_{suffix}", router=router or TopicRouter())
        self.orders = sa.Table(
            f"orders_{suffix}",
            self.metadata,
            sa.Column("id", sa.String(50), primary_key=True),
            sa.Column("total", sa.Integer, nullable=False),
        )
        self.metadata.create_all(engine)
        self.broker = InMemoryBroker(partitions=1)
        self.subscribe = subscribe or (
            lambda: self.broker.subscribe(["order", "payment"], "billing")
        )
        self.relay = Relay(engine, self.outbox, publisher or self.broker.publisher(), batch_size=50)
        self.tracer = trace.get_tracer("shop")
        self.fail_billing = False

    def create_order(self, request: Request) -> JSONResponse:
        # A *sync* endpoint: Starlette runs it in a worker thread; the trace must follow.
        order_id = request.path_params["order_id"]
        with self.engine.begin() as conn:
            conn.execute(self.orders.insert().values(id=order_id, total=100))
            self.outbox.add(conn, Message("order.created", {"id": order_id}, key=order_id))
        return JSONResponse({"id": order_id}, status_code=201)

    def app(self) -> Starlette:
        app = Starlette(routes=[Route("/orders/{order_id}", self.create_order, methods=["POST"])])
        app.add_middleware(TraceContextMiddleware)
        return app

    def bill(self, message: Message) -> None:
        with self.tracer.start_as_current_span("charge card"):
            if self.fail_billing:
                raise ConnectionError("acquirer timeout")
            with self.engine.begin() as conn:
                self.outbox.add(
                    conn,
                    Message("payment.captured", {"order": message.payload["id"]}, key=message.key),
                )

    def consumer(self) -> Consumer:
        return Consumer(
            self.subscribe(),
            lambda m: self.bill(m) if m.type == "order.created" else None,
            clock=FakeClock(),
            rng=random.Random(1),
            dead_letter_after=2,
        )

    def drop(self) -> None:
        self.metadata.drop_all(self.engine)


@pytest.fixture
def shop(sqlite_url: str) -> Iterator[Shop]:
    engine = sa.create_engine(sqlite_url)
    shop = Shop(engine)
    yield shop
    shop.drop()
    engine.dispose()


def _spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert len(by_name) == len(spans), [s.name for s in spans]
    return by_name


def _parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def test_one_order_is_one_trace(
    shop: Shop,
    serve: Callable[[Any], str],
    tracer: trace.Tracer,
    exporter: InMemorySpanExporter,
) -> None:
    url = serve(shop.app())
    with (
        httpx.Client(base_url=url, event_hooks=httpx_event_hooks()) as client,
        tracer.start_as_current_span("checkout", kind=SpanKind.CLIENT) as checkout,
    ):
        assert client.post("/orders/o-1").status_code == 201

    # The relay and the consumer run outside any request, with spans of their own
    # that must NOT capture the order's spans.
    with tracer.start_as_current_span("relay tick"):
        assert shop.relay.run_once().published == 1
    consumer = shop.consumer()
    with tracer.start_as_current_span("consumer tick"):
        assert consumer.run_once(timeout=1) == 1
        assert shop.relay.run_once().published == 1  # payment.captured, written by the handler
        assert consumer.run_once(timeout=1) == 1

    spans = _spans(exporter)
    print(format_trace(spans.values()))
    server = spans["POST /orders/{order_id}"]
    send = spans["send order"]
    process = spans["process order"]
    charge = spans["charge card"]
    send_payment = spans["send payment"]
    process_payment = spans["process payment"]
    order_trace = checkout.get_span_context().trace_id

    # One trace, from the browser click to the payment event's consumer.
    chain = [server, send, process, charge, send_payment, process_payment]
    assert {s.context.trace_id for s in chain} == {order_trace}
    # ...with the right parents: each hop hangs off the previous one.
    assert _parent_of(server) == checkout.get_span_context().span_id
    assert _parent_of(send) == server.context.span_id  # via the outbox row
    assert _parent_of(process) == send.context.span_id  # via broker headers
    assert _parent_of(charge) == process.context.span_id  # current in the handler
    assert _parent_of(send_payment) == charge.context.span_id  # outbox.add in the handler
    assert _parent_of(process_payment) == send_payment.context.span_id
    # The relay's and the consumer's own spans are separate traces.
    assert spans["relay tick"].context.trace_id != order_trace
    assert spans["consumer tick"].context.trace_id != order_trace
    # Kinds and semantic-convention attributes along the way.
    assert [s.kind for s in chain] == [
        SpanKind.SERVER,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.INTERNAL,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
    ]
    assert send.attributes is not None
    assert process.attributes is not None
    assert send.attributes["messaging.destination.name"] == "order"
    assert send.attributes["messaging.message.id"] == process.attributes["messaging.message.id"]
    assert process.attributes["messaging.consumer.group.name"] == "billing"
    # The message stored in the outbox and the one on the wire carry different parents.
    [record] = shop.broker.messages("order")
    assert record.headers["traceparent"].split("-")[2] == f"{send.context.span_id:016x}"


def test_a_failing_handler_shows_up_in_the_order_trace(
    shop: Shop,
    serve: Callable[[Any], str],
    tracer: trace.Tracer,
    exporter: InMemorySpanExporter,
) -> None:
    url = serve(shop.app())
    with (
        httpx.Client(base_url=url, event_hooks=httpx_event_hooks()) as client,
        tracer.start_as_current_span("checkout") as checkout,
    ):
        client.post("/orders/o-2")
    shop.relay.run_once()
    shop.fail_billing = True
    consumer = shop.consumer()
    consumer.run_once(timeout=1)  # attempt 1 fails, is retried, fails again: dead-lettered
    failed = [s for s in exporter.get_finished_spans() if s.name == "process order"]
    assert failed
    assert all(s.context.trace_id == checkout.get_span_context().trace_id for s in failed)
    assert all(s.status.status_code is StatusCode.ERROR for s in failed)
    assert any(e.name == "exception" for s in failed for e in s.events)
    assert len(shop.broker.dead_letters("order")) == 1


def test_link_mode_keeps_the_relay_publish_out_of_the_request_trace(
    shop: Shop,
    serve: Callable[[Any], str],
    tracer: trace.Tracer,
    exporter: InMemorySpanExporter,
) -> None:
    url = serve(shop.app())
    with (
        httpx.Client(base_url=url, event_hooks=httpx_event_hooks()) as client,
        tracer.start_as_current_span("checkout"),
    ):
        client.post("/orders/o-3")
    previous = configure_tracing(TracingOptions(producer_relation="link"))
    try:
        shop.relay.run_once()
    finally:
        configure_tracing(previous)
    shop.consumer().run_once(timeout=1)
    spans = _spans(exporter)
    server, send, process = (
        spans["POST /orders/{order_id}"],
        spans["send order"],
        spans["process order"],
    )
    assert send.parent is None
    assert send.context.trace_id != server.context.trace_id
    assert [link.context.span_id for link in send.links] == [server.context.span_id]
    # The consumer continues the *publish* trace (the default consumer relation).
    assert process.context.trace_id == send.context.trace_id
    assert _parent_of(process) == send.context.span_id


@pytest.mark.integration
def test_one_order_is_one_trace_over_postgres_and_kafka(
    postgres_url: str,
    kafka_topic: Callable[..., str],
    kafka_consumer_config: dict[str, Any],
    serve: Callable[[Any], str],
    tracer: trace.Tracer,
    exporter: InMemorySpanExporter,
) -> None:
    topic = kafka_topic("orders", partitions=2)
    engine = sa.create_engine(postgres_url)
    publisher = KafkaPublisher(kafka_consumer_config["bootstrap.servers"], router=lambda m: topic)
    subscriptions: list[KafkaSubscription] = []

    def subscribe() -> KafkaSubscription:
        sub = KafkaSubscription(kafka_consumer_config, topic, kafka_consumer_config["group.id"])
        subscriptions.append(sub)
        return sub

    shop = Shop(engine, publisher=publisher, subscribe=subscribe, router=lambda m: topic)
    try:
        url = serve(shop.app())
        with (
            httpx.Client(base_url=url, event_hooks=httpx_event_hooks()) as client,
            tracer.start_as_current_span("checkout", kind=SpanKind.CLIENT) as checkout,
        ):
            assert client.post("/orders/k-1").status_code == 201
        assert shop.relay.run_once().published == 1
        consumer = shop.consumer()
        deadline = time.monotonic() + 25  # the first poll waits for the group join
        while not any(s.name == "charge card" for s in exporter.get_finished_spans()):
            assert time.monotonic() < deadline, "the order never reached the consumer"
            consumer.run_once(timeout=0.5)
    finally:
        for sub in subscriptions:
            sub.close()
        publisher.close()
        shop.drop()
        engine.dispose()

    spans = {s.name: s for s in exporter.get_finished_spans()}
    server = spans["POST /orders/{order_id}"]
    send, process = spans[f"send {topic}"], spans[f"process {topic}"]
    charge = spans["charge card"]
    assert {s.context.trace_id for s in (server, send, process, charge)} == {
        checkout.get_span_context().trace_id
    }
    assert _parent_of(send) == server.context.span_id
    assert _parent_of(process) == send.context.span_id
    assert _parent_of(charge) == process.context.span_id
    for span in (send, process):
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.kafka.message.key"] == "k-1"
