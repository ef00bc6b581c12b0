"""The invoices service: its tables, HTTP API and event handlers (see the package docstring)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session

from examples.orders_invoices._environment import Environment
from examples.orders_invoices._infra import ProblemError, http_client
from examples.orders_invoices._service import Service, handles
from examples.orders_invoices.events import InvoiceIssued, OrderConfirmed
from resilience.messaging import Message
from resilience.policies import Retry


class InvoicesService(Service):
    """The invoices service."""

    name = "invoices"
    emits = (InvoiceIssued,)

    def __init__(self, env: Environment, logistics_url: str) -> None:
        super().__init__(env)
        self.invoices = sa.Table(
            "invoices",
            self.metadata,
            sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("order_id", sa.String(40), nullable=False, unique=True),
            sa.Column("customer", sa.String(200), nullable=False),
            sa.Column("goods_cents", sa.Integer, nullable=False),
            sa.Column("shipping_cents", sa.Integer, nullable=False),
            sa.Column("shipping_source", sa.String(20), nullable=False),
            sa.Column("issued_at", sa.Float, nullable=False),
        )
        self.counters = sa.Table(
            "counters",
            self.metadata,
            sa.Column("name", sa.String(40), primary_key=True),
            sa.Column("value", sa.Integer, nullable=False),
        )
        self.logistics = http_client(logistics_url, timeout=3.0)
        self.clients.append(self.logistics)
        self.logistics_retry = Retry(
            on=httpx.TransportError, attempts=3, wait_initial=0.05, name="invoices-logistics"
        )
        self.app.get("/invoices/{order_id}")(self.get_invoice)
        self.app.get("/invoices")(self.list_invoices)

    def setup(self) -> None:
        super().setup()
        with self.engine.begin() as conn:
            if (
                conn.execute(
                    sa.select(self.counters.c.value).where(self.counters.c.name == "invoice")
                ).first()
                is None
            ):
                conn.execute(self.counters.insert().values(name="invoice", value=0))

    def get_invoice(self, order_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(
                self.invoices.select().where(self.invoices.c.order_id == order_id)
            ).first()
        if row is None:
            raise ProblemError(404, "Invoice not found", f"no invoice for order {order_id}")
        return dict(row._mapping)

    def list_invoices(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(self.invoices.select().order_by(self.invoices.c.number)).all()
        return [dict(r._mapping) for r in rows]

    @handles(OrderConfirmed)
    def _on_confirmed(self, message: Message, event: OrderConfirmed) -> None:
        items = sum(line.qty for line in event.items)
        quote = self.logistics_retry.call(self._quote, event.zip, items)
        self.once(message, lambda session: self._issue(session, event, quote))

    def _quote(self, zip_code: str, items: int) -> dict[str, Any]:
        response = self.logistics.get("/quotes", params={"zip": zip_code, "items": items})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def _issue(self, session: Session, event: OrderConfirmed, quote: dict[str, Any]) -> None:
        order_id = event.order_id
        exists = session.execute(
            sa.select(self.invoices.c.number).where(self.invoices.c.order_id == order_id)
        ).first()
        if exists is not None:
            return
        session.execute(
            self.counters.update()
            .where(self.counters.c.name == "invoice")
            .values(value=self.counters.c.value + 1)
        )
        number = session.execute(
            sa.select(self.counters.c.value).where(self.counters.c.name == "invoice")
        ).scalar_one()
        session.execute(
            self.invoices.insert().values(
                number=number,
                order_id=order_id,
                customer=event.customer,
                goods_cents=event.total_cents,
                shipping_cents=int(quote["price_cents"]),
                shipping_source=str(quote["source"]),
                issued_at=time.time(),
            )
        )
        self.emit(
            session,
            InvoiceIssued(
                order_id=order_id,
                number=number,
                customer=event.customer,
                total_cents=event.total_cents + int(quote["price_cents"]),
            ),
        )

    def numbers(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(self.invoices.c.number).order_by(self.invoices.c.number)
                ).scalars()
            )
