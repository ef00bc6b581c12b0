"""The order saga end to end under chaos: three services, three databases, one broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa

from resilience.saga import ChaosHarness, ChaosOptions
from resilience.testing import FakeClock

# 1,000 orders take ~15 s of CPU (≈30 s wall on the shared 2-core CI box), over the
# 30 s budget per test, so the chaos run uses 400 orders; docs/sagas/order_saga.py
# runs any number (``main(1000)``).
SQLITE_ORDERS = 400
PG_ORDERS = 100


def _run(
    order_saga: ModuleType,
    urls: dict[str, str],
    *,
    n: int,
    seed: int,
    tick: float,
    timeout: float,
) -> tuple[object, dict[str, int]]:
    clock = FakeClock(start=1_700_000_000.0)
    initial = n // 3
    orders = order_saga.orders_service(urls["orders"], clock)
    stock = order_saga.stock_service(urls["stock"], clock, initial=initial)
    payments = order_saga.payments_service(urls["payments"], clock, decline_rate=0.25)
    harness = ChaosHarness(
        clock=clock,
        options=ChaosOptions(
            seed=seed, duplicate=0.15, delay=0.15, drop=0.08, crash=0.08, tick=tick
        ),
    )
    for svc in (orders, stock, payments):
        harness.add(svc.participant, svc.engine)
    order_saga.place_orders(
        orders, [(f"order-{i}", 1 + i % 2, 10 + i % 7) for i in range(n)], timeout=timeout
    )
    stock_table = stock.metadata.tables["stock"]

    def stock_never_negative() -> None:
        with stock.engine.connect() as conn:
            row = conn.execute(sa.select(stock_table)).one()
        assert row.available >= 0
        assert row.reserved >= 0
        assert row.available + row.reserved == initial

    try:
        report = harness.run(
            safety=[stock_never_negative],
            check_every=200,
            invariants=[
                lambda: order_saga.check_invariants(orders, stock, payments, initial=initial)
            ],
        )
        with orders.engine.connect() as conn:
            counts = dict(
                conn.execute(
                    sa.select(orders.metadata.tables["orders"].c.status, sa.func.count()).group_by(
                        "status"
                    )
                ).all()
            )
    finally:
        for svc in (orders, stock, payments):
            svc.engine.dispose()
    return report, counts


def test_order_saga_sqlite_under_chaos(order_saga: ModuleType, tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("orders", "stock", "payments")}
    started = time.perf_counter()
    report, counts = _run(order_saga, urls, n=SQLITE_ORDERS, seed=11, tick=0.004, timeout=8.0)
    elapsed = time.perf_counter() - started
    # The chaos really happened, and both outcomes (and the timeout race) occurred.
    assert report.duplicates > 20
    assert report.dropped > 10
    assert report.crashes > 10
    assert report.delayed > 20
    assert report.rejected == []
    assert counts.get("confirmed", 0) > 0
    assert counts.get("cancelled", 0) > 0
    assert sum(counts.values()) == SQLITE_ORDERS
    assert report.timers_fired > 0  # type: ignore[attr-defined]
    assert elapsed < 60


def test_order_saga_postgres_under_chaos(
    order_saga: ModuleType, pg_schema: Callable[[str], str]
) -> None:
    urls = {name: pg_schema(name) for name in ("orders", "stock", "payments")}
    report, counts = _run(order_saga, urls, n=PG_ORDERS, seed=5, tick=0.01, timeout=3.0)
    assert report.crashes > 0
    assert report.duplicates > 0
    assert sum(counts.values()) == PG_ORDERS


def test_every_seed_keeps_the_invariants(order_saga: ModuleType, tmp_path: Path) -> None:
    """Small runs over many seeds: different interleavings, same guarantees."""
    for seed in range(6):
        urls = {
            n: f"sqlite:///{tmp_path / f'{n}{seed}'}.db" for n in ("orders", "stock", "payments")
        }
        _run(order_saga, urls, n=30, seed=seed, tick=0.05, timeout=2.0)


def test_run_with_chaos_one_call(order_saga: ModuleType, tmp_path: Path) -> None:
    """The one-call form, and an invariant that fails is reported, not swallowed."""
    from resilience.saga import run_with_chaos

    clock = FakeClock(start=1_700_000_000.0)
    orders = order_saga.orders_service(f"sqlite:///{tmp_path / 'o.db'}", clock)
    stock = order_saga.stock_service(f"sqlite:///{tmp_path / 's.db'}", clock, initial=10)
    payments = order_saga.payments_service(f"sqlite:///{tmp_path / 'p.db'}", clock)
    pairs = [(s.participant, s.engine) for s in (orders, stock, payments)]
    report = run_with_chaos(
        pairs,
        clock=clock,
        options=ChaosOptions(seed=2),
        before=lambda _: order_saga.place_orders(
            orders, [(f"o{i}", 1, 5) for i in range(10)], timeout=30.0
        ),
        invariants=[lambda: order_saga.check_invariants(orders, stock, payments, initial=10)],
    )
    assert report.handled >= 40  # 10 orders x (2 created + 2 answers) at least

    def wrong() -> None:
        raise AssertionError("stock leaked")

    with pytest.raises(AssertionError, match="stock leaked"):
        run_with_chaos(pairs, clock=clock, invariants=[wrong])
    for svc in (orders, stock, payments):
        svc.engine.dispose()
