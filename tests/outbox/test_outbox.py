"""Writing events: they commit and roll back with the business change."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from resilience import ConfigurationError
from resilience.messaging import Message, TopicRouter
from resilience.outbox import Inbox, Outbox, ddl, outbox_table

DB = tuple[sa.Engine, Outbox, Inbox, sa.Table]


def _rows(engine: sa.Engine, outbox: Outbox) -> list[sa.Row[tuple[str, str]]]:
    t = outbox.table
    with engine.connect() as conn:
        return list(conn.execute(sa.select(t.c.message_id, t.c.type).order_by(t.c.position)))


def test_committed_business_change_has_its_event_and_rolled_back_has_none(db: DB) -> None:
    engine, outbox, _, orders = db
    kept = Message("order.created", {"id": "o1"}, key="o1")
    with engine.begin() as conn:
        conn.execute(orders.insert().values(id="o1", total=10))
        outbox.add(conn, kept)

    lost = Message("order.created", {"id": "o2"}, key="o2")

    def declined() -> None:
        with engine.begin() as conn:
            conn.execute(orders.insert().values(id="o2", total=20))
            outbox.add(conn, lost)
            raise RuntimeError("payment declined")

    with pytest.raises(RuntimeError):
        declined()

    assert [r.message_id for r in _rows(engine, outbox)] == [kept.id]
    with engine.connect() as conn:
        assert conn.execute(sa.select(orders.c.id)).scalars().all() == ["o1"]


def test_add_joins_an_orm_session_transaction(db: DB) -> None:
    engine, outbox, _, orders = db
    make = sessionmaker(engine)
    with make() as session, session.begin():
        session.execute(orders.insert().values(id="o1", total=1))
        outbox.add_many(
            session, [Message("order.created", key="o1"), Message("order.paid", key="o1")]
        )
    with make() as session:
        session.begin()
        outbox.add(session, Message("order.cancelled", key="o1"))
        session.rollback()
    assert [r.type for r in _rows(engine, outbox)] == ["order.created", "order.paid"]


def test_stored_event_decodes_to_the_same_message(db: DB) -> None:
    engine, outbox, _, _ = db
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    message = Message(
        "order.created",
        {"total": 12, "items": ["a"]},
        key="k",
        headers={"x": "1"},
        occurred_at=when,
    )
    with engine.begin() as conn:
        outbox.add(conn, message)
    t = outbox.table
    with engine.connect() as conn:
        row = conn.execute(sa.select(t)).one()
    decoded = outbox.decode(row)
    assert decoded.id == message.id
    assert decoded.payload == message.payload
    assert decoded.occurred_at == when
    assert decoded.headers["x"] == "1"


def test_unencodable_payload_fails_the_business_transaction_not_the_relay(db: DB) -> None:
    engine, outbox, _, _ = db
    with pytest.raises(ConfigurationError) as info, engine.begin() as conn:
        outbox.add(conn, Message("order.created", {"when": object()}))
    assert info.value.field == "payload"
    assert _rows(engine, outbox) == []


def test_router_fills_the_destination_column(db: DB) -> None:
    engine, _, _, _ = db
    outbox = Outbox(
        sa.MetaData(), name="ob_router_" + str(id(engine) % 10_000), router=TopicRouter()
    )
    outbox.create_tables(engine)
    try:
        with engine.begin() as conn:
            outbox.add(conn, Message("order.created"))
        with engine.connect() as conn:
            assert conn.execute(sa.select(outbox.table.c.destination)).scalar_one() == "order"
    finally:
        outbox.table.metadata.drop_all(engine)


def test_trace_context_is_captured_into_headers(db: DB) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    engine, outbox, _, _ = db
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span, engine.begin() as conn:
        outbox.add(conn, Message("order.created"))
        trace_id = format(span.get_span_context().trace_id, "032x")
    t = outbox.table
    with engine.connect() as conn:
        headers = conn.execute(sa.select(t.c.headers)).scalar_one()
    assert trace_id in headers["traceparent"]


def test_bad_inputs_are_typed_errors(db: DB) -> None:
    engine, outbox, _, _ = db
    with pytest.raises(ConfigurationError), engine.begin() as conn:
        outbox.add(conn, {"type": "x"})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        outbox.add(object(), Message("x"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Outbox(sa.Table("not_outbox", sa.MetaData(), sa.Column("id", sa.Integer)))
    with pytest.raises(ConfigurationError):
        outbox_table(sa.MetaData(), name="bad name; drop table x")
    with pytest.raises(ConfigurationError):
        ddl("oracle")


def test_ddl_is_ready_for_migration_tools() -> None:
    pg = ddl("postgresql")
    assert "CREATE TABLE resilience_outbox" in pg
    assert "BIGSERIAL" in pg
    assert "WHERE sent_at IS NULL AND dead_at IS NULL" in pg  # partial index for the claim
    assert "CREATE TABLE resilience_inbox" in pg
    assert "PRIMARY KEY (consumer, message_id)" in pg
    assert "resilience_outbox_lease" in ddl("sqlite")


def test_ddl_output_creates_working_tables(pg_engine: sa.Engine) -> None:
    import uuid

    suffix = uuid.uuid4().hex[:8]
    script = ddl("postgresql", outbox=f"ddl_ob_{suffix}", inbox=f"ddl_ib_{suffix}")
    with pg_engine.begin() as conn:
        for statement in script.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    try:
        outbox = Outbox(sa.MetaData(), name=f"ddl_ob_{suffix}")
        with pg_engine.begin() as conn:
            outbox.add(conn, Message("x", key="k"))
        with pg_engine.connect() as conn:
            assert outbox.stats(conn).pending == 1
    finally:
        with pg_engine.begin() as conn:
            for name in (f"ddl_ob_{suffix}", f"ddl_ob_{suffix}_lease", f"ddl_ib_{suffix}"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")


def test_session_type_is_accepted(db: DB) -> None:
    engine, outbox, _, _ = db
    with Session(engine) as session, session.begin():
        outbox.add(session, Message("x"))
    with engine.connect() as conn:
        assert outbox.stats(conn).pending == 1


def test_dialects_without_per_key_commit_order_are_refused() -> None:
    # A SQL Server engine that never connects (a stand-in DBAPI): only its dialect is read.
    import sqlite3

    import sqlalchemy as sa

    from resilience import ConfigurationError
    from resilience.messaging import InMemoryBroker
    from resilience.outbox import Outbox, Relay

    engine = sa.create_engine("mssql+pymssql://u@localhost/db", module=sqlite3)
    with pytest.raises(ConfigurationError, match="not 'mssql'"):
        Relay(engine, Outbox(sa.MetaData()), InMemoryBroker().publisher())
