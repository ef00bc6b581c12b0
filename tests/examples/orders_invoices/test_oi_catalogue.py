"""The message catalogue is what actually travels: replayed against a run of the system."""

from __future__ import annotations

import uuid

import httpx
import pytest
from examples._catalogue import render_catalogue
from examples.orders_invoices.catalogue import catalogue
from examples.orders_invoices.domain import DECLINED_CARD
from examples.orders_invoices.embedded import EmbeddedSystem
from examples.orders_invoices.events import InvoiceIssued, StockReserved
from pydantic import TypeAdapter

from resilience.messaging import DLQ_REASON, DLQ_SUFFIX, Message, RawMessage, decode_message

pytestmark = pytest.mark.integration  # loopback HTTP servers

ORDER = {"customer": "cat@shop.example", "zip": "40020-000", "items": [{"sku": "poster", "qty": 1}]}


def place(gateway: httpx.Client, **changes: object) -> str:
    response = gateway.post(
        "/orders", json={**ORDER, **changes}, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_every_message_on_the_broker_matches_its_catalogue_entry(
    system: EmbeddedSystem, gateway: httpx.Client
) -> None:
    place(gateway)
    place(gateway, card=DECLINED_CARD)
    place(gateway, items=[{"sku": "shirt", "qty": 7}])  # 6 on the shelf
    assert system.wait_until(system.settled, 20)
    specs = {spec.type: spec for spec in catalogue()}
    seen: set[str] = set()
    for topic in system.broker.topics():
        if topic.endswith(DLQ_SUFFIX):
            continue
        for raw in system.broker.records(topic):
            message = decode_message(raw)
            spec = specs[message.type]
            assert topic == spec.topic, message
            assert system.env.producers[message.id] == spec.producer, message
            TypeAdapter(spec.payload).validate_python(message.payload)
            seen.add(message.type)
        for spec in specs.values():  # every declared consumer did read its topic
            if spec.topic == topic:
                assert all(system.broker.pending(c, topic) == 0 for c in spec.consumers)
    assert seen == set(specs)  # the run exercised every event type
    assert system.invariants() == []


def test_the_catalogue_names_producers_and_consumers_from_the_wiring() -> None:
    wiring = {spec.type: (spec.topic, spec.producer, spec.consumers) for spec in catalogue()}
    assert wiring == {
        "order.created": ("order", "orders", ("stock",)),
        "order.payment_requested": ("order", "orders", ("payments",)),
        "order.confirmed": ("order", "orders", ("invoices",)),
        "order.cancelled": ("order", "orders", ("stock", "payments")),
        "stock.reserved": ("stock", "stock", ("orders",)),
        "stock.unavailable": ("stock", "stock", ("orders",)),
        "payment.succeeded": ("payment", "payments", ("orders",)),
        "payment.failed": ("payment", "payments", ("orders",)),
        "invoice.issued": ("invoice", "invoices", ("email",)),
    }
    page = render_catalogue(catalogue())
    assert "| `charge_id` | string | yes | The Stripe charge id. |" in page
    assert "`Item`:" in page  # nested models are described too


def test_a_garbage_payload_is_dead_lettered_with_a_typed_error(
    system: EmbeddedSystem, gateway: httpx.Client
) -> None:
    publisher = system.broker.publisher()
    publisher.publish([Message("order.confirmed", {"order_id": "o-1", "zip": 5}, key="o-1")])
    system.broker.publish_raw("invoice", RawMessage(key=b"o-2", value=b"\xff not json"))
    assert system.wait_until(lambda: len(system.broker.dead_letters("order")) == 1, 10)
    assert system.wait_until(lambda: len(system.broker.dead_letters("invoice")) == 1, 10)
    reason = dict(system.broker.dead_letters("order")[0].headers)[DLQ_REASON].decode()
    assert "InvalidEventError" in reason
    assert "customer: Field required" in reason
    assert "zip: Input should be a valid string" in reason
    # Only invoices handles order.confirmed; stock and payments skipped it. Nothing was issued,
    # and the system goes on.
    assert system.invoices.numbers() == []
    place(gateway)
    assert system.wait_until(system.settled, 15)
    assert system.invoices.numbers() == [1]
    assert system.invariants() == []


def test_a_service_cannot_emit_what_it_does_not_declare(system: EmbeddedSystem) -> None:
    issued = InvoiceIssued(order_id="o-1", number=1, customer="x@y.z", total_cents=1)
    with pytest.raises(TypeError, match=r"stock does not declare invoice\.issued"):
        system.stock.outgoing(issued)
    assert system.stock.outgoing(StockReserved(order_id="o-1")).key == "o-1"
