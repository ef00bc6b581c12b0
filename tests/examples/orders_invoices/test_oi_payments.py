"""Payments: no double charge when our database dies after Stripe answered; saga timeouts refund."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from examples.orders_invoices.embedded import EmbeddedSystem

ORDER = {"customer": "bia@shop.example", "zip": "30130-010", "items": [{"sku": "mug", "qty": 3}]}


def post(gateway: httpx.Client) -> str:
    response = gateway.post("/orders", json=ORDER, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_crash_after_stripe_charged_never_charges_twice(
    system: EmbeddedSystem, gateway: httpx.Client
) -> None:
    system.payments.crash_after_charge = 3  # three deliveries in a row die after the charge
    order_id = post(gateway)
    assert system.wait_until(system.settled, 20)
    assert system.payments.crashes == 3
    key = f"charge-{order_id}"
    assert [k for op, k in system.stripe.requests if op == "charges"] == [key] * 4
    charges = [c for c in system.stripe.charges.values() if c.order_id == order_id]
    assert len(charges) == 1
    assert charges[0].amount == 3 * 2_500
    payment = gateway.get(f"/bff/orders/{order_id}").json()["payment"]
    assert payment == {
        "order_id": order_id,
        "charge_id": charges[0].id,
        "amount_cents": 7_500,
        "status": "charged",
    }
    assert system.invariants() == []


def test_redelivered_messages_change_nothing(system: EmbeddedSystem, gateway: httpx.Client) -> None:
    system.broker.duplicate_publishes(times=100)  # every event is stored twice (producer retry)
    system.broker.duplicate_deliveries(times=100)  # and every record handed out twice (lost ack)
    ids = [post(gateway) for _ in range(4)]
    assert system.wait_until(system.settled, 20)
    assert system.orders.counts() == {"confirmed": 4}
    assert sorted(c.order_id for c in system.stripe.active_charges()) == sorted(ids)
    assert system.invoices.numbers() == [1, 2, 3, 4]
    assert len(system.smtp.messages) == 4
    assert system.invariants() == []


def test_saga_timeout_cancels_releases_stock_and_refunds_a_late_charge(tmp_path: Path) -> None:
    with (
        EmbeddedSystem(tmp_path, saga_timeout=3.0) as system,
        httpx.Client(base_url=system.gateway.url, timeout=10) as gateway,
    ):
        system.payments.stop()  # the charge cannot happen in time
        order_id = post(gateway)
        assert system.wait_until(
            lambda: system.orders.get_order(order_id)["status"] == "reserved", 10
        )
        assert system.wait_until(
            lambda: system.orders.get_order(order_id)["status"] == "cancelled", 10
        )
        assert system.orders.get_order(order_id)["reason"] == "timeout"
        assert system.wait_until(lambda: system.stock.levels()["reserved"] == {}, 10)
        assert system.stock.levels()["available"]["mug"] == 40
        system.payments.start()  # it now sees payment_requested, then order.cancelled
        assert system.wait_until(system.settled, 15)
        assert system.wait_until(lambda: system.stripe.refunds() == 1, 10)
        assert len(system.stripe.charges) == 1
        assert system.stripe.active_charges() == []
        assert system.invoices.numbers() == []
        assert system.invariants() == []
