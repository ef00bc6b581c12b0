"""The main demo on embedded defaults: SQLite files and the in-memory broker, no servers.

Run it with ``make demo`` (or ``python -m examples.demo`` from the project root).
Three failures from real systems, each first without protection and then with it:

1. The Stripe double charge: Payments' database goes offline right after Stripe
   answered, and the message is redelivered.
2. The Correios cascade: the postal API gets slow, then dies, and takes every
   worker of the service that calls it down with it.
3. The lost (or doubled) event: an order commits but its event never reaches
   Invoices, or reaches it three times.

Every scene ends by checking its invariant; the demo exits non-zero if one breaks.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from resilience import (
    DEFAULT_FALLBACK_ON,
    Bulkhead,
    CircuitBreaker,
    CircuitBreakerConfig,
    Fallback,
    Pipeline,
    Timeout,
    idempotent,
)
from resilience.idempotency import SqlStore, current_idempotency, idempotency_table
from resilience.messaging import Consumer, InMemoryBroker, Message
from resilience.outbox import Inbox, Outbox, Relay
from resilience.policies import CircuitBreakerEvent


def heading(title: str) -> None:
    print(f"\n== {title}")


def check(ok: bool, claim: str) -> None:
    print(f"   [{'ok' if ok else 'BROKEN'}] {claim}")
    if not ok:
        raise SystemExit(f"invariant broken: {claim}")


# --------------------------------------------------------------------------- 1. double charge


@dataclass
class FakeStripe:
    """Charges cards; like Stripe, it honours an ``Idempotency-Key`` when given one."""

    charges: list[str] = field(default_factory=list)
    by_key: dict[str, str] = field(default_factory=dict)

    def charge(self, order_id: str, cents: int, idempotency_key: str | None = None) -> str:
        if idempotency_key is not None and idempotency_key in self.by_key:
            return self.by_key[idempotency_key]
        charge_id = f"ch_{len(self.charges) + 1}"
        self.charges.append(order_id)
        if idempotency_key is not None:
            self.by_key[idempotency_key] = charge_id
        return charge_id


class DatabaseOfflineError(Exception):
    """Payments' database went away between Stripe's answer and our write."""


def scene_double_charge(workdir: Path) -> None:
    heading("1. The Stripe double charge: the database dies after Stripe answered")
    engine = sa.create_engine(f"sqlite:///{workdir / 'payments.db'}")
    metadata = sa.MetaData()
    payments = sa.Table(
        "payments",
        metadata,
        sa.Column("order_id", sa.String(40), primary_key=True),
        sa.Column("charge_id", sa.String(40), nullable=False),
    )
    store = SqlStore(engine, idempotency_table(metadata))
    metadata.create_all(engine)
    offline_once = {"naive": True, "protected": True}

    def record(order_id: str, charge_id: str, which: str) -> None:
        if offline_once[which]:
            offline_once[which] = False
            raise DatabaseOfflineError("payments DB offline")
        with engine.begin() as conn:
            conn.execute(payments.insert().values(order_id=order_id, charge_id=charge_id))

    naive_stripe = FakeStripe()

    def naive_charge(order_id: str, cents: int) -> str:
        charge_id = naive_stripe.charge(order_id, cents)
        record(order_id + "-naive", charge_id, "naive")
        return charge_id

    stripe = FakeStripe()

    @idempotent(store, key="order_id", in_progress_ttl=30)
    def charge(order_id: str, cents: int) -> str:
        ctx = current_idempotency()
        charge_id = ctx.get("charged")  # a recovery point left by an earlier attempt
        if charge_id is None:
            charge_id = stripe.charge(order_id, cents, idempotency_key=ctx.key)
            ctx.checkpoint("charged", charge_id)
        record(order_id, charge_id, "protected")
        return str(charge_id)

    def deliver(handler: Callable[[str, int], str], times: int) -> list[str]:
        """The broker redelivers until the handler succeeds, then the client retries anyway."""
        results = []
        for _ in range(times):
            try:
                results.append(handler("order-42", 4990))
            except DatabaseOfflineError:
                print("   payments DB offline after Stripe answered; the message is redelivered")
            except sa.exc.IntegrityError:
                print("   duplicate payment row refused, but only after charging the card again")
        return results

    deliver(naive_charge, 3)
    print(f"   without protection: Stripe charged the card {len(naive_stripe.charges)} times")
    results = deliver(charge, 4)
    print(f"   with @idempotent:   Stripe charged the card {len(stripe.charges)} time(s)")
    check(len(naive_stripe.charges) > 1, "the unprotected handler double-charges")
    check(len(stripe.charges) == 1, "the protected handler charges exactly once")
    check(len(set(results)) == 1, "every retry got the same charge id back")
    engine.dispose()


# --------------------------------------------------------------------------- 2. Correios cascade


class FakeCorreios:
    """The postal API: healthy, then slow, then dead, then healthy again."""

    def __init__(self) -> None:
        self.mode = "healthy"

    def quote(self, cep: str) -> int:
        if self.mode == "slow":
            time.sleep(1.0)
        elif self.mode == "dead":
            time.sleep(0.05)
            raise ConnectionError("Correios unreachable")
        return 1790


def run_phase(
    workers: ThreadPoolExecutor, quote: Callable[[str], object], seconds: float
) -> tuple[float, int]:
    """Quote traffic and an unrelated endpoint share the workers; returns the
    unrelated endpoint's p99 latency and how many quotes were answered."""
    stop = time.monotonic() + seconds
    answered = 0
    latencies: list[float] = []
    quotes = []
    while time.monotonic() < stop:
        quotes.extend(workers.submit(quote, "01001-000") for _ in range(4))
        started = time.monotonic()
        workers.submit(lambda: "order page").result()
        latencies.append(time.monotonic() - started)
        time.sleep(0.02)
    for future in quotes:
        if future.exception() is None:  # the naive client's errors count as unanswered
            answered += 1
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0]
    return p99, answered


