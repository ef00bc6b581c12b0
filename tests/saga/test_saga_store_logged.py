"""A step claim, a compensation mark and a state move write their log line with them.

PostgreSQL does it in one statement (a CTE feeding ``INSERT INTO log ... SELECT``),
SQLite in two: both must log exactly when the change happened, never otherwise.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

from resilience import ConcurrentSagaUpdateError
from resilience.saga import SagaInstance, SagaStore
from resilience.saga._store import LogLine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Any:
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_schema")("store")
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


def _store(engine: sa.Engine) -> SagaStore:
    store = SagaStore(sa.MetaData())
    store.create_tables(engine)
    return store


def _history(store: SagaStore, engine: sa.Engine, saga_id: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        entries = store.history(conn, saga_id)
    fields = ("participant", "event_type", "message_id", "from_state", "to_state", "outcome")
    return [tuple(getattr(e, f) for f in (*fields, "detail")) for e in entries]


def test_step_records_log_only_when_they_change(engine: sa.Engine) -> None:
    store = _store(engine)
    reserve = LogLine("order.created", "accepted", "m1", to_state="reserve:done")
    compensated = LogLine("order.cancelled", "accepted", "m2", to_state="reserve:compensated")
    with engine.begin() as conn:
        assert store.claim_step(conn, "stock", "o1", "reserve", "done", log=reserve) is None
        # Seen before: the existing status comes back and nothing is logged.
        assert store.claim_step(conn, "stock", "o1", "reserve", "aborted", log=reserve) == "done"
        wrong = LogLine("order.cancelled", "accepted", "m3", to_state="x")
        assert not store.mark_step(
            conn, "stock", "o1", "reserve", expected="aborted", status="compensated", log=wrong
        )
        assert store.mark_step(
            conn, "stock", "o1", "reserve", expected="done", status="compensated", log=compensated
        )
        assert store.step_status(conn, "stock", "o1", "reserve") == "compensated"
        # Without a line, nothing is logged (the caller logs itself).
        assert store.claim_step(conn, "stock", "o1", "refund", "aborted") is None
        long = LogLine("order.cancelled", "aborted", None, detail="d" * 5000)
        assert store.claim_step(conn, "stock", "o2", "reserve", "aborted", log=long) is None
    assert _history(store, engine, "o1") == [
        ("stock", "order.created", "m1", None, "reserve:done", "accepted", None),
        ("stock", "order.cancelled", "m2", None, "reserve:compensated", "accepted", None),
    ]
    [line] = _history(store, engine, "o2")
    assert line[-1] == "d" * 2000  # truncated like every other log detail


def test_a_stale_move_raises_and_logs_nothing(
    engine: sa.Engine, order_saga: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(engine)
    definition = order_saga.ORDER_SAGA
    with engine.begin() as conn:
        store.create(conn, definition, "o1", participant="orders")
        moved = store.apply(conn, definition, "o1", "stock.reserved", participant="orders")
        assert (moved.to_state, moved.version) == ("stock_reserved", 2)
    # Another transaction moved the saga after this one read it: version 1 is stale.
    real_get = SagaStore.get

    def stale(self: SagaStore, conn: Any, saga_id: str) -> SagaInstance | None:
        instance = real_get(self, conn, saga_id)
        assert instance is not None
        return SagaInstance(
            saga_id,
            instance.definition,
            "pending",
            1,
            None,
            instance.created_at,
            instance.created_at,
        )

    monkeypatch.setattr(SagaStore, "get", stale)
    with engine.begin() as conn:
        with pytest.raises(ConcurrentSagaUpdateError, match="read version 1"):
            store.apply(conn, definition, "o1", "payment.approved", participant="orders")
        # Same transaction, after the refusal: no log line, state untouched.
        assert len(store.history(conn, "o1")) == 2
        saga = real_get(store, conn, "o1")
        assert saga is not None
        assert (saga.state, saga.version) == ("stock_reserved", 2)
    monkeypatch.undo()
    with engine.begin() as conn:
        done = store.apply(
            conn, definition, "o1", "payment.approved", participant="orders", message_id="m9"
        )
        assert (done.from_state, done.to_state, done.version) == ("stock_reserved", "confirmed", 3)
    assert _history(store, engine, "o1")[1:] == [
        ("orders", "stock.reserved", None, "pending", "stock_reserved", "accepted", None),
        ("orders", "payment.approved", "m9", "stock_reserved", "confirmed", "accepted", None),
    ]
