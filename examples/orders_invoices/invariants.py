"""What must hold whatever failed: checked on a snapshot of the whole system.

The embedded system takes its snapshot from the service objects; a deployed
system is read over HTTP (and the orders database for saga states) by
`read_deployed`. The check itself is one function for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from examples.orders_invoices.domain import FINAL_STATUSES, OrderStatus
from resilience.saga import SagaStore


@dataclass(frozen=True)
class Snapshot:
    """The facts the invariants are about, as the services and the fakes report them."""

    orders: list[dict[str, Any]]
    """Every order: ``id``, ``status``, ``items``."""
    sagas: dict[str, str]
    """Saga id (= order id) -> saga state."""
    charged: list[str]
    """Order ids of the charges Stripe kept (not refunded)."""
    invoices: list[dict[str, Any]]
    """Every invoice: ``number``, ``order_id``, in number order."""
    mails: list[str]
    """``Message-ID`` of every mail the SMTP sink received."""
    stock: dict[str, dict[str, int]]
    """``{"available": {sku: n}, "reserved": {sku: n}}``."""
    initial_stock: Mapping[str, int]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for order in self.orders:
            out[order["status"]] = out.get(order["status"], 0) + 1
        return out


def broken_invariants(snap: Snapshot) -> list[str]:
    """The broken invariants, as sentences (empty when all hold)."""
    broken: list[str] = []
    orders = snap.orders
    confirmed = {o["id"] for o in orders if o["status"] == OrderStatus.CONFIRMED.value}
    not_final = [o["id"] for o in orders if OrderStatus(o["status"]) not in FINAL_STATUSES]
    if not_final:
        broken.append(f"{len(not_final)} orders are neither confirmed nor cancelled")
    if snap.sagas != {o["id"]: o["status"] for o in orders}:
        broken.append("order statuses disagree with their saga states")
    if sorted(snap.charged) != sorted(confirmed):
        broken.append(
            f"Stripe holds {len(snap.charged)} charges for {len(confirmed)} confirmed orders"
        )
    invoices = snap.invoices
    if sorted(i["order_id"] for i in invoices) != sorted(confirmed):
        broken.append(f"{len(invoices)} invoices for {len(confirmed)} confirmed orders")
    numbers = [i["number"] for i in invoices]
    if numbers != list(range(1, len(numbers) + 1)):
        broken.append(f"invoice numbers are not 1..{len(numbers)} without gaps: {numbers}")
    expected = sorted(f"<invoice-{n}@shop.example>" for n in numbers)
    if sorted(snap.mails) != expected:
        broken.append(f"{len(snap.mails)} emails for {len(numbers)} invoices")
    by_order = {o["id"]: o for o in orders}
    held: dict[str, int] = {}
    for order_id in confirmed:
        for line in by_order[order_id]["items"]:
            held[line["sku"]] = held.get(line["sku"], 0) + int(line["qty"])
    for sku, initial in snap.initial_stock.items():
        available = snap.stock["available"].get(sku, 0)
        reserved = snap.stock["reserved"].get(sku, 0)
        if available + reserved != initial or reserved != held.get(sku, 0):
            broken.append(
                f"stock of {sku}: {available} available + {reserved} reserved, started with "
                f"{initial}, confirmed orders hold {held.get(sku, 0)}"
            )
    return broken


def saga_states(engine: sa.Engine) -> dict[str, str]:
    """Saga id -> state, from the orders database."""
    instances = SagaStore(sa.MetaData()).tables.instances
    with engine.connect() as conn:
        rows = conn.execute(sa.select(instances.c.saga_id, instances.c.state)).all()
    return {str(saga_id): str(state) for saga_id, state in rows}


def read_deployed(
    addresses: Mapping[str, str], orders_db: sa.Engine, initial_stock: Mapping[str, int]
) -> Snapshot:
    """A snapshot of a system started by ``up``: its HTTP APIs plus the orders database."""
    with httpx.Client(timeout=10) as http:

        def get(peer: str, path: str) -> Any:
            response = http.get(addresses[peer] + path)
            response.raise_for_status()
            return response.json()

        charges = get("stripe", "/v1/charges")["data"]
        return Snapshot(
            orders=get("orders", "/orders"),
            sagas=saga_states(orders_db),
            charged=[c["metadata"]["order_id"] for c in charges if not c["refunded"]],
            invoices=get("invoices", "/invoices"),
            mails=[m["message_id"] for m in get("mailbox", "/messages")],
            stock=get("stock", "/stock"),
            initial_stock=initial_stock,
        )
