"""Recovery points: a two-step checkout that resumes after a crash instead of charging again."""

from __future__ import annotations

from resilience.idempotency import MemoryStore, current_idempotency, idempotent

store = MemoryStore()
stripe_charges: list[str] = []
emails: list[str] = []
mail_server_up = False


def create_charge(order_id: str, idempotency_key: str) -> str:
    # Pass our key downstream: Stripe deduplicates too, even if our record is lost.
    stripe_charges.append(idempotency_key)
    return f"ch_{order_id}"


@idempotent(store, key="order_id")
def checkout(order_id: str) -> dict[str, str]:
    ctx = current_idempotency()
    charge_id = ctx.get("charged")  # set by an earlier attempt that got this far
    if charge_id is None:
        charge_id = create_charge(order_id, idempotency_key=ctx.key)
        ctx.checkpoint("charged", charge_id)  # one round trip, fenced by our lease
    if not mail_server_up:
        raise ConnectionError("mail server down")  # not final: the key is released
    emails.append(charge_id)
    return {"charge": charge_id, "status": "confirmed"}


try:
    checkout("o-7")
except ConnectionError:
    pass
mail_server_up = True
assert checkout("o-7") == {"charge": "ch_o-7", "status": "confirmed"}
assert len(stripe_charges) == 1  # step 1 ran once
assert emails == ["ch_o-7"]
