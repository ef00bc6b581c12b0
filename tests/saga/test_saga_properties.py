"""Property tests: any order, any duplication of one saga's events gives the same end."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience.messaging import Message
from resilience.saga import ChaosHarness, ChaosOptions, SagaTimerScheduler
from resilience.testing import FakeClock

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _deliveries(draw: Any, events: list[Message]) -> list[Message]:
    """Every event at least once, some twice or three times (same id), in any order."""
    copies = [m for m in events for _ in range(draw(st.integers(1, 3)))]
    return draw(st.permutations(copies))


@st.composite
def orders_case(draw: Any) -> tuple[bool, bool, list[Message]]:
    stock_ok, pay_ok = draw(st.booleans()), draw(st.booleans())
    events = [
        Message("stock.reserved" if stock_ok else "stock.unavailable", key="o1"),
        Message("payment.approved" if pay_ok else "payment.declined", key="o1"),
    ]
    return stock_ok, pay_ok, _deliveries(draw, events)


@SETTINGS
@given(case=orders_case())
def test_orders_converge_whatever_the_order(order_saga: ModuleType, case: Any) -> None:
    stock_ok, pay_ok, deliveries = case
    with tempfile.TemporaryDirectory() as tmp:
        orders = order_saga.orders_service(f"sqlite:///{Path(tmp) / 'o.db'}")
        order_saga.place_orders(orders, [("o1", 1, 10)], timeout=60.0)
        for message in deliveries:
            orders.participant.handle(message)
        with orders.engine.connect() as conn:
            state = orders.participant.store.get(conn, "o1").state
            outbox = orders.participant.outbox.table
            emitted = conn.execute(sa.select(outbox.c.type)).scalars().all()
        orders.engine.dispose()
    expected = "confirmed" if stock_ok and pay_ok else "cancelled"
    assert state == expected
    assert sorted(emitted) == sorted(["order.created", f"order.{expected}"])


@st.composite
def participant_case(draw: Any) -> tuple[bool, list[Message]]:
    cancelled = draw(st.booleans())
    created = Message(
        "order.created", {"order_id": "o1", "sku": "sku-1", "qty": 2, "amount": 10}, key="o1"
    )
    events = [created] + (
        [Message("order.cancelled", {"order_id": "o1"}, key="o1")] if cancelled else []
    )
    return cancelled, _deliveries(draw, events)


@SETTINGS
@given(case=participant_case(), initial=st.sampled_from([0, 1, 5]))
def test_stock_is_conserved_and_released_once(
    order_saga: ModuleType, case: Any, initial: int
) -> None:
    cancelled, deliveries = case
    with tempfile.TemporaryDirectory() as tmp:
        stock = order_saga.stock_service(f"sqlite:///{Path(tmp) / 's.db'}", initial=initial)
        for message in deliveries:
            stock.participant.handle(message)
        with stock.engine.connect() as conn:
            row = conn.execute(sa.select(stock.metadata.tables["stock"])).one()
        stock.engine.dispose()
    assert row.available + row.reserved == initial
    assert row.available >= 0
    if cancelled or initial < 2:
        assert (row.available, row.reserved) == (initial, 0)
    else:
        assert (row.available, row.reserved) == (initial - 2, 2)


@SETTINGS
@given(case=participant_case())
def test_payment_is_refunded_exactly_once_if_cancelled(order_saga: ModuleType, case: Any) -> None:
    cancelled, deliveries = case
    with tempfile.TemporaryDirectory() as tmp:
        payments = order_saga.payments_service(f"sqlite:///{Path(tmp) / 'p.db'}", decline_rate=0.0)
        for message in deliveries:
            payments.participant.handle(message)
        tables = payments.metadata.tables
        with payments.engine.connect() as conn:
            charges = conn.execute(sa.select(tables["charges"].c.status)).scalars().all()
            refunds = conn.execute(
                sa.select(sa.func.count()).select_from(tables["refunds"])
            ).scalar_one()
        payments.engine.dispose()
    first = next(m.type for m in deliveries)
    if not cancelled:
        assert (charges, refunds) == (["charged"], 0)
    elif first == "order.cancelled":  # the cancel came first: the charge never happens
        assert (charges, refunds) == ([], 0)
    else:  # charged, then refunded once however many times the cancel arrived
        assert (charges, refunds) == (["refunded"], 1)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    in_stock=st.booleans(),
    timeout_race=st.booleans(),
)
def test_whole_saga_under_random_chaos(
    order_saga: ModuleType, seed: int, in_stock: bool, timeout_race: bool
) -> None:
    """Three services, one order, a random schedule of duplicates/drops/reorders/crashes."""
    clock = FakeClock(start=1_700_000_000.0)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        orders = order_saga.orders_service(f"sqlite:///{base / 'o.db'}", clock)
        initial = 3 if in_stock else 0
        stock = order_saga.stock_service(f"sqlite:///{base / 's.db'}", clock, initial=initial)
        payments = order_saga.payments_service(
            f"sqlite:///{base / 'p.db'}", clock, decline_rate=0.5
        )
        harness = ChaosHarness(
            clock=clock,
            options=ChaosOptions(
                seed=seed,
                duplicate=0.3,
                delay=0.3,
                drop=0.2,
                crash=0.2,
                max_delay_steps=5,
                tick=0.5 if timeout_race else 0.0,
            ),
        )
        for svc in (orders, stock, payments):
            harness.add(svc.participant, svc.engine)
        order_saga.place_orders(orders, [("o1", 1, 10), ("o2", 2, 20)], timeout=3.0)
        harness.run(
            invariants=[
                lambda: order_saga.check_invariants(orders, stock, payments, initial=initial)
            ]
        )
        assert SagaTimerScheduler(orders.participant).run_once().fired == 0
        for svc in (orders, stock, payments):
            svc.engine.dispose()
