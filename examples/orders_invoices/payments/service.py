"""The payments service: its tables, HTTP API and event handlers (see the package docstring)."""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa

from examples.orders_invoices._environment import Environment
from examples.orders_invoices._infra import ProblemError, http_client
from examples.orders_invoices._service import Service, handles
from examples.orders_invoices.events import (
    OrderCancelled,
    OrderPaymentRequested,
    PaymentFailed,
    PaymentSucceeded,
)
from resilience.idempotency import SqlStore, current_idempotency, idempotency_table, idempotent
from resilience.messaging import Message
from resilience.policies import CircuitBreaker, CircuitBreakerConfig, Pipeline, Retry


class StripeUnavailableError(Exception):
    """Stripe answered 5xx or 429: safe to retry, our Idempotency-Key makes it so."""


class PaymentsDatabaseDownError(Exception):
    """The injected fault: our database went away right after Stripe answered."""


class PaymentsService(Service):
    """The payments service."""

    name = "payments"
    emits = (PaymentSucceeded, PaymentFailed)

    def __init__(self, env: Environment, stripe_url: str, *, crash_after_charge: int = 0) -> None:
        super().__init__(env)
        self.crash_after_charge = crash_after_charge
        """How many upcoming charges fail after Stripe answered (the double-charge scenario)."""
        self.crashes = 0
        self.payments = sa.Table(
            "payments",
            self.metadata,
            sa.Column("order_id", sa.String(40), primary_key=True),
            sa.Column("charge_id", sa.String(60), nullable=True),
            sa.Column("amount_cents", sa.Integer, nullable=False),
            sa.Column("status", sa.String(20), nullable=False),
        )
        self.store = SqlStore(self.engine, idempotency_table(self.metadata))
        self.charge = idempotent(self.store, key="order_id", namespace="payments.charge")(
            self._charge
        )
        self.stripe = http_client(stripe_url, timeout=2.0)
        self.clients.append(self.stripe)
        self.stripe_policy = Pipeline(
            Retry(
                on=(httpx.TransportError, StripeUnavailableError),
                attempts=4,
                wait_initial=0.05,
                name="stripe",
            ),
            CircuitBreaker(
                "stripe", CircuitBreakerConfig(minimum_calls=10, window_size=20, open_duration=2.0)
            ),
            name="stripe",
        )
        self.app.get("/payments/{order_id}")(self.get_payment)

    def get_payment(self, order_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(
                self.payments.select().where(self.payments.c.order_id == order_id)
            ).first()
        if row is None:
            raise ProblemError(404, "Payment not found", f"no payment for order {order_id}")
        return dict(row._mapping)

    @handles(OrderPaymentRequested)
    def _on_payment_requested(self, message: Message, event: OrderPaymentRequested) -> None:
        self.charge(order_id=event.order_id, amount_cents=event.amount_cents, card=event.card)

    @handles(OrderCancelled)
    def _on_cancelled(self, message: Message, event: OrderCancelled) -> None:
        self.refund(event.order_id)

    def _stripe(self, path: str, data: dict[str, str], key: str) -> httpx.Response:
        def post() -> httpx.Response:
            response = self.stripe.post(path, data=data, headers={"Idempotency-Key": key})
            if response.status_code >= 500 or response.status_code == 429:
                raise StripeUnavailableError(f"stripe answered {response.status_code}")
            return response

        result: httpx.Response = self.stripe_policy.call(post)
        return result

    def _charge(self, order_id: str, amount_cents: int, card: str) -> dict[str, Any]:
        ctx = current_idempotency()
        outcome: dict[str, Any] | None = ctx.get("stripe")
        if outcome is None:
            response = self._stripe(
                "/v1/charges",
                {
                    "amount": str(amount_cents),
                    "currency": "brl",
                    "source": card,
                    "metadata[order_id]": order_id,
                },
                key=f"charge-{order_id}",
            )
            if response.status_code == 200:
                outcome = {"status": "charged", "charge_id": response.json()["id"]}
            elif response.status_code == 402:
                outcome = {
                    "status": "failed",
                    "charge_id": None,
                    "code": response.json()["error"]["code"],
                }
            else:
                raise RuntimeError(f"unexpected Stripe answer {response.status_code}")
            if self.crash_after_charge > 0:
                self.crash_after_charge -= 1
                self.crashes += 1
                raise PaymentsDatabaseDownError("payments database unreachable after the charge")
            ctx.checkpoint("stripe", outcome)
        with self.sessions.begin() as session:
            exists = session.execute(
                sa.select(self.payments.c.order_id).where(self.payments.c.order_id == order_id)
            ).first()
            if exists is None:
                session.execute(
                    self.payments.insert().values(
                        order_id=order_id,
                        charge_id=outcome["charge_id"],
                        amount_cents=amount_cents,
                        status=outcome["status"],
                    )
                )
                if outcome["status"] == "charged":
                    self.emit(
                        session, PaymentSucceeded(order_id=order_id, charge_id=outcome["charge_id"])
                    )
                else:
                    self.emit(
                        session, PaymentFailed(order_id=order_id, code=outcome.get("code", ""))
                    )
        return outcome

    def refund(self, order_id: str) -> bool:
        """Refund the order's charge if there is one; True if money went back."""
        with self.engine.connect() as conn:
            row = conn.execute(
                self.payments.select().where(self.payments.c.order_id == order_id)
            ).first()
        if row is None or row.status != "charged":
            return False
        response = self._stripe(
            "/v1/refunds", {"charge": str(row.charge_id)}, key=f"refund-{order_id}"
        )
        already = response.status_code == 400 and "already_refunded" in response.text
        if response.status_code != 200 and not already:
            raise RuntimeError(f"refund failed: {response.status_code} {response.text}")
        with self.sessions.begin() as session:
            session.execute(
                self.payments.update()
                .where(self.payments.c.order_id == order_id, self.payments.c.status == "charged")
                .values(status="refunded")
            )
        return True
