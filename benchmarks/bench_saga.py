"""Sagas: end-to-end throughput, and the per-step cost of the saga machinery.

- ``saga.e2e``: whole order sagas (Orders, Stock, Payments, three SQLite files,
  the in-memory broker, outbox relays) completed per second, calm and under chaos.
- ``saga.kafka``: the same sagas with each service on PostgreSQL and the
  Kafka-protocol broker between them, wired as in production (relay thread,
  two consumers per service, timer scheduler).
- ``saga.step`` / ``saga.step.pg``: one participant step (inbox + business SQL +
  emitted event) through `SagaParticipant` against the same SQL written by hand
  in the same transaction, on SQLite and on PostgreSQL.

Every end-to-end round also prints its throughput in sagas/s.
"""

from __future__ import annotations

import importlib.util
import itertools
import secrets
import sys
import tempfile
import time
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
        started = time.perf_counter()
        sample.place_orders(
            orders, [(f"o{batch}-{i}", 1, 10) for i in range(per_round)], timeout=3600.0
        )
        harness.run()
        _throughput("in-memory + SQLite" + (", chaos" if chaos else ""), per_round, started)
        return per_round

    return run


def _throughput(label: str, sagas: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    print(f"    {label}: {sagas} sagas in {elapsed:.2f} s = {sagas / elapsed:,.0f} sagas/s")


def _schema_url(ctx: Context, stem: str) -> str:
    """A fresh schema in the benchmark database, and a URL whose connections use it."""
    import sqlalchemy as sa

    url = ctx.postgres_url()
    name = f"{stem}_{secrets.token_hex(3)}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    engine.dispose()
    return f"{url}?options=-csearch_path%3D{name}"


class _KafkaSagas:
    """Order sagas over the Kafka protocol, each service on its PostgreSQL schema.

    Each call places *per_round* orders in batches and returns when every one is
    confirmed or cancelled: sagas completed end to end.
    """

    def __init__(self, ctx: Context, per_round: int) -> None:
        from resilience.messaging import TopicRouter

        sample = _sample()
        broker = ctx.kafka()
        token = secrets.token_hex(3)
        topics = {
            p: broker.create_topic(f"bench-{p}-{token}", 4) for p in ("order", "stock", "payment")
        }
        router = TopicRouter(default=lambda m: topics[m.type.split(".", 1)[0]])
        self.sample = sample
        self.per_round = per_round
        self.orders = sample.orders_service(_schema_url(ctx, "orders"))
        self.services = (
            self.orders,
            sample.stock_service(_schema_url(ctx, "stock"), initial=10**9),
            sample.payments_service(_schema_url(ctx, "payments"), decline_rate=0.2),
        )
        config = {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": f"bench-{token}",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
        self.deployments = [
            sample.run_on_kafka(svc, router=router, consumer_config=config, consumers=2)
            for svc in self.services
        ]
        self.place(20)  # warm up: consumer groups joined, connections pooled

    def place(self, n: int) -> None:
        import sqlalchemy as sa

        batch = next(_counter)
        plan = [(f"k{batch}-{i}", 1, 10) for i in range(n)]
        for first in range(0, n, 100):
            self.sample.place_orders(self.orders, plan[first : first + 100], timeout=3600.0)
        table = self.orders.metadata.tables["orders"]
        pending = sa.select(sa.func.count()).where(table.c.status == "pending")
        deadline = time.monotonic() + 120
        while True:
            with self.orders.engine.connect() as conn:
                if conn.execute(pending).scalar_one() == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("order sagas did not complete within 120 s")
            time.sleep(0.01)

    def __call__(self) -> int:
        started = time.perf_counter()
        self.place(self.per_round)
        _throughput("Kafka + PostgreSQL", self.per_round, started)
        return self.per_round

    def close(self) -> None:
        for deployment in self.deployments:
            deployment.stop.set()
        for deployment in self.deployments:
            deployment.close()
        for svc in self.services:
            svc.engine.dispose()


def _step(per_round: int, mode: str, url: str | None = None) -> Any:
    import sqlalchemy as sa
    from sqlalchemy.orm import sessionmaker

    from resilience.messaging import Message
    from resilience.outbox import Inbox, Outbox
    from resilience.saga import SagaParticipant, StepContext

    if url is None:
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench_saga_step_')) / 'stock.db'}"
    engine = _sample().make_engine(url)
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


def _step_group(name: str, where: str, steps: int, rounds: int, url: Any) -> Group:
    """Hand-written step vs `SagaParticipant` step; *url* gives each case its own database."""
    requires = ("sqlalchemy",) if where == "SQLite" else ("sqlalchemy", "psycopg")
    return Group(
        name=name,
        title=f"One participant step in {where}: {steps} order.created → reserve → stock.reserved (per step)",
        baseline="hand-written step (inbox + SQL + outbox)",
        cases=[
            Case(
                "hand-written step (inbox + SQL + outbox)",
                setup=lambda: _step(steps, "hand", url("hand")),
                kind="batch",
                requires=requires,
                note="Inbox.record, guarded UPDATE, INSERT, Outbox.add in one transaction",
            ),
            Case(
                "SagaParticipant step",
                setup=lambda: _step(steps, "saga", url("saga")),
                kind="batch",
                requires=requires,
                note="plus the step record and its saga-log row (one statement on PostgreSQL)",
            ),
        ],
        targets=[Target("SagaParticipant step", 1.3)],
        rounds=rounds,
        quick_rounds=1,
    )


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
            name="saga.kafka",
            title=f"Order saga end to end: {e2e} orders, 3 PostgreSQL services + Kafka protocol (per saga)",
            baseline="order saga over Kafka, no chaos",
            cases=[
                Case(
                    "order saga over Kafka, no chaos",
                    setup=lambda: _KafkaSagas(ctx, e2e),
                    kind="batch",
                    requires=("sqlalchemy", "psycopg", "confluent_kafka"),
                    teardown=lambda sagas: sagas.close(),
                    note="relay thread, 2 consumers and a timer scheduler per service; 4 partitions",
                ),
            ],
            rounds=rounds,
            quick_rounds=1,
        ),
        _step_group("saga.step", "SQLite", steps, rounds, lambda _: None),
        _step_group(  # a commit waits for the WAL flush here: fewer steps, same ratio
            "saga.step.pg", "PostgreSQL", steps // 4, rounds, lambda case: _schema_url(ctx, case)
        ),
    ]
