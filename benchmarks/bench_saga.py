"""Sagas: end-to-end throughput, and the per-step cost of the saga machinery.

- ``saga.e2e``: whole order sagas (Orders, Stock, Payments, three SQLite files,
  the in-memory broker, outbox relays) completed per second, calm and under chaos.
- ``saga.step``: one participant step (inbox + business SQL + emitted event) through
  `SagaParticipant` against the same SQL written by hand in the same transaction.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._harness import Case, Context, Group, Target

_SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "sagas" / "order_saga.py"
_counter = itertools.count()


def _sample() -> Any:
    name = "order_saga_bench"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _SAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _e2e(per_round: int, chaos: bool) -> Any:
    from resilience.saga import ChaosHarness, ChaosOptions
    from resilience.testing import FakeClock

    sample = _sample()
    tmp = Path(tempfile.mkdtemp(prefix="bench_saga_"))
    clock = FakeClock(start=1_700_000_000.0)
    orders = sample.orders_service(f"sqlite:///{tmp / 'orders.db'}", clock)
    stock = sample.stock_service(f"sqlite:///{tmp / 'stock.db'}", clock, initial=10**9)
    payments = sample.payments_service(f"sqlite:///{tmp / 'payments.db'}", clock)
    options = (
        ChaosOptions(seed=1, duplicate=0.1, delay=0.1, drop=0.05, crash=0.05)
        if chaos
        else ChaosOptions(seed=1, duplicate=0.0, delay=0.0, drop=0.0, crash=0.0, reorder=False)
    )
    harness = ChaosHarness(clock=clock, options=options)
    for svc in (orders, stock, payments):
        harness.add(svc.participant, svc.engine)

    def run() -> int:
        batch = next(_counter)
        sample.place_orders(
            orders, [(f"o{batch}-{i}", 1, 10) for i in range(per_round)], timeout=3600.0
        )
        harness.run()
        return per_round

    return run


def _step(per_round: int, mode: str) -> Any:
    import sqlalchemy as sa
    from sqlalchemy.orm import sessionmaker

    from resilience.messaging import Message
    from resilience.outbox import Inbox, Outbox
    from resilience.saga import SagaParticipant, StepContext

    tmp = Path(tempfile.mkdtemp(prefix="bench_saga_step_"))
    engine = _sample().make_engine(f"sqlite:///{tmp / 'stock.db'}")
    metadata = sa.MetaData()
    stock = sa.Table(
        "stock",
        metadata,
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("available", sa.Integer, nullable=False),
        sa.Column("reserved", sa.Integer, nullable=False),
    )
    reservations = sa.Table(
        "reservations",
        metadata,
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("qty", sa.Integer, nullable=False),
    )
    outbox, inbox = Outbox(metadata), Inbox(metadata)
    participant = SagaParticipant(
        "stock", sessionmaker=sessionmaker(engine), outbox=outbox, inbox=inbox
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(stock.insert().values(sku="s", available=10**9, reserved=0))
    make = sessionmaker(engine)

    def reserve_sql(session: Any, order_id: str, qty: int) -> Message:
        session.execute(
            stock.update()
            .where(stock.c.sku == "s", stock.c.available >= qty)
            .values(available=stock.c.available - qty, reserved=stock.c.reserved + qty)
        )
        session.execute(reservations.insert().values(order_id=order_id, qty=qty))
        return Message("stock.reserved", {"order_id": order_id}, key=order_id)

    @participant.on("order.created", step="reserve")
    def reserve(ctx: StepContext) -> Message:
        return reserve_sql(ctx.session, ctx.saga_id, ctx.payload["qty"])

    def by_hand(message: Message) -> bool:
        with make() as session, session.begin():
            if not inbox.record(session, "stock", message.id):
                return False
            outbox.add(session, reserve_sql(session, message.key or "", message.payload["qty"]))
            return True

    handle = participant.handle if mode == "saga" else by_hand

    def run() -> int:
        batch = next(_counter)
        for i in range(per_round):
            order_id = f"{mode}-{batch}-{i}"
            handle(Message("order.created", {"qty": 1}, key=order_id))
        return per_round

    return run


def groups(ctx: Context) -> list[Group]:
    e2e = 20 if ctx.quick else 200
    steps = 50 if ctx.quick else 1_000
    rounds = 1 if ctx.quick else 5
    sql = ("sqlalchemy",)
    return [
        Group(
            name="saga.e2e",
            title=f"Order saga end to end: {e2e} orders, 3 SQLite services + in-memory broker (per saga)",
            baseline="order saga, no chaos",
            cases=[
                Case(
                    "order saga, no chaos",
                    setup=lambda: _e2e(e2e, chaos=False),
                    kind="batch",
                    requires=sql,
                    note="relay → broker → inbox step → outbox, for Orders, Stock and Payments",
                ),
                Case(
                    "order saga, chaos (10% dup/delay, 5% drop/crash)",
                    setup=lambda: _e2e(e2e, chaos=True),
                    kind="batch",
                    requires=sql,
                    note="redeliveries and rolled-back crashes cost extra transactions",
                ),
            ],
            rounds=rounds,
            quick_rounds=1,
        ),
        Group(
            name="saga.step",
            title=f"One participant step in SQLite: {steps} order.created → reserve → stock.reserved (per step)",
            baseline="hand-written step (inbox + SQL + outbox)",
            cases=[
                Case(
                    "hand-written step (inbox + SQL + outbox)",
                    setup=lambda: _step(steps, "hand"),
                    kind="batch",
                    requires=sql,
                    note="Inbox.record, guarded UPDATE, INSERT, Outbox.add in one transaction",
                ),
                Case(
                    "SagaParticipant step",
                    setup=lambda: _step(steps, "saga"),
                    kind="batch",
                    requires=sql,
                    note="plus the step record (compensation bookkeeping) and a saga-log row",
                ),
            ],
            targets=[Target("SagaParticipant step", 1.3)],
            rounds=rounds,
            quick_rounds=1,
        ),
    ]
