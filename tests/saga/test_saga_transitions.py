"""Illegal transitions are rejected and logged; optimistic locking lets exactly one writer win."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

from resilience import ConcurrentSagaUpdateError, IllegalTransitionError, SagaError
from resilience.messaging import Consumer, InMemoryBroker, Message
from resilience.saga import _cli as saga_cli


def _event(kind: str, order_id: str = "order-1") -> Message:
    return Message(kind, {"order_id": order_id}, key=order_id)


def _start(svc: Any, order_saga: ModuleType, order_id: str = "order-1") -> None:
    order_saga.place_orders(svc, [(order_id, 1, 10)], timeout=60.0)


def test_illegal_transition_is_rejected_recorded_and_dead_lettered(
    order_saga: ModuleType, tmp_path: Path
) -> None:
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}")
    _start(orders, order_saga)
    p = orders.participant
    assert p.handle(_event("stock.reserved"))
    assert p.handle(_event("payment.approved"))
    declined = _event("payment.declined")
    with pytest.raises(IllegalTransitionError) as info:
        p.handle(declined)
    assert (info.value.state, info.value.event, info.value.saga_id) == (
        "confirmed",
        "payment.declined",
        "order-1",
    )
    with orders.engine.connect() as conn:
        saga = p.store.get(conn, "order-1")
        assert (saga.state, saga.version) == ("confirmed", 3)  # never silently applied
        last = p.store.history(conn, "order-1")[-1]
        assert (last.event_type, last.outcome, last.from_state, last.message_id) == (
            "payment.declined",
            "rejected",
            "confirmed",
            declined.id,
        )
        # order.confirmed was emitted once, no order.cancelled at all
        outbox = p.outbox.table
        types = conn.execute(sa.select(outbox.c.type).order_by(outbox.c.position)).scalars().all()
    assert types == ["order.created", "order.confirmed"]

    # Through a consumer, the rejection is permanent: dead-lettered, not retried.
    broker = InMemoryBroker(partitions=1)
    broker.publisher().publish([_event("payment.declined")])
    consumer = Consumer(
        broker.subscribe("payment", "orders"), p.handle, permanent_errors=p.permanent_errors
    )
    assert consumer.run_once(timeout=0.5) == 1
    assert len(broker.dead_letters("payment")) == 1
    assert consumer.stats.retries == 0
    orders.engine.dispose()


def test_duplicates_are_absorbed_and_logged(order_saga: ModuleType, tmp_path: Path) -> None:
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}")
    _start(orders, order_saga)
    reserved = _event("stock.reserved")
    assert orders.participant.handle(reserved) is True
    assert orders.participant.handle(reserved) is False
    assert orders.participant.handle(_event("order.unrelated")) is False
    with orders.engine.connect() as conn:
        outcomes = [e.outcome for e in orders.participant.store.history(conn, "order-1")]
        assert orders.participant.store.get(conn, "order-1").version == 2
    assert outcomes == ["accepted", "accepted", "duplicate"]
    with pytest.raises(SagaError, match="unknown here"):
        orders.participant.handle(_event("stock.reserved", "order-404"))
    orders.engine.dispose()


def test_optimistic_lock_one_winner_then_a_clean_retry(
    order_saga: ModuleType, pg_schema: Any
) -> None:
    url = pg_schema("orders")
    first = order_saga.orders_service(url)  # two instances of Orders, one database
    second = order_saga.orders_service(url)
    second.participant.conflict_retries = 0
    _start(first, order_saga)
    applied, go = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold_before_commit(message: Message) -> None:
        applied.set()  # our UPDATE ... WHERE version = 1 is done, the row is locked
        go.wait(10)

    first.participant._crash_hook = hold_before_commit

    def winner() -> None:
        try:
            first.participant.handle(_event("stock.reserved"))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=winner)
    thread.start()
    assert applied.wait(10)
    approved = _event("payment.approved")
    loser_result: list[BaseException] = []

    def loser() -> None:
        try:
            second.participant.handle(approved)
        except BaseException as exc:
            loser_result.append(exc)

    other = threading.Thread(target=loser)
    other.start()
    # The loser read version 1 and now waits on the winner's row lock.
    other.join(0.5)
    assert other.is_alive()
    go.set()
    thread.join(10)
    other.join(10)
    assert errors == []
    assert len(loser_result) == 1
    assert isinstance(loser_result[0], ConcurrentSagaUpdateError)
    with first.engine.connect() as conn:
        saga = first.participant.store.get(conn, "order-1")
        assert (saga.state, saga.version) == ("stock_reserved", 2)
    # Its transaction rolled back entirely (inbox row included): the retry applies cleanly.
    assert second.participant.handle(approved) is True
    with first.engine.connect() as conn:
        saga = first.participant.store.get(conn, "order-1")
        assert (saga.state, saga.version) == ("confirmed", 3)
        history = [
            (e.event_type, e.outcome) for e in first.participant.store.history(conn, "order-1")
        ]
    assert history == [
        ("saga.started", "accepted"),
        ("stock.reserved", "accepted"),
        ("payment.approved", "accepted"),
    ]
    first.engine.dispose()
    second.engine.dispose()


def test_conflicts_are_retried_inside_handle(order_saga: ModuleType, pg_schema: Any) -> None:
    """Many concurrent events on one saga: every one is applied once, none lost."""
    url = pg_schema("orders")
    services = [order_saga.orders_service(url) for _ in range(4)]
    for svc in services:
        svc.participant.conflict_retries = 50
    for i in range(10):
        _start(services[0], order_saga, f"o{i}")
    failures: list[BaseException] = []
    # The same message (same id) goes to two instances: a redelivery racing itself.
    events = {
        k: [_event(k, f"o{i}") for i in range(10)] for k in ("stock.reserved", "payment.approved")
    }

    def work(svc: Any, kind: str) -> None:
        try:
            for message in events[kind]:
                svc.participant.handle(message)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=work, args=(svc, kind))
        for svc, kind in zip(services, ["stock.reserved", "payment.approved"] * 2, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    with services[0].engine.connect() as conn:
        store = services[0].participant.store
        assert all(store.get(conn, f"o{i}").state == "confirmed" for i in range(10))
        assert all(store.get(conn, f"o{i}").version == 3 for i in range(10))
        outcomes = conn.execute(
            sa.select(store.tables.log.c.outcome, sa.func.count()).group_by(
                store.tables.log.c.outcome
            )
        ).all()
    counts = dict(outcomes)
    assert counts["accepted"] == 30  # 10 starts + 20 transitions, each exactly once
    assert counts["duplicate"] == 20  # every second copy was absorbed by the inbox
    assert set(counts) == {"accepted", "duplicate"}
    for svc in services:
        svc.engine.dispose()


def test_cli_show(
    order_saga: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    orders = order_saga.orders_service(url)
    _start(orders, order_saga)
    orders.participant.handle(_event("payment.declined"))
    orders.engine.dispose()
    parser = argparse.ArgumentParser()
    saga_cli.register(parser.add_subparsers())
    args = parser.parse_args(["saga", "show", "order-1", "--url", url])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "order-1 (order): cancelled (version 2)" in out
    assert "payment.declined" in out
    assert "pending -> cancelled" in out
    args = parser.parse_args(["saga", "show", "order-1", "--url", url, "--json"])
    assert args.handler(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "cancelled"
    assert [e["event"] for e in doc["log"]] == ["saga.started", "payment.declined"]
    args = parser.parse_args(["saga", "show", "nope", "--url", url])
    assert args.handler(args) == 1


def test_starting_a_saga_twice_is_a_typed_error(order_saga: ModuleType, tmp_path: Path) -> None:
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}")
    _start(orders, order_saga)
    with (
        pytest.raises(SagaError, match="already exists"),
        orders.session() as session,
        session.begin(),
    ):
        orders.participant.start(session, "order-1")
    orders.engine.dispose()
