"""`AsyncSagaParticipant`: the same saga core driven from asyncio.

The order saga runs with asyncio drivers only (relay ``run``, `AsyncConsumer`,
``SagaTimerScheduler.arun``); a step's transaction never blocks the loop and
keeps the caller's trace; errors and concurrency are the sync participant's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

from resilience import ConfigurationError, IllegalTransitionError
from resilience.messaging import AsyncConsumer, InMemoryBroker, Message, RetryBackoff, TopicRouter
from resilience.outbox import Relay
from resilience.saga import AsyncSagaParticipant, SagaTimerScheduler


def _event(kind: str, order_id: str) -> Message:
    return Message(kind, {"order_id": order_id}, key=order_id)


def _place(order_saga: ModuleType, svc: Any, order_id: str, timeout: float) -> Any:
    """What an async endpoint hands to ``transaction``: order row + saga, atomically."""
    table = svc.metadata.tables["orders"]

    def place(session: Any) -> Any:
        session.execute(table.insert().values(order_id=order_id, status="pending", qty=1, amount=5))
        created = Message("order.created", {"qty": 1, "amount": 5}, key=order_id)
        return svc.participant.start(session, order_id, timeout=timeout, emit=created)

    return place


async def test_order_saga_on_asyncio_drivers(order_saga: ModuleType, tmp_path: Path) -> None:
    n, initial = 40, 15
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}")  # database clock
    stock = order_saga.stock_service(f"sqlite:///{tmp_path / 's.db'}", initial=initial)
    payments = order_saga.payments_service(f"sqlite:///{tmp_path / 'p.db'}", decline_rate=0.3)
    services = (orders, stock, payments)
    broker = InMemoryBroker(partitions=2)
    broker.duplicate_deliveries(5)  # redeliveries: the inbox absorbs them
    router = TopicRouter()
    stop = asyncio.Event()
    tasks = []
    for svc in services:
        asaga = AsyncSagaParticipant(svc.participant)
        relay = Relay(svc.engine, svc.participant.outbox, broker.publisher(), listen=False)
        consumer = AsyncConsumer(
            broker.async_subscribe(asaga.destinations(router), asaga.name),
            asaga.handle,
            name=asaga.name,
            permanent_errors=asaga.permanent_errors,
            backoff=RetryBackoff(initial=0.01, maximum=0.05),
            poll_timeout=0.05,
        )
        scheduler = SagaTimerScheduler(svc.participant, interval=0.05)
        tasks += [
            asyncio.create_task(relay.run(stop)),
            asyncio.create_task(consumer.run(stop)),
            asyncio.create_task(scheduler.arun(stop)),
        ]
    a_orders = AsyncSagaParticipant(orders.participant)
    try:
        # The last few orders get a deadline too short to make it: timers race the answers.
        started = await asyncio.gather(
            *(
                a_orders.transaction(_place(order_saga, orders, f"o{i}", 0.0 if i >= n - 4 else 60))
                for i in range(n)
            )
        )
        assert {s.state for s in started} == {"pending"}
        deadline = time.monotonic() + 30
        while True:
            try:
                order_saga.check_invariants(orders, stock, payments, initial=initial)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        for svc in services:
            svc.engine.dispose()
    with orders.engine.connect() as conn:
        table = orders.metadata.tables["orders"]
        counts = dict(
            conn.execute(sa.select(table.c.status, sa.func.count()).group_by(table.c.status)).all()
        )
        log = orders.participant.store.tables.log
        timeouts = conn.execute(
            sa.select(sa.func.count()).where(log.c.event_type == "saga.timeout")
        ).scalar_one()
    duplicates = 0
    for svc in services:
        log = svc.participant.store.tables.log
        with svc.engine.connect() as conn:
            duplicates += conn.execute(
                sa.select(sa.func.count()).where(log.c.outcome == "duplicate")
            ).scalar_one()
        svc.engine.dispose()
    assert counts["confirmed"] > 0
    assert counts["cancelled"] > 0
    assert sum(counts.values()) == n
    assert timeouts >= 4  # fired by arun, and logged (accepted or ignored)
    assert duplicates >= 5  # the redelivered records reached the inbox, which absorbed them


async def test_a_step_runs_off_the_loop_and_keeps_the_trace(
    order_saga: ModuleType, tmp_path: Path
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}")
    participant = orders.participant
    asaga = AsyncSagaParticipant(participant)
    await asaga.transaction(_place(order_saga, orders, "order-1", 60))
    release = threading.Event()
    ran_during_step = False

    @participant.entered("stock_reserved")
    def slow_hook(ctx: Any) -> None:
        # Waits for a coroutine: if the step ran on the loop, this would never be set.
        assert release.wait(10), "the event loop was blocked by the step"

    async def unblock() -> None:
        nonlocal ran_during_step
        await asyncio.sleep(0.05)
        ran_during_step = not release.is_set()
        release.set()

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("process stock") as span:
        done, _ = await asyncio.gather(asaga.handle(_event("stock.reserved", "order-1")), unblock())
    assert done is True
    assert ran_during_step
    trace_id = f"{span.get_span_context().trace_id:032x}"
    with orders.engine.connect() as conn:
        last = participant.store.history(conn, "order-1")[-1]
    assert (last.event_type, last.to_state, last.trace_id) == (
        "stock.reserved",
        "stock_reserved",
        trace_id,
    )
    orders.engine.dispose()


async def test_errors_and_duplicates_are_the_sync_ones(
    order_saga: ModuleType, tmp_path: Path
) -> None:
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}")
    asaga = AsyncSagaParticipant(orders.participant)
    assert repr(asaga).startswith("AsyncSagaParticipant(SagaParticipant('orders'")
    assert asaga.event_types == orders.participant.event_types
    await asaga.transaction(_place(order_saga, orders, "order-1", 60))
    approved = _event("payment.approved", "order-1")
    assert await asaga.handle(approved) is True
    assert await asaga.handle(approved) is False  # duplicate
    assert await asaga.handle(_event("not.ours", "order-1")) is False
    assert await asaga.handle(_event("stock.reserved", "order-1")) is True
    with pytest.raises(IllegalTransitionError):
        await asaga.handle(_event("payment.declined", "order-1"))
    with orders.engine.connect() as conn:
        store = orders.participant.store
        assert store.get(conn, "order-1").state == "confirmed"
        assert store.history(conn, "order-1")[-1].outcome == "rejected"
    with pytest.raises(ConfigurationError, match="participant"):
        AsyncSagaParticipant(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="fn"):
        await asaga.transaction("not callable")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="boom"):  # a failing transaction rolls back
        await asaga.transaction(lambda s: (_place(order_saga, orders, "x", 1)(s), _boom()))
    with orders.engine.connect() as conn:
        assert orders.participant.store.get(conn, "x") is None
    orders.engine.dispose()


def _boom() -> None:
    raise RuntimeError("boom")


async def test_concurrent_answers_on_postgres_resolve_by_optimistic_lock(
    order_saga: ModuleType, pg_schema: Any
) -> None:
    """Both answers of every order at once, from many threads: each saga ends
    confirmed, moved exactly twice, whatever the interleaving."""
    orders = order_saga.orders_service(pg_schema("orders"))
    asaga = AsyncSagaParticipant(orders.participant)
    ids = [f"o{i}" for i in range(30)]
    order_saga.place_orders(orders, [(i, 1, 5) for i in ids], timeout=60.0)
    answers = [_event(kind, i) for i in ids for kind in ("stock.reserved", "payment.approved")]
    results = await asyncio.gather(*(asaga.handle(m) for m in answers))
    assert all(results)
    with orders.engine.connect() as conn:
        store = orders.participant.store
        sagas = [store.get(conn, i) for i in ids]
    assert {(s.state, s.version) for s in sagas if s is not None} == {("confirmed", 3)}
    orders.engine.dispose()


async def test_arun_stops_promptly(order_saga: ModuleType, tmp_path: Path) -> None:
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}")
    scheduler = SagaTimerScheduler(orders.participant, interval=30.0)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.arun(stop))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 2  # did not sit out the 30 s interval
    orders.engine.dispose()
