"""The shop's vocabulary: catalog, order statuses, events and request bodies.

Every service imports its event names from here, so a typo is an
``AttributeError`` at import time, not a message nobody consumes.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

CATALOG: dict[str, int] = {
    "book": 4_990,
    "mug": 2_500,
    "poster": 1_990,
    "shirt": 7_900,
}
"""Price in cents per SKU. Money is always integer cents, never a float."""

INITIAL_STOCK: dict[str, int] = {"book": 40, "mug": 40, "poster": 40, "shirt": 6}
"""Units on hand when the stock service starts (shirts run out on purpose)."""

DECLINED_CARD = "tok_chargeDeclined"
"""The fake Stripe declines this card, as Stripe's test token of the same name."""


class OrderStatus(StrEnum):
    """Where an order is in its saga. ``confirmed`` and ``cancelled`` are final."""

    PENDING = "pending"
    RESERVED = "reserved"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({OrderStatus.CONFIRMED, OrderStatus.CANCELLED})


class Events:
    """Event types. The part before the dot is the topic (``TopicRouter`` default),
    so all events of one order share the ``order`` topic and keep their order."""

    ORDER_CREATED = "order.created"
    ORDER_PAYMENT_REQUESTED = "order.payment_requested"
    ORDER_CONFIRMED = "order.confirmed"
    ORDER_CANCELLED = "order.cancelled"
    STOCK_RESERVED = "stock.reserved"
    STOCK_UNAVAILABLE = "stock.unavailable"
    PAYMENT_SUCCEEDED = "payment.succeeded"
    PAYMENT_FAILED = "payment.failed"
    INVOICE_ISSUED = "invoice.issued"


class Item(BaseModel):
    """One line of an order."""

    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9-]+$")
    qty: int = Field(ge=1, le=100)


class CreateOrder(BaseModel):
    """The body of ``POST /orders``."""

    model_config = ConfigDict(extra="forbid")

    customer: str = Field(min_length=1, max_length=200, pattern=r"^[^@\s]+@[^@\s]+$")
    zip: str = Field(pattern=r"^\d{5}-?\d{3}$")
    card: str = Field(default="tok_visa", min_length=1, max_length=60)
    items: list[Item] = Field(min_length=1, max_length=20)


def order_total(items: list[Item]) -> int:
    """Total in cents; raises KeyError naming the first unknown SKU."""
    return sum(CATALOG[item.sku] * item.qty for item in items)
