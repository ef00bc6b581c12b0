"""Rows whose ids leave the process (outbox positions, saga timer ids) must never
get an id that a deleted row had: SQLite reuses the largest rowid unless the
table says AUTOINCREMENT.

Outbox: a relay that lost its lease records its batch by position; a reused
position would make it delete another, unpublished event. Saga timers: a fired
timer's id becomes its inbox message id; a reused id would be dropped as a duplicate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from resilience.outbox import outbox_table
from resilience.saga import saga_tables

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _outbox_row(n: int) -> dict[str, Any]:
    return {
        "message_id": f"m-{n}",
        "type": "order.created",
        "payload": b"{}",
        "occurred_at": NOW,
        "created_at": NOW,
    }


def _timer_row(n: int) -> dict[str, Any]:
    return {
        "saga_id": f"s-{n}",
        "participant": "orders",
        "event_type": "saga.timeout",
        "fire_at": 1.0,
        "created_at": NOW,
    }


@pytest.mark.parametrize(
    ("make_table", "row"),
    [
        (outbox_table, _outbox_row),
        (lambda m: saga_tables(m).timers, _timer_row),
    ],
    ids=["outbox-position", "saga-timer-id"],
)
def test_a_deleted_rows_id_is_never_handed_out_again(
    sqlite_url: str,
    make_table: Callable[[sa.MetaData], sa.Table],
    row: Callable[[int], dict[str, Any]],
) -> None:
    engine = sa.create_engine(sqlite_url)
    metadata = sa.MetaData()
    table = make_table(metadata)
    metadata.create_all(engine)
    pk = next(iter(table.primary_key.columns))
    with engine.begin() as conn:
        first = conn.execute(table.insert().values(row(1)).returning(pk)).scalar_one()
        conn.execute(table.delete().where(pk == first))  # published / fired, then removed
        second = conn.execute(table.insert().values(row(2)).returning(pk)).scalar_one()
    engine.dispose()
    assert second > first
