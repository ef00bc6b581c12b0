"""Quickstart: a charge that runs at most once per order, whatever the retries."""

from __future__ import annotations

from dataclasses import dataclass

from resilience import IdempotencyKeyMismatchError
from resilience.idempotency import MemoryStore, idempotent

store = MemoryStore()  # RedisStore(redis.Redis()) or SqlStore(engine) in production
charges: list[str] = []


class CardDeclinedError(Exception):
    """The bank said no: final, so it is stored and replayed, never retried."""


@dataclass(frozen=True)
class Receipt:
    charge_id: str
    amount: int


@idempotent(store, key="order_id", final_errors=CardDeclinedError, ttl=24 * 3600)
def charge(order_id: str, amount: int) -> Receipt:
    charges.append(order_id)  # the side effect: in real life, a call to Stripe
    return Receipt(charge_id=f"ch_{len(charges)}", amount=amount)


first = charge("order-1", 4200)
retry = charge("order-1", 4200)  # redelivered message, client retry, double click…
assert first == retry == Receipt("ch_1", 4200)  # replayed, typed from the return annotation
assert charges == ["order-1"]  # the customer was charged once

try:
    charge("order-1", 9900)  # same key, different payload: refused, nothing runs
except IdempotencyKeyMismatchError as exc:
    print("refused:", exc)
