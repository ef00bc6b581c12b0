"""The order saga: Orders, Stock and Payments, each with its own database.

Run it: ``python docs/sagas/order_saga.py`` (SQLite files in a temporary
directory, the in-memory broker, chaos on). The test suite imports `build`
and runs the same services against PostgreSQL and Kafka too.
"""

from __future__ import annotations

import tempfile
import threading
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from resilience.messaging import (
    Consumer,
    KafkaPublisher,
    KafkaSubscription,
    Message,
    RetryBackoff,
    Router,
)
from resilience.outbox import Inbox, Outbox, Relay
from resilience.saga import (
    ChaosHarness,
    ChaosOptions,
    ChaosReport,
    SagaDefinition,
    SagaParticipant,
    SagaStore,
    SagaTimerScheduler,
    StepContext,
)
from resilience.testing import FakeClock

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

# --8<-- [start:definition]
ORDER_SAGA = SagaDefinition(
    "order",
    states={"pending", "stock_reserved", "payment_approved", "confirmed", "cancelled"},
    initial="pending",
    transitions={
        ("pending", "stock.reserved"): "stock_reserved",
        ("pending", "payment.approved"): "payment_approved",
        ("pending", "stock.unavailable"): "cancelled",
        ("pending", "payment.declined"): "cancelled",
        ("pending", "saga.timeout"): "cancelled",
        ("stock_reserved", "payment.approved"): "confirmed",
        ("stock_reserved", "payment.declined"): "cancelled",
        ("stock_reserved", "saga.timeout"): "cancelled",
        ("payment_approved", "stock.reserved"): "confirmed",
        ("payment_approved", "stock.unavailable"): "cancelled",
        ("payment_approved", "saga.timeout"): "cancelled",
        # Late answers to a cancelled order are accepted and logged; the
        # participants undo their own step when they see order.cancelled.
        ("cancelled", "stock.reserved"): "cancelled",
        ("cancelled", "stock.unavailable"): "cancelled",
        ("cancelled", "payment.approved"): "cancelled",
        ("cancelled", "payment.declined"): "cancelled",
    },
    terminal={"confirmed", "cancelled"},
)
# --8<-- [end:definition]

SKU = "sku-1"


