"""Persisted timers: a participant that never answers, a restart, and the timer still fires."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

from resilience.saga import SagaParticipant, SagaTimerScheduler
from resilience.testing import FakeClock


def _stock(stock: Any) -> tuple[int, int]:
    with stock.engine.connect() as conn:
        row = conn.execute(sa.select(stock.metadata.tables["stock"])).one()
    return row.available, row.reserved


def test_timeout_survives_a_restart_and_compensates(
    order_saga: ModuleType, tmp_path: Path, pump: Any
) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    orders_url = f"sqlite:///{tmp_path / 'orders.db'}"
    orders = order_saga.orders_service(orders_url, clock)
    stock = order_saga.stock_service(f"sqlite:///{tmp_path / 'stock.db'}", clock, initial=5)
    # Payments never answers: it is not even running.
    order_saga.place_orders(orders, [("order-1", 2, 10)], timeout=30.0)
    pump(orders, stock).run()
    assert _stock(stock) == (3, 2)
    with orders.engine.connect() as conn:
        assert orders.participant.store.get(conn, "order-1").state == "stock_reserved"
    assert SagaTimerScheduler(orders.participant).run_once().fired == 0  # not due yet
    orders.engine.dispose()  # the Orders service goes down...
    time.sleep(0.25)  # ...and its relay's SQLite lease (lease_ttl=0.2 s, DB clock) runs out

    clock.advance(31.0)
    restarted = order_saga.orders_service(orders_url, clock)  # ...and comes back
    result = SagaTimerScheduler(restarted.participant).run_once()
    assert (result.fired, result.failed) == (1, 0)
    pump(restarted, stock).run()  # order.cancelled reaches Stock, which releases
    assert _stock(stock) == (5, 0)
    with restarted.engine.connect() as conn:
        store = restarted.participant.store
        assert store.get(conn, "order-1").state == "cancelled"
        assert store.timers(conn) == []
        log = [
            (e.event_type, e.from_state, e.to_state, e.outcome)
            for e in store.history(conn, "order-1")
        ]
    assert log == [
        ("saga.started", None, "pending", "accepted"),
        ("stock.reserved", "pending", "stock_reserved", "accepted"),
        ("saga.timeout", "stock_reserved", "cancelled", "accepted"),
    ]
    with stock.engine.connect() as conn:
        steps = [
            (e.event_type, e.outcome) for e in stock.participant.store.history(conn, "order-1")
        ]
    assert steps == [("order.created", "accepted"), ("order.cancelled", "accepted")]
    # A second run finds nothing: the timer fired exactly once.
    assert SagaTimerScheduler(restarted.participant).run_once().fired == 0
    restarted.engine.dispose()
    stock.engine.dispose()


@contextmanager
def _orders_process(*args: str) -> Iterator[subprocess.Popen[str]]:
    """The Orders service in a process of its own (tests/saga/orders_main.py), SIGKILLed at exit."""
    main = Path(__file__).with_name("orders_main.py")
    process = subprocess.Popen(
        [sys.executable, str(main), *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "up"
        yield process
    finally:
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.integration  # spawns the service as processes
def test_timeout_fires_after_the_owner_is_killed_and_restarted(
    order_saga: ModuleType, pg_schema: Any
) -> None:
    """Nobody answers order-1; Orders is SIGKILLed before its deadline; a fresh
    process of the service, which never saw the order, fires the timer."""
    url = pg_schema("orders")
    with _orders_process(url, "place", "2.0"):
        pass  # placed, then killed: no chance to fire (2 s deadline)
    orders = order_saga.orders_service(url)  # only to read the tables
    store = orders.participant.store
    with orders.engine.connect() as conn:
        assert store.get(conn, "order-1").state == "pending"
        (timer,) = store.timers(conn)
        assert timer.fire_at > store.now(conn)  # not due yet when the owner died
    with _orders_process(url, "serve"):  # the restart
        deadline = time.monotonic() + 20
        while True:
            with orders.engine.connect() as conn:
                if store.get(conn, "order-1").state != "pending":
                    break
            assert time.monotonic() < deadline, "the timer did not fire after the restart"
            time.sleep(0.1)
    with orders.engine.connect() as conn:
        log = [
            (e.event_type, e.from_state, e.to_state, e.outcome)
            for e in store.history(conn, "order-1")
        ]
        assert store.timers(conn) == []
        outbox = orders.participant.outbox.table
        emitted = conn.execute(sa.select(outbox.c.type).order_by(outbox.c.position)).scalars().all()
        status = conn.execute(sa.select(orders.metadata.tables["orders"].c.status)).scalar_one()
    assert log == [
        ("saga.started", None, "pending", "accepted"),
        ("saga.timeout", "pending", "cancelled", "accepted"),
    ]
    assert emitted == ["order.created", "order.cancelled"]  # the compensations' trigger
    assert status == "cancelled"
    orders.engine.dispose()


def test_timer_of_a_finished_saga_is_a_logged_no_op(
    order_saga: ModuleType, tmp_path: Path, pump: Any
) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}", clock)
    stock = order_saga.stock_service(f"sqlite:///{tmp_path / 's.db'}", clock, initial=0)
    order_saga.place_orders(orders, [("order-1", 1, 10)], timeout=30.0)
    pump(orders, stock).run()  # out of stock: cancelled at once
    participant = orders.participant
    with orders.session() as session, session.begin():
        assert participant.store.get(session, "order-1").state == "cancelled"
        assert participant.store.timers(session) == []  # entering a terminal state cancels them
        participant.schedule(session, "order-1", "saga.timeout", delay=1.0)  # a straggler
    clock.advance(2.0)
    assert SagaTimerScheduler(participant).run_once().fired == 1
    with orders.engine.connect() as conn:
        last = participant.store.history(conn, "order-1")[-1]
        assert (last.event_type, last.outcome, last.to_state) == (
            "saga.timeout",
            "ignored",
            "cancelled",
        )
        assert participant.store.get(conn, "order-1").version == 2
    orders.engine.dispose()
    stock.engine.dispose()


def test_database_clock_decides_due_ness(order_saga: ModuleType, tmp_path: Path) -> None:
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}", None)  # DB time
    order_saga.place_orders(orders, [("soon", 1, 1)], timeout=0.0)
    order_saga.place_orders(orders, [("later", 1, 1)], timeout=3600.0)
    result = SagaTimerScheduler(orders.participant).run_once()
    assert result.fired == 1
    with orders.engine.connect() as conn:
        store = orders.participant.store
        assert store.get(conn, "soon").state == "cancelled"
        assert store.get(conn, "later").state == "pending"
        (timer,) = store.timers(conn)
        assert timer.saga_id == "later"
        assert timer.fire_at > store.now(conn) + 3500
    orders.engine.dispose()


def test_timers_on_postgres_fire_once_across_schedulers(
    order_saga: ModuleType, pg_schema: Any
) -> None:
    url = pg_schema("orders")
    a = order_saga.orders_service(url, None)
    b = order_saga.orders_service(url, None)  # a second instance of the service
    order_saga.place_orders(a, [(f"o{i}", 1, 1) for i in range(20)], timeout=0.0)
    import threading

    results: list[int] = []

    def fire(svc: Any) -> None:
        results.append(SagaTimerScheduler(svc.participant, batch_size=50).run_once().fired)

    threads = [threading.Thread(target=fire, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sum(results) == 20
    with a.engine.connect() as conn:
        store = a.participant.store
        assert all(store.get(conn, f"o{i}").state == "cancelled" for i in range(20))
        timeouts = conn.execute(
            sa.select(sa.func.count())
            .select_from(store.tables.log)
            .where(store.tables.log.c.event_type == "saga.timeout")
        ).scalar_one()
    assert timeouts == 20
    a.engine.dispose()
    b.engine.dispose()


def test_a_failing_timer_is_retried_later_and_does_not_block_the_others(
    order_saga: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}", clock)
    order_saga.place_orders(orders, [("a", 1, 10)], timeout=10.0)
    order_saga.place_orders(orders, [("b", 1, 10)], timeout=20.0)  # due after a's
    clock.advance(30.0)
    participant = orders.participant
    real_process = SagaParticipant._process

    def buggy(self: Any, session: Any, message: Any, saga_id: str, **kw: Any) -> Any:
        if saga_id == "a":
            raise RuntimeError("bug in a hook")
        return real_process(self, session, message, saga_id, **kw)

    monkeypatch.setattr(SagaParticipant, "_process", buggy)
    result = SagaTimerScheduler(participant).run_once()
    assert (result.fired, result.failed) == (1, 1)  # b fired although a (earlier) failed
    with orders.engine.connect() as conn:
        store = participant.store
        assert store.get(conn, "b").state == "cancelled"
        assert store.get(conn, "a").state == "pending"
        (timer,) = store.timers(conn)  # a's timer is kept, not consumed
        assert (timer.saga_id, timer.attempts) == ("a", 1)
        assert timer.fire_at > store.now(conn)  # backed off

    monkeypatch.setattr(SagaParticipant, "_process", real_process)  # the bug is fixed
    clock.advance(5.0)
    assert SagaTimerScheduler(participant).run_once().fired == 1
    with orders.engine.connect() as conn:
        assert participant.store.get(conn, "a").state == "cancelled"
        assert participant.store.timers(conn) == []
    orders.engine.dispose()
