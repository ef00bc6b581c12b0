"""Bad input gives typed errors; the trace flows through every step of a saga."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from resilience import ConfigurationError, SagaError
from resilience.messaging import Message
from resilience.outbox import Inbox, Outbox
from resilience.saga import (
    ChaosHarness,
    ChaosOptions,
    SagaParticipant,
    SagaStore,
    SagaTimerScheduler,
    StepContext,
)
from resilience.testing import FakeClock


def _participant(tmp_path: Path, **kwargs: Any) -> tuple[SagaParticipant, sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    metadata = sa.MetaData()
    participant = SagaParticipant(
        "svc",
        sessionmaker=sessionmaker(engine),
        outbox=Outbox(metadata),
        inbox=Inbox(metadata),
        **kwargs,
    )
    metadata.create_all(engine)
    return participant, engine


def test_constructor_and_decorator_validation(tmp_path: Path) -> None:
    participant, engine = _participant(tmp_path)
    metadata = sa.MetaData()
    with pytest.raises(ConfigurationError, match="name"):
        SagaParticipant(
            "", sessionmaker=sessionmaker(engine), outbox=Outbox(metadata), inbox=Inbox(metadata)
        )
    with pytest.raises(ConfigurationError, match="outbox"):
        SagaParticipant(
            "x", sessionmaker=sessionmaker(engine), outbox=object(), inbox=Inbox(metadata)
        )  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="conflict_retries"):
        SagaParticipant(
            "x",
            sessionmaker=sessionmaker(engine),
            outbox=Outbox(metadata),
            inbox=Inbox(metadata),
            conflict_retries=-1,
        )
    with pytest.raises(ConfigurationError, match="definition"):
        participant.entered("done")
    with pytest.raises(ConfigurationError, match="name the step"):
        participant.compensate("x.cancelled")(lambda ctx: None)

    participant.on("a.created", step="a")(lambda ctx: None)
    participant.on("b.created", step="b")(lambda ctx: None)
    with pytest.raises(ConfigurationError, match="already has a handler"):
        participant.on("a.created")(lambda ctx: None)
    with pytest.raises(ConfigurationError, match="name the step"):
        participant.compensate("x.cancelled")(lambda ctx: None)
    with pytest.raises(ConfigurationError, match="event_type"):
        participant.on("")
    with (
        pytest.raises(ConfigurationError, match="no handler"),
        participant._sessionmaker() as session,
    ):
        participant.schedule(session, "s1", "nope", delay=1)
    with (
        pytest.raises(ConfigurationError, match="does not own a saga definition"),
        participant._sessionmaker() as session,
    ):
        participant.start(session, "s1")
    with pytest.raises(ConfigurationError, match="prefix"):
        SagaStore(sa.MetaData(), prefix="bad-prefix!")
    with pytest.raises(ConfigurationError, match="drop"):
        ChaosOptions(drop=1.5)
    with pytest.raises(ConfigurationError, match="clock"):
        ChaosHarness(clock=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="participants"):
        SagaTimerScheduler([])
    with pytest.raises(ConfigurationError, match="SagaStore must use the harness clock"):
        ChaosHarness(clock=FakeClock()).add(participant, engine)
    engine.dispose()


def test_owner_cannot_compensate_on_a_state_machine_event(
    order_saga: ModuleType, tmp_path: Path
) -> None:
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}")
    with pytest.raises(ConfigurationError, match="entered"):
        orders.participant.compensate("payment.declined", step="x")
    with pytest.raises(ConfigurationError, match="not a state"):
        orders.participant.entered("shipped")
    orders.engine.dispose()


def test_handler_results_and_missing_saga_id(tmp_path: Path) -> None:
    participant, engine = _participant(tmp_path)

    @participant.on("a.created", step="a")
    def step(ctx: StepContext) -> list[Message]:
        ctx.emit("a.first", {"n": 1})
        return [Message("a.second", key=ctx.saga_id)]

    @participant.on("b.created", step="b")
    def bad(ctx: StepContext) -> object:
        return {"not": "a message"}

    assert participant.handle(Message("a.created", key="s1"))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(participant.outbox.table.c.type, participant.outbox.table.c.key)
        ).all()
    assert sorted(rows) == [("a.first", "s1"), ("a.second", "s1")]
    with pytest.raises(ConfigurationError, match="must return None, a Message"):
        participant.handle(Message("b.created", key="s2"))
    with pytest.raises(SagaError, match="no saga id"):
        participant.handle(Message("a.created"))
    assert participant.handle(Message("a.created", {"saga_id": "s3"}))  # from the payload
    engine.dispose()


def test_one_trace_across_services(order_saga: ModuleType, tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from resilience.tracing import use_context

    tracer = TracerProvider().get_tracer("test")
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}")
    stock = order_saga.stock_service(f"sqlite:///{tmp_path / 's.db'}", initial=5)
    with tracer.start_as_current_span("POST /orders") as span:
        order_saga.place_orders(orders, [("order-1", 1, 10)], timeout=60.0)
    trace_id = f"{span.get_span_context().trace_id:032x}"
    outbox = orders.participant.outbox
    with orders.engine.connect() as conn:
        created = outbox.decode(conn.execute(sa.select(outbox.table)).one())
        assert orders.participant.store.history(conn, "order-1")[0].trace_id == trace_id
    assert trace_id in created.headers["traceparent"]
    with use_context(created.headers), tracer.start_as_current_span("stock consume"):
        stock.participant.handle(created)  # what the consumer does, with its span
    s_outbox = stock.participant.outbox
    with stock.engine.connect() as conn:
        answer = s_outbox.decode(conn.execute(sa.select(s_outbox.table)).one())
        assert [e.trace_id for e in stock.participant.store.history(conn, "order-1")] == [trace_id]
    assert answer.type == "stock.reserved"
    assert trace_id in answer.headers["traceparent"]
    orders.engine.dispose()
    stock.engine.dispose()