def scene_correios_cascade() -> None:
    heading("2. The Correios cascade: a slow postal API and 8 shared workers")
    correios = FakeCorreios()
    transitions: list[str] = []

    def on_event(event: CircuitBreakerEvent) -> None:
        if event.kind == "state_change":
            transitions.append(
                f"{event.from_state.value if event.from_state else '?'} -> {event.state.value}"
            )

    breaker = CircuitBreaker(
        "correios",
        CircuitBreakerConfig(
            window_size=10, minimum_calls=5, failure_rate_threshold=50, open_duration=0.5
        ),
        listeners=[on_event],
    )
    flat_rate = Fallback(value=2500, on=(*DEFAULT_FALLBACK_ON, ConnectionError))
    pipeline = Pipeline(flat_rate, breaker, Bulkhead(max_concurrent=2), Timeout(0.2), name="quote")
    protected = pipeline(correios.quote)

    report = []
    with ThreadPoolExecutor(8) as workers:
        for mode in ("slow", "dead", "healthy"):
            correios.mode = mode
            naive_p99, _ = run_phase(workers, correios.quote, 1.0)
            # let the naive phase's stuck calls drain before measuring the protected one
            workers.submit(time.sleep, 0).result()
            time.sleep(1.05 if mode == "slow" else 0.1)
            protected_p99, answered = run_phase(workers, protected, 1.0)
            report.append((mode, naive_p99, protected_p99, answered))
            print(
                f"   Correios {mode:8} unrelated endpoint p99: without policies "
                f"{naive_p99 * 1000:7.1f} ms, with the pipeline {protected_p99 * 1000:6.1f} ms; "
                f"quotes answered {answered}"
            )
        time.sleep(0.6)  # the open period passes; the next calls are trials
        for _ in range(5):
            protected("01001-000")
    counted = Counter(transitions)
    print("   breaker transitions: " + ", ".join(f"{t} x{n}" for t, n in counted.items()))
    slow = report[0]
    check(slow[1] > 0.3, "without policies a slow API blocks the unrelated endpoint")
    check(all(r[2] < 0.15 for r in report), "with the pipeline the unrelated endpoint stays fast")
    check("closed -> open" in transitions, "the breaker opened")
    check(breaker.state.value == "closed", "the breaker closed again once Correios recovered")


