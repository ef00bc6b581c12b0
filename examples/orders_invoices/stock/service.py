"""The stock service: its tables, HTTP API and event handlers (see the package docstring)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from examples.orders_invoices._environment import Environment
from examples.orders_invoices._service import Service, handles
from examples.orders_invoices.domain import INITIAL_STOCK, Item
from examples.orders_invoices.events import (
    OrderCancelled,
    OrderCreated,
    StockReserved,
    StockUnavailable,
)
from resilience.messaging import Message


class StockService(Service):
    """The stock service; *initial* is what the shelves hold on first start."""

    name = "stock"
    emits = (StockReserved, StockUnavailable)

    def __init__(self, env: Environment, *, initial: Mapping[str, int] = INITIAL_STOCK) -> None:
        super().__init__(env)
        self.initial = dict(initial)
        self.stock = sa.Table(
            "stock",
            self.metadata,
            sa.Column("sku", sa.String(40), primary_key=True),
            sa.Column("available", sa.Integer, nullable=False),
            sa.CheckConstraint("available >= 0", name="stock_not_negative"),
        )
        self.reservations = sa.Table(
            "reservations",
            self.metadata,
            sa.Column("order_id", sa.String(40), primary_key=True),
            sa.Column("items", sa.Text, nullable=False),
            sa.Column("status", sa.String(20), nullable=False),
        )
        self.app.get("/stock")(self.levels)

    def setup(self) -> None:
        super().setup()
        with self.engine.begin() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(self.stock)).scalar_one() == 0:
                conn.execute(
                    self.stock.insert(),
                    [{"sku": s, "available": n} for s, n in self.initial.items()],
                )

    def levels(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            available = dict(
                conn.execute(sa.select(self.stock.c.sku, self.stock.c.available)).all()
            )
            reserved: dict[str, int] = {}
            rows = conn.execute(
                sa.select(self.reservations.c["items"]).where(
                    self.reservations.c.status == "reserved"
                )
            ).scalars()
            for items in rows:
                for line in json.loads(items):
                    reserved[line["sku"]] = reserved.get(line["sku"], 0) + line["qty"]
        return {"available": available, "reserved": reserved}

    @handles(OrderCreated)
    def _on_created(self, message: Message, event: OrderCreated) -> None:
        self.once(message, lambda session: self._reserve(session, event.order_id, event.items))

    @handles(OrderCancelled)
    def _on_cancelled(self, message: Message, event: OrderCancelled) -> None:
        self.once(message, lambda session: self._release(session, event.order_id))

    def _reserve(self, session: Session, order_id: str, items: list[Item]) -> None:
        wanted: dict[str, int] = {}
        for line in items:
            wanted[line.sku] = wanted.get(line.sku, 0) + line.qty
        short = []
        for sku, qty in wanted.items():
            available = session.execute(
                sa.select(self.stock.c.available).where(self.stock.c.sku == sku)
            ).scalar()
            if available is None or available < qty:
                short.append(sku)
        if short:
            self.emit(session, StockUnavailable(order_id=order_id, skus=short))
            return
        for sku, qty in wanted.items():
            session.execute(
                self.stock.update()
                .where(self.stock.c.sku == sku)
                .values(available=self.stock.c.available - qty)
            )
        session.execute(
            self.reservations.insert().values(
                order_id=order_id,
                items=json.dumps([line.model_dump() for line in items]),
                status="reserved",
            )
        )
        self.emit(session, StockReserved(order_id=order_id))

    def _release(self, session: Session, order_id: str) -> None:
        released = session.execute(
            self.reservations.update()
            .where(
                self.reservations.c.order_id == order_id, self.reservations.c.status == "reserved"
            )
            .values(status="released")
        )
        if released.rowcount != 1:  # type: ignore[attr-defined]
            return
        items = session.execute(
            sa.select(self.reservations.c["items"]).where(self.reservations.c.order_id == order_id)
        ).scalar_one()
        for line in json.loads(items):
            session.execute(
                self.stock.update()
                .where(self.stock.c.sku == line["sku"])
                .values(available=self.stock.c.available + int(line["qty"]))
            )