def make_engine(url: str) -> sa.Engine:
    """An engine; SQLite gets WAL and relaxed fsync (a demo, not a bank)."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.close()

    return engine


@dataclass
class Service:
    """One service: its database, its tables and its saga participant."""

    engine: sa.Engine
    metadata: sa.MetaData
    session: sessionmaker[Session]
    participant: SagaParticipant


def _service(
    name: str,
    url: str,
    clock: FakeClock | None,
    tables: Callable[[sa.MetaData], None],
    definition: SagaDefinition | None = None,
) -> Service:
    engine = make_engine(url)
    metadata = sa.MetaData()
    tables(metadata)
    outbox, inbox = Outbox(metadata), Inbox(metadata)
    store = SagaStore(metadata, now=clock.monotonic if clock else None)
    factory = sessionmaker(engine)
    participant = SagaParticipant(
        name, sessionmaker=factory, outbox=outbox, inbox=inbox, definition=definition, store=store
    )
    metadata.create_all(engine)
    return Service(engine, metadata, factory, participant)


# --8<-- [start:orders]
def orders_service(url: str, clock: FakeClock | None = None) -> Service:
    """Orders owns the saga: a pending order is the semantic lock."""
    svc = _service(
        "orders",
        url,
        clock,
        lambda md: sa.Table(
            "orders",
            md,
            sa.Column("order_id", sa.String(64), primary_key=True),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("qty", sa.Integer, nullable=False),
            sa.Column("amount", sa.Integer, nullable=False),
        ),
        ORDER_SAGA,
    )
    orders = svc.metadata.tables["orders"]
    participant = svc.participant

    @participant.entered("confirmed")
    def confirmed(ctx: StepContext) -> None:
        ctx.session.execute(
            orders.update().where(orders.c.order_id == ctx.saga_id).values(status="confirmed")
        )
        ctx.emit("order.confirmed", {"order_id": ctx.saga_id})

    @participant.entered("cancelled")
    def cancelled(ctx: StepContext) -> None:
        ctx.session.execute(
            orders.update().where(orders.c.order_id == ctx.saga_id).values(status="cancelled")
        )
        ctx.emit("order.cancelled", {"order_id": ctx.saga_id, "reason": ctx.message.type})

    return svc


def place_orders(
    svc: Service,
    orders: list[tuple[str, int, int]],
    *,
    timeout: float,
    tracer: Tracer | None = None,
) -> None:
    """Create orders (id, qty, amount): row + saga + timer + order.created, atomically.

    With a *tracer*, each order gets a root span of its own (as if each came in
    its own request): the event and the timer capture it, so one saga is one trace.
    """
    table = svc.metadata.tables["orders"]
    with svc.session() as session, session.begin():
        for order_id, qty, amount in orders:
            with _order_span(tracer, order_id):
                session.execute(
                    table.insert().values(
                        order_id=order_id, status="pending", qty=qty, amount=amount
                    )
                )
                svc.participant.start(
                    session,
                    order_id,
                    data={"qty": qty, "amount": amount},
                    timeout=timeout,
                    emit=Message(
                        "order.created",
                        {"order_id": order_id, "sku": SKU, "qty": qty, "amount": amount},
                        key=order_id,
                    ),
                )


def _order_span(tracer: Tracer | None, order_id: str) -> AbstractContextManager[object]:
    if tracer is None:
        return nullcontext()
    from opentelemetry.context import Context

    return tracer.start_as_current_span(
        "place order", context=Context(), attributes={"order.id": order_id}
    )


# --8<-- [end:orders]


# --8<-- [start:stock]
def stock_service(url: str, clock: FakeClock | None = None, *, initial: int = 100) -> Service:
    """Stock reserves with a commutative, guarded update and releases on cancel."""

    def tables(md: sa.MetaData) -> None:
        sa.Table(
            "stock",
            md,
            sa.Column("sku", sa.String(64), primary_key=True),
            sa.Column("available", sa.Integer, nullable=False),
            sa.Column("reserved", sa.Integer, nullable=False),
        )
        sa.Table(
            "reservations",
            md,
            sa.Column("order_id", sa.String(64), primary_key=True),
            sa.Column("qty", sa.Integer, nullable=False),
            sa.Column("status", sa.String(20), nullable=False),
        )

    svc = _service("stock", url, clock, tables)
    stock, reservations = svc.metadata.tables["stock"], svc.metadata.tables["reservations"]
    with svc.engine.begin() as conn:
        conn.execute(stock.delete())
        conn.execute(stock.insert().values(sku=SKU, available=initial, reserved=0))
    participant = svc.participant

    @participant.on("order.created", step="reserve")
    def reserve(ctx: StepContext) -> None:
        qty = int(ctx.payload["qty"])
        taken = ctx.session.execute(
            stock.update()
            .where(stock.c.sku == SKU, stock.c.available >= qty)
            .values(available=stock.c.available - qty, reserved=stock.c.reserved + qty)
        ).rowcount
        if taken:
            ctx.session.execute(
                reservations.insert().values(order_id=ctx.saga_id, qty=qty, status="reserved")
            )
            ctx.emit("stock.reserved", {"order_id": ctx.saga_id, "qty": qty})
        else:
            ctx.emit("stock.unavailable", {"order_id": ctx.saga_id, "qty": qty})

    @participant.compensate("order.cancelled", step="reserve")
    def release(ctx: StepContext) -> None:
        row = ctx.session.execute(
            sa.select(reservations.c.qty).where(
                reservations.c.order_id == ctx.saga_id, reservations.c.status == "reserved"
            )
        ).first()
        if row is None:
            return  # the step answered stock.unavailable: nothing to undo
        ctx.session.execute(
            stock.update()
            .where(stock.c.sku == SKU)
            .values(available=stock.c.available + row.qty, reserved=stock.c.reserved - row.qty)
        )
        ctx.session.execute(
            reservations.update()
            .where(reservations.c.order_id == ctx.saga_id)
            .values(status="released")
        )

    return svc


# --8<-- [end:stock]


# --8<-- [start:payments]
def payments_service(
    url: str, clock: FakeClock | None = None, *, decline_rate: float = 0.2
) -> Service:
    """Payments charges (or declines) and refunds a charged order that was cancelled."""

    def tables(md: sa.MetaData) -> None:
        sa.Table(
            "charges",
            md,
            sa.Column("order_id", sa.String(64), primary_key=True),
            sa.Column("amount", sa.Integer, nullable=False),
            sa.Column("status", sa.String(20), nullable=False),
        )
        sa.Table(
            "refunds",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("order_id", sa.String(64), nullable=False),
            sa.Column("amount", sa.Integer, nullable=False),
        )

    svc = _service("payments", url, clock, tables)
    charges, refunds = svc.metadata.tables["charges"], svc.metadata.tables["refunds"]
    participant = svc.participant

    def declines(order_id: str) -> bool:  # deterministic "card declined" per order
        return zlib.crc32(order_id.encode()) % 1000 < decline_rate * 1000

    @participant.on("order.created", step="charge")
    def charge(ctx: StepContext) -> None:
        amount = int(ctx.payload["amount"])
        status = "declined" if declines(ctx.saga_id) else "charged"
        ctx.session.execute(
            charges.insert().values(order_id=ctx.saga_id, amount=amount, status=status)
        )
        event = "payment.declined" if status == "declined" else "payment.approved"
        ctx.emit(event, {"order_id": ctx.saga_id, "amount": amount})

    @participant.compensate("order.cancelled", step="charge")
    def refund(ctx: StepContext) -> None:
        row = ctx.session.execute(
            sa.select(charges.c.amount).where(
                charges.c.order_id == ctx.saga_id, charges.c.status == "charged"
            )
        ).first()
        if row is None:
            return  # declined: nothing was taken
        ctx.session.execute(
            charges.update().where(charges.c.order_id == ctx.saga_id).values(status="refunded")
        )
        ctx.session.execute(refunds.insert().values(order_id=ctx.saga_id, amount=row.amount))

    return svc


# --8<-- [end:payments]


# --8<-- [start:invariants]
def check_invariants(orders: Service, stock: Service, payments: Service, *, initial: int) -> None:
    """What must hold once every saga has settled, whatever chaos happened."""
    o, st = orders.metadata.tables, stock.metadata.tables
    pay = payments.metadata.tables
    with orders.engine.connect() as conn:
        status = {r.order_id: (r.status, r.qty) for r in conn.execute(sa.select(o["orders"]))}
        sagas = {
            r.saga_id: r.state
            for r in conn.execute(sa.select(orders.participant.store.tables.instances))
        }
    assert all(s in {"confirmed", "cancelled"} for s, _ in status.values()), "unfinished order"
    assert {k: s for k, (s, _) in status.items()} == sagas, "order rows disagree with sagas"
    confirmed = {k for k, (s, _) in status.items() if s == "confirmed"}
    with stock.engine.connect() as conn:
        row = conn.execute(sa.select(st["stock"])).one()
        held = {
            r.order_id: r.qty
            for r in conn.execute(
                sa.select(st["reservations"]).where(st["reservations"].c.status == "reserved")
            )
        }
    assert row.available >= 0, "stock went negative"
    assert row.reserved >= 0, "reservations went negative"
    assert row.available + row.reserved == initial, "stock was created or lost"
    assert set(held) == confirmed, "a reservation is held by a non-confirmed order (or missing)"
    assert row.reserved == sum(held.values())
    with payments.engine.connect() as conn:
        charge = {r.order_id: r.status for r in conn.execute(sa.select(pay["charges"]))}
        refunded: dict[str, int] = {}
        for r in conn.execute(sa.select(pay["refunds"])):
            refunded[r.order_id] = refunded.get(r.order_id, 0) + 1
    charged_now = {k for k, s in charge.items() if s == "charged"}
    assert charged_now == confirmed, "an order is charged but not confirmed (or the reverse)"
    for order_id, state in charge.items():
        expected = 1 if state == "refunded" else 0
        assert refunded.get(order_id, 0) == expected, f"{order_id}: refunded {refunded}"
    assert all(status[k][0] == "cancelled" for k in refunded), "refunded a confirmed order"


# --8<-- [end:invariants]


# --8<-- [start:deploy]
@dataclass
class Deployment:
    """One service running as in production: outbox relay, consumers, timer scheduler."""

    relay: Relay
    publisher: KafkaPublisher
    consumers: list[threading.Thread]
    scheduler: SagaTimerScheduler
    stop: threading.Event

    def close(self, timeout: float = 15.0) -> None:
        """Finish the messages in hand, then stop publishing and firing timers."""
        self.stop.set()
        for thread in self.consumers:
            thread.join(timeout)
        try:
            self.relay.stop()
        finally:
            self.publisher.close()
            self.scheduler.stop()


def run_on_kafka(
    svc: Service,
    *,
    router: Router,
    consumer_config: dict[str, Any],
    consumers: int = 1,
    handler: Callable[[Message], object] | None = None,
) -> Deployment:
    """Start *svc* against a Kafka-protocol broker: its relay publishes what its
    steps committed, *consumers* members of one consumer group (named after the
    service) feed it the events it handles, and its scheduler fires its timers."""
    participant = svc.participant
    bootstrap = consumer_config["bootstrap.servers"]
    publisher = KafkaPublisher(bootstrap, router=router, timeout=10.0)
    relay = Relay(svc.engine, participant.outbox, publisher, idle_max=0.1, listen=False).start()
    group = f"{consumer_config['group.id']}-{participant.name}"
    stop = threading.Event()
    threads = []
    for _ in range(consumers):
        subscription = KafkaSubscription(
            {**consumer_config, "group.id": group}, participant.destinations(router), group
        )
        consumer = Consumer(
            subscription,
            handler or participant.handle,
            name=participant.name,
            backoff=RetryBackoff(initial=0.01, maximum=0.1, jitter=0.01),
            dead_letter_after=100,
            permanent_errors=participant.permanent_errors,
            poll_timeout=0.1,
        )
        threads.append(threading.Thread(target=consumer.run, args=(stop,), daemon=True))
    scheduler = SagaTimerScheduler(participant, interval=0.1)
    scheduler.start()
    for thread in threads:
        thread.start()
    return Deployment(relay, publisher, threads, scheduler, stop)


# --8<-- [end:deploy]


# --8<-- [start:chaos]
def run_under_chaos(
    orders: Service,
    stock: Service,
    payments: Service,
    clock: FakeClock,
    *,
    n: int,
    initial: int,
    seed: int = 7,
) -> ChaosReport:
    """Place *n* orders against *initial* units of stock and drive every saga to its end."""
    harness = ChaosHarness(clock=clock, options=ChaosOptions(seed=seed, crash=0.05, tick=0.002))
    for svc in (orders, stock, payments):
        harness.add(svc.participant, svc.engine)
    place_orders(orders, [(f"order-{i}", 1, 10) for i in range(n)], timeout=30.0)
    return harness.run(
        invariants=[lambda: check_invariants(orders, stock, payments, initial=initial)]
    )


# --8<-- [end:chaos]


def main(n: int = 200, seed: int = 7) -> None:
    """Run *n* orders through the saga under chaos and print what happened."""
    clock = FakeClock(start=1_700_000_000.0)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        orders = orders_service(f"sqlite:///{base / 'orders.db'}", clock)
        stock = stock_service(f"sqlite:///{base / 'stock.db'}", clock, initial=n // 2)
        payments = payments_service(f"sqlite:///{base / 'payments.db'}", clock)
        print(run_under_chaos(orders, stock, payments, clock, n=n, initial=n // 2, seed=seed))
        for svc in (orders, stock, payments):
            svc.engine.dispose()


if __name__ == "__main__":
    main()