# --------------------------------------------------------------------------- 3. outbox + inbox


def scene_outbox(workdir: Path) -> None:
    heading("3. Orders -> Invoices: nothing lost, nothing applied twice")
    orders_db = sa.create_engine(f"sqlite:///{workdir / 'orders.db'}")
    orders_meta = sa.MetaData()
    orders = sa.Table(
        "orders",
        orders_meta,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("total_cents", sa.Integer, nullable=False),
    )
    outbox = Outbox(orders_meta)
    orders_meta.create_all(orders_db)

    invoices_db = sa.create_engine(f"sqlite:///{workdir / 'invoices.db'}")
    invoices_meta = sa.MetaData()
    invoices = sa.Table(
        "invoices",
        invoices_meta,
        sa.Column("order_id", sa.String(40), primary_key=True),
        sa.Column("total_cents", sa.Integer, nullable=False),
    )
    inbox = Inbox(invoices_meta)
    invoices_meta.create_all(invoices_db)

    committed: set[str] = set()
    for n in range(1, 51):
        order_id = f"order-{n}"
        try:
            with Session(orders_db) as session, session.begin():
                session.execute(orders.insert().values(id=order_id, total_cents=n * 100))
                outbox.add(
                    session,
                    Message("order.closed", {"id": order_id, "cents": n * 100}, key=order_id),
                )
                if n % 7 == 0:
                    raise RuntimeError("payment provider said no; the order rolls back")
            committed.add(order_id)
        except RuntimeError:
            pass
    print(f"   {len(committed)} orders committed, {50 - len(committed)} rolled back")

    broker = InMemoryBroker(partitions=3)
    broker.fail_publishes(times=2)  # the broker is down for the relay's first two batches
    broker.duplicate_deliveries(times=20)  # and later redelivers 20 records
    relay = Relay(orders_db, outbox, broker.publisher(), batch_size=20)
    rounds = failed_rounds = 0
    while relay.lag().pending and rounds < 100:
        rounds += 1
        result = relay.run_once()
        if result.error:
            failed_rounds += 1
            print(
                f"   relay: publish failed ({result.error}); rows stay in the outbox and back off"
            )
        time.sleep(0.02)

    def issue_invoice(session: Session, message: Message) -> None:
        session.execute(
            invoices.insert().values(
                order_id=message.payload["id"], total_cents=message.payload["cents"]
            )
        )

    handler = inbox.handler(
        consumer="invoices", sessionmaker=sessionmaker(invoices_db), fn=issue_invoice
    )
    seen = {"calls": 0}

    def counting(message: Message) -> bool:
        seen["calls"] += 1
        return handler(message)

    consumer = Consumer(broker.subscribe("order", group="invoices"), counting, name="invoices")
    while broker.pending("invoices", "order"):
        consumer.run_once(0.1)
    with invoices_db.connect() as conn:
        issued = {row.order_id for row in conn.execute(sa.select(invoices.c.order_id))}
    print(
        f"   relay rounds {rounds} ({failed_rounds} failed); deliveries to Invoices {seen['calls']} "
        f"(with duplicates); invoices issued {len(issued)}"
    )
    check(issued == committed, "exactly one invoice per committed order, none for rolled-back ones")
    check(seen["calls"] > len(committed), "duplicates were delivered, and absorbed by the inbox")
    orders_db.dispose()
    invoices_db.dispose()


def main() -> None:
    started = time.monotonic()
    print("resilience demo: three failures from real systems, without and with the toolkit")
    with tempfile.TemporaryDirectory(prefix="resilience-demo-") as tmp:
        scene_double_charge(Path(tmp))
        scene_correios_cascade()
        scene_outbox(Path(tmp))
    print(f"\nall invariants held ({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
