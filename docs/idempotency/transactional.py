"""SqlStore in your transaction: the order, its outbox event and the idempotency
record commit together or not at all."""

from __future__ import annotations

import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from resilience.idempotency import SqlStore, current_idempotency, idempotency_table, idempotent

engine = sa.create_engine(f"sqlite:///{Path(tempfile.mkdtemp()) / 'shop.db'}")
metadata = sa.MetaData()
orders = sa.Table(
    "orders", metadata, sa.Column("id", sa.String, primary_key=True), sa.Column("total", sa.Integer)
)
outbox = sa.Table(
    "outbox", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("event", sa.String)
)
store = SqlStore(engine, idempotency_table(metadata))
metadata.create_all(engine)


@idempotent(store, key="order_id")
def place_order(order_id: str, total: int) -> dict[str, object]:
    result = {"order": order_id, "total": total}
    with Session(engine) as session, session.begin():
        session.execute(orders.insert().values(id=order_id, total=total))
        session.execute(outbox.insert().values(event=f"OrderPlaced:{order_id}"))
        # Complete the key inside the same transaction: all three commit atomically.
        current_idempotency().complete(result, via=store.in_session(session))
    return result


assert place_order("o-1", 100) == place_order("o-1", 100)
with engine.connect() as conn:
    assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar() == 1
engine.dispose()
