"""The orders service: its tables, HTTP API and saga handlers (see the package docstring)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Header

from examples.orders_invoices._environment import Environment
from examples.orders_invoices._infra import ProblemError, Worker
from examples.orders_invoices._service import Service, handles
from examples.orders_invoices.domain import CATALOG, CreateOrder, OrderStatus
from examples.orders_invoices.events import (
    CancelReason,
    Event,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderPaymentRequested,
    PaymentFailed,
    PaymentSucceeded,
    StockReserved,
    StockUnavailable,
)
from resilience.messaging import Message
from resilience.saga import (
    DEFAULT_TIMEOUT_EVENT,
    SagaDefinition,
    SagaParticipant,
    SagaStore,
    SagaTimerScheduler,
    StepContext,
)

_P, _R = OrderStatus.PENDING.value, OrderStatus.RESERVED.value
_C, _X = OrderStatus.CONFIRMED.value, OrderStatus.CANCELLED.value

ORDER_SAGA = SagaDefinition(
    "order",
    states={_P, _R, _C, _X},
    initial=_P,
    transitions={
        (_P, StockReserved.type): _R,
        (_P, StockUnavailable.type): _X,
        (_P, DEFAULT_TIMEOUT_EVENT): _X,
        (_R, PaymentSucceeded.type): _C,
        (_R, PaymentFailed.type): _X,
        (_R, DEFAULT_TIMEOUT_EVENT): _X,
        # Late answers to a cancelled order are accepted and change nothing:
        # stock and payments undo their own step when they see order.cancelled.
        (_X, StockReserved.type): _X,
        (_X, StockUnavailable.type): _X,
        (_X, PaymentSucceeded.type): _X,
        (_X, PaymentFailed.type): _X,
    },
    terminal={_C, _X},
)
"""The order saga: which event moves an order from which status to which."""

ORDER_KEYS = uuid.UUID("6f1d2c3a-4b5e-5f60-8a71-92b3c4d5e6f7")
"""Namespace of the order ids derived from ``Idempotency-Key`` (uuid5)."""

CANCEL_REASONS: dict[str, CancelReason] = {
    StockUnavailable.type: "out_of_stock",
    PaymentFailed.type: "payment_failed",
    DEFAULT_TIMEOUT_EVENT: "timeout",
}


class OrdersService(Service):
    """The orders service (see the module docstring for the saga)."""

    name = "orders"
    emits = (OrderCreated, OrderPaymentRequested, OrderConfirmed, OrderCancelled)

    def __init__(self, env: Environment, *, saga_timeout: float = 20.0) -> None:
        super().__init__(env)
        self.saga_timeout = saga_timeout
        self.orders = sa.Table(
            "orders",
            self.metadata,
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("customer", sa.String(200), nullable=False),
            sa.Column("zip", sa.String(9), nullable=False),
            sa.Column("card", sa.String(60), nullable=False),
            sa.Column("items", sa.Text, nullable=False),
            sa.Column("total_cents", sa.Integer, nullable=False),
            sa.Column("status", sa.String(20), nullable=False, index=True),
            sa.Column("reason", sa.String(40), nullable=True),
            sa.Column("charge_id", sa.String(60), nullable=True),
            sa.Column("created_at", sa.Float, nullable=False),
        )
        self.app.post("/orders", status_code=201)(self.create_order)
        self.app.get("/orders/{order_id}")(self.get_order)
        self.app.get("/orders")(self.list_orders)
        self.saga = SagaParticipant(
            "orders",
            sessionmaker=self.sessions,
            outbox=self.outbox,
            inbox=self.inbox,
            definition=ORDER_SAGA,
            store=SagaStore(self.metadata),
        )
        self.saga.entered(OrderStatus.RESERVED.value)(self._on_reserved)
        self.saga.entered(OrderStatus.CONFIRMED.value)(self._on_confirmed)
        self.saga.entered(OrderStatus.CANCELLED.value)(self._on_cancelled)
        timers = SagaTimerScheduler(self.saga, interval=0.2)
        self.workers.append(Worker("orders-saga-timers", timers.run))

    # ------------------------------------------------------------------ HTTP

    def create_order(
        self,
        body: CreateOrder,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> dict[str, Any]:
        """Create a pending order and start its saga.

        With an ``Idempotency-Key`` the order id is derived from it, so a repeat
        (the gateway retrying after a timeout, when the first attempt did commit)
        hits the primary key and gets the existing order back: the check and the
        creation are one insert, with no window between them.
        """
        unknown = sorted({item.sku for item in body.items} - CATALOG.keys())
        if unknown:
            raise ProblemError(422, "Unknown product", f"not in the catalog: {', '.join(unknown)}")
        order_id = (
            str(uuid.uuid5(ORDER_KEYS, idempotency_key)) if idempotency_key else str(uuid.uuid4())
        )
        items = [item.model_dump() for item in body.items]
        total = sum(CATALOG[item.sku] * item.qty for item in body.items)
        row = {
            "id": order_id,
            "customer": body.customer,
            "zip": body.zip,
            "card": body.card,
            "items": json.dumps(items),
            "total_cents": total,
            "status": OrderStatus.PENDING.value,
            "created_at": time.time(),
        }
        created = self.outgoing(
            OrderCreated(order_id=order_id, items=body.items, total_cents=total)
        )
        try:
            with self.sessions.begin() as session:
                session.execute(self.orders.insert().values(row))
                # The saga row (the semantic lock), its deadline timer and order.created: one commit.
                self.saga.start(session, order_id, timeout=self.saga_timeout, emit=created)
        except sa.exc.IntegrityError:
            if not idempotency_key:
                raise
            return self._existing(order_id, row)
        return self._public(row)

    def _existing(self, order_id: str, wanted: dict[str, Any]) -> dict[str, Any]:
        """The order an earlier request with the same key created, if it asked for the same."""
        with self.engine.connect() as conn:
            found = conn.execute(self.orders.select().where(self.orders.c.id == order_id)).first()
        if found is None:  # the conflict was not on this order's id
            raise ProblemError(409, "Conflict", f"order {order_id} could not be created")
        existing = dict(found._mapping)
        same = ("customer", "zip", "card", "items", "total_cents")
        if any(existing[field] != wanted[field] for field in same):
            raise ProblemError(
                422, "Idempotency-Key reused", "this key created an order with other contents"
            )
        return self._public(existing)

    def get_order(self, order_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(self.orders.select().where(self.orders.c.id == order_id)).first()
        if row is None:
            raise ProblemError(404, "Order not found", f"no order {order_id}")
        return self._public(dict(row._mapping))

    def list_orders(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(self.orders.select().order_by(self.orders.c.created_at)).all()
        return [self._public(dict(r._mapping)) for r in rows]

    @staticmethod
    def _public(row: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k != "card"}
        out["items"] = json.loads(row["items"]) if isinstance(row["items"], str) else row["items"]
        return out

    # ------------------------------------------------------------------ saga

    @handles(StockReserved, StockUnavailable, PaymentSucceeded, PaymentFailed)
    def _on_answer(self, message: Message, event: Event) -> None:
        self.saga.handle(message)

    def _emit_step(self, ctx: StepContext, event: Event) -> None:
        message = self.outgoing(event)
        ctx.emit(message.type, message.payload, key=message.key)

    def _set_status(self, ctx: StepContext, status: OrderStatus, **values: Any) -> dict[str, Any]:
        ctx.session.execute(
            self.orders.update()
            .where(self.orders.c.id == ctx.saga_id)
            .values(status=status.value, **values)
        )
        row = ctx.session.execute(self.orders.select().where(self.orders.c.id == ctx.saga_id)).one()
        return dict(row._mapping)

    def _on_reserved(self, ctx: StepContext) -> None:
        row = self._set_status(ctx, OrderStatus.RESERVED)
        self._emit_step(
            ctx,
            OrderPaymentRequested(
                order_id=ctx.saga_id, amount_cents=row["total_cents"], card=row["card"]
            ),
        )

    def _on_confirmed(self, ctx: StepContext) -> None:
        charge_id = str(ctx.payload["charge_id"])
        row = self._set_status(ctx, OrderStatus.CONFIRMED, charge_id=charge_id)
        self._emit_step(
            ctx,
            OrderConfirmed(
                order_id=ctx.saga_id,
                customer=row["customer"],
                zip=row["zip"],
                items=json.loads(row["items"]),
                total_cents=row["total_cents"],
                charge_id=charge_id,
            ),
        )

    def _on_cancelled(self, ctx: StepContext) -> None:
        reason = CANCEL_REASONS[ctx.message.type]
        self._set_status(ctx, OrderStatus.CANCELLED, reason=reason)
        self._emit_step(ctx, OrderCancelled(order_id=ctx.saga_id, reason=reason))

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(self.orders.c.status, sa.func.count()).group_by(self.orders.c.status)
            ).all()
        return {str(status): int(n) for status, n in rows}
