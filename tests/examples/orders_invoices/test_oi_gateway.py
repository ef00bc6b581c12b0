"""The gateway: problem bodies for bad input, Idempotency-Key on POST /orders, the degrading BFF."""

from __future__ import annotations

import hashlib
import time
import uuid

import httpx
import pytest
from examples.orders_invoices.demo import post_order
from examples.orders_invoices.embedded import EmbeddedSystem

from resilience.idempotency import authorization_principal

ORDER = {
    "customer": "ana@shop.example",
    "zip": "01310-100",
    "items": [{"sku": "book", "qty": 2}, {"sku": "poster", "qty": 1}],
}


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**ORDER, "zip": "not-a-zip"}, "zip"),
        ({**ORDER, "customer": "no-at-sign"}, "customer"),
        ({**ORDER, "items": []}, "items"),
        ({**ORDER, "items": [{"sku": "book", "qty": 0}]}, "qty"),
        ({**ORDER, "items": [{"sku": "book", "qty": "many"}]}, "qty"),
        ({**ORDER, "total_cents": 1}, "total_cents"),
        ({"zip": "01310-100"}, "customer"),
    ],
)
def test_invalid_orders_get_a_422_problem_naming_the_field(
    shared_system: EmbeddedSystem, shared_gateway: httpx.Client, body: dict[str, object], field: str
) -> None:
    problem = assert_problem(shared_gateway.post("/orders", json=body, headers=key()), 422)
    assert any(field in error["loc"] for error in problem["errors"])  # type: ignore[attr-defined]
    assert shared_system.orders.counts() == {}


def test_garbage_bodies_and_unknown_things_get_problems(
    shared_system: EmbeddedSystem, shared_gateway: httpx.Client
) -> None:
    assert_problem(
        shared_gateway.post(
            "/orders",
            content=b"\xff{not json",
            headers={**key(), "content-type": "application/json"},
        ),
        400,
    )
    unknown = {**ORDER, "items": [{"sku": "unicorn", "qty": 1}]}
    problem = assert_problem(shared_gateway.post("/orders", json=unknown, headers=key()), 422)
    assert "unicorn" in str(problem["detail"])
    assert_problem(shared_gateway.get(f"/orders/{uuid.uuid4()}"), 404)
    assert_problem(shared_gateway.get(f"/bff/orders/{uuid.uuid4()}"), 404)
    with httpx.Client(base_url=shared_system.logistics.url) as logistics:
        assert_problem(logistics.get("/quotes", params={"zip": "x", "items": 1}), 422)
        assert_problem(logistics.get("/quotes", params={"zip": "01310-100", "items": 0}), 422)
    assert shared_system.orders.counts() == {}


def test_post_orders_requires_an_idempotency_key(
    shared_system: EmbeddedSystem, shared_gateway: httpx.Client
) -> None:
    response = shared_gateway.post("/orders", json=ORDER)
    assert response.status_code == 400
    assert shared_system.orders.counts() == {}


def test_a_retried_post_replays_the_first_order(
    system: EmbeddedSystem, gateway: httpx.Client
) -> None:
    headers = key()
    first = gateway.post("/orders", json=ORDER, headers=headers)
    assert first.status_code == 201, first.text
    # (a retry that arrives while the first request still runs gets 409: post_order waits it out)
    again = [post_order(gateway, ORDER, headers) for _ in range(3)]
    assert {r.json()["id"] for r in again} == {first.json()["id"]}
    assert all(r.status_code == 201 for r in again)
    assert all(r.headers["idempotent-replayed"] == "true" for r in again)
    reused = post_order(gateway, {**ORDER, "zip": "20040-020"}, headers)
    assert reused.status_code == 422  # same key, different request: refused, not a new order
    other = gateway.post("/orders", json=ORDER, headers=key())
    assert other.json()["id"] != first.json()["id"]
    assert system.wait_until(system.settled, 15)
    assert system.orders.counts() == {"confirmed": 2}
    assert len(system.stripe.active_charges()) == 2
    assert system.invariants() == []


def test_orders_answers_a_repeat_of_the_gateways_key_with_the_order_it_has(
    system: EmbeddedSystem, gateway: httpx.Client
) -> None:
    """The gateway timed out on an order that Orders did create, and the client retried.

    The gateway stored no answer (a 503), so the retry reaches Orders again, with
    the key the gateway derives from the client's key and principal.
    """
    headers = key()
    first = gateway.post("/orders", json=ORDER, headers=headers)
    assert first.status_code == 201, first.text
    principal = authorization_principal({"type": "http", "headers": []})
    upstream = hashlib.sha256(f"{principal}\n{headers['Idempotency-Key']}".encode()).hexdigest()
    with httpx.Client(base_url=system.orders.url, timeout=10) as orders:
        retried = orders.post("/orders", json=ORDER, headers={"Idempotency-Key": upstream})
        assert retried.status_code == 201, retried.text
        assert retried.json()["id"] == first.json()["id"]
        changed = orders.post(
            "/orders", json={**ORDER, "zip": "20040-020"}, headers={"Idempotency-Key": upstream}
        )
        assert_problem(changed, 422)
        without_key = orders.post("/orders", json=ORDER)  # direct callers may go without
        assert without_key.status_code == 201
    assert system.wait_until(system.settled, 15)
    assert system.orders.counts() == {"confirmed": 2}
    assert len(system.stripe.active_charges()) == 2


def test_bff_degrades_to_a_partial_response_when_invoices_is_down(
    system: EmbeddedSystem, gateway: httpx.Client
) -> None:
    order_id = gateway.post("/orders", json=ORDER, headers=key()).json()["id"]
    assert system.wait_until(system.settled, 15)
    full = gateway.get(f"/bff/orders/{order_id}").json()
    assert full["partial"] is False
    assert full["missing"] == []
    assert full["invoice"]["number"] == 1
    assert full["payment"]["status"] == "charged"
    assert full["delivery_estimate"]["price_cents"] > 0

    system.invoices.stop()
    down = gateway.get(f"/bff/orders/{order_id}")
    assert down.status_code == 200
    body = down.json()
    assert body["partial"] is True
    assert [m["part"] for m in body["missing"]] == ["invoice"]
    assert body["invoice"] is None
    assert body["order"]["status"] == "confirmed"
    assert body["payment"]["charge_id"] == full["payment"]["charge_id"]
    # Keep asking: the gateway's invoices breaker opens and answers without waiting.
    reasons = [
        gateway.get(f"/bff/orders/{order_id}").json()["missing"][0]["reason"] for _ in range(5)
    ]
    assert reasons[-1] == "invoices circuit_open"
    assert ("gateway-invoices", "closed", "open") in system.gateway.transitions
    problem = assert_problem(gateway.get(f"/invoices/{order_id}"), 503)
    assert problem["service"] == "invoices"
    assert problem["reason"] == "circuit_open"

    system.invoices.start()
    time.sleep(2.1)  # the breaker's open period
    assert system.wait_until(
        lambda: gateway.get(f"/bff/orders/{order_id}").json()["partial"] is False, 10
    )
