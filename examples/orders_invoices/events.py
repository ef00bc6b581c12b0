"""Every event the services exchange, as a typed payload model.

Producers build these models and send ``event.message()``; consumers turn a
received `Message` back into its model with `parse_event`, so a payload that
does not match its schema fails with `InvalidEventError` (which the consumer
dead-letters at once: retrying cannot fix it) instead of a ``KeyError`` deep in
a handler. Consumers read tolerantly: unknown fields are ignored, so a producer
may add one without breaking anybody. The message catalogue in the docs is
generated from these classes (see ``catalogue.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from examples.orders_invoices.domain import Item
from resilience.messaging import Message, TopicRouter

TOPIC_TEMPLATE = "{type_prefix}"
"""The part of the type before the dot is the topic: all events of one order share
``order`` and keep their order (``TopicRouter``'s default rule)."""

ROUTER = TopicRouter(default=TOPIC_TEMPLATE)


class InvalidEventError(ValueError):
    """A received message is not a valid event of its type (or of no known type)."""

    def __init__(self, message: Message, problem: str) -> None:
        super().__init__(f"{message.type} {message.id}: {problem}")
        self.message_type = message.type
        self.message_id = message.id


class Event(BaseModel):
    """Base of every event: it is about one order, whose id is the message key."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: ClassVar[str]

    order_id: str = Field(min_length=1, max_length=40, description="The order; the message key.")

    def message(self) -> Message:
        """The envelope to put in the outbox (payload as JSON-ready data)."""
        return Message(self.type, self.model_dump(mode="json"), key=self.order_id)


class OrderCreated(Event):
    """An order was accepted as `pending`; stock should reserve its items."""

    type: ClassVar[str] = "order.created"
    items: list[Item] = Field(min_length=1, description="What to reserve.")
    total_cents: int = Field(ge=0, description="Goods total in cents.")


class OrderPaymentRequested(Event):
    """Stock is reserved; payments should charge the card."""

    type: ClassVar[str] = "order.payment_requested"
    amount_cents: int = Field(ge=0, description="What to charge, in cents.")
    card: str = Field(min_length=1, description="The card token to charge.")


class OrderConfirmed(Event):
    """Stock reserved and card charged: the order is final; invoices should issue one."""

    type: ClassVar[str] = "order.confirmed"
    customer: str = Field(min_length=1, description="E-mail address the invoice goes to.")
    zip: str = Field(min_length=8, max_length=9, description="Delivery postcode (CEP).")
    items: list[Item] = Field(min_length=1, description="What was bought.")
    total_cents: int = Field(ge=0, description="Goods total in cents.")
    charge_id: str = Field(min_length=1, description="The Stripe charge that paid it.")


CancelReason = Literal["out_of_stock", "payment_failed", "timeout"]


class OrderCancelled(Event):
    """The order is final without a sale; stock releases, payments refunds what it took."""

    type: ClassVar[str] = "order.cancelled"
    reason: CancelReason = Field(description="Why it was cancelled.")


class StockReserved(Event):
    """Every line of the order is reserved."""

    type: ClassVar[str] = "stock.reserved"


class StockUnavailable(Event):
    """At least one line could not be reserved; nothing was."""

    type: ClassVar[str] = "stock.unavailable"
    skus: list[str] = Field(min_length=1, description="The products that ran short.")


class PaymentSucceeded(Event):
    """The card was charged (exactly once, whatever crashed on the way)."""

    type: ClassVar[str] = "payment.succeeded"
    charge_id: str = Field(min_length=1, description="The Stripe charge id.")


class PaymentFailed(Event):
    """The card was declined."""

    type: ClassVar[str] = "payment.failed"
    code: str = Field(description="Stripe's decline code.")


class InvoiceIssued(Event):
    """An invoice got its number; email should send it."""

    type: ClassVar[str] = "invoice.issued"
    number: int = Field(ge=1, description="Gapless invoice number.")
    customer: str = Field(min_length=1, description="Where to mail it.")
    total_cents: int = Field(ge=0, description="Goods plus shipping, in cents.")


EVENTS: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        OrderCreated,
        OrderPaymentRequested,
        OrderConfirmed,
        OrderCancelled,
        StockReserved,
        StockUnavailable,
        PaymentSucceeded,
        PaymentFailed,
        InvoiceIssued,
    )
}
"""Every event type, by its ``type`` string."""


def topic_of(event: type[Event]) -> str:
    """The (logical) topic *event* travels on."""
    return ROUTER(Message(event.type))


def parse_event(message: Message) -> Event:
    """The typed event in *message*; `InvalidEventError` if it does not validate."""
    kind = EVENTS.get(message.type)
    if kind is None:
        raise InvalidEventError(message, "unknown event type")
    try:
        return kind.model_validate(message.payload)
    except ValidationError as exc:
        raise InvalidEventError(message, _summary(exc)) from None


def _summary(exc: ValidationError) -> str:
    def one(error: Any) -> str:
        where = ".".join(str(part) for part in error["loc"]) or "payload"
        return f"{where}: {error['msg']}"

    return "; ".join(one(error) for error in exc.errors()[:5])
