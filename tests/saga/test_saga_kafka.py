"""The order saga on real infrastructure: PostgreSQL per service, the Kafka protocol between.

Every service runs as it would in production: an outbox relay thread, a
consumer thread and a timer scheduler thread (database clock). Chaos comes
from the handlers: random crashes before commit (the consumer retries) and
duplicate deliveries (the inbox absorbs them).
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from resilience.messaging import (
    Consumer,
    KafkaPublisher,
    KafkaSubscription,
    Message,
    RetryBackoff,
    TopicRouter,
)
from resilience.outbox import Relay
from resilience.saga import InjectedCrash, SagaTimerScheduler

ORDERS = 100


def test_order_saga_postgres_and_kafka(
    order_saga: ModuleType,
    pg_schema: Callable[[str], str],
    kafka_topic: Callable[..., str],
    kafka_bootstrap: str,
    kafka_consumer_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No pooling: four threads per service open and close their own connections,
    # and nothing stays open past the test.
    monkeypatch.setattr(
        order_saga, "make_engine", lambda url: sa.create_engine(url, poolclass=NullPool)
    )
    topics = {prefix: kafka_topic(prefix, partitions=3) for prefix in ("order", "stock", "payment")}
    router = TopicRouter(default=lambda m: topics[m.type.split(".", 1)[0]])
    initial = ORDERS // 3
    orders = order_saga.orders_service(pg_schema("orders"))
    stock = order_saga.stock_service(pg_schema("stock"), initial=initial)
    payments = order_saga.payments_service(pg_schema("payments"), decline_rate=0.25)
    services = (orders, stock, payments)
    rng = random.Random(3)
    rng_lock = threading.Lock()

    def chaos(message: Message) -> None:
        with rng_lock:
            crash = rng.random() < 0.1
        if crash:
            raise InjectedCrash(message.id)

    stop = threading.Event()
    threads: list[threading.Thread] = []
    relays: list[Relay] = []
    schedulers: list[SagaTimerScheduler] = []
    publishers: list[KafkaPublisher] = []
    try:
        _start_services(
            services,
            router,
            rng,
            rng_lock,
            chaos,
            stop,
            threads,
            relays,
            schedulers,
            publishers,
            kafka_bootstrap,
            kafka_consumer_config,
        )
        _run_and_check(order_saga, orders, stock, payments, initial)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for relay in relays:
            relay.stop()
        for publisher in publishers:
            publisher.close()
        for scheduler in schedulers:
            scheduler.stop()
        for svc in services:
            svc.engine.dispose()
        relays.clear()
        publishers.clear()
        gc.collect()  # release librdkafka handles and pooled connections inside the test
    table = orders.metadata.tables["orders"]
    with orders.engine.connect() as conn:
        counts = dict(
            conn.execute(sa.select(table.c.status, sa.func.count()).group_by(table.c.status)).all()
        )
    assert counts.get("confirmed", 0) > 0
    assert counts.get("cancelled", 0) > 0


def _start_services(
    services: Any,
    router: Any,
    rng: random.Random,
    rng_lock: threading.Lock,
    chaos: Any,
    stop: threading.Event,
    threads: list[threading.Thread],
    relays: list[Relay],
    schedulers: list[SagaTimerScheduler],
    publishers: list[KafkaPublisher],
    kafka_bootstrap: str,
    kafka_consumer_config: dict[str, Any],
) -> None:
    for svc in services:
        participant = svc.participant
        participant._crash_hook = chaos
        publishers.append(KafkaPublisher(kafka_bootstrap, router=router, timeout=10.0))
        relays.append(
            Relay(
                svc.engine,
                participant.outbox,
                publishers[-1],
                idle_max=0.2,
                listen=False,
            ).start()
        )
        config = {
            **kafka_consumer_config,
            "group.id": f"{kafka_consumer_config['group.id']}-{participant.name}",
        }
        subscription = KafkaSubscription(
            config, participant.destinations(router), config["group.id"]
        )

        def handler(message: Message, p: Any = participant) -> None:
            p.handle(message)
            with rng_lock:
                again = rng.random() < 0.1
            if again:
                p.handle(message)  # a redelivery: absorbed by the inbox

        consumer = Consumer(
            subscription,
            handler,
            name=participant.name,
            backoff=RetryBackoff(initial=0.01, maximum=0.05, jitter=0.01),
            dead_letter_after=50,
            permanent_errors=participant.permanent_errors,
            poll_timeout=0.2,
        )
        threads.append(threading.Thread(target=consumer.run, args=(stop,), daemon=True))
        scheduler = SagaTimerScheduler(participant, interval=0.2)
        schedulers.append(scheduler)
        scheduler.start()
    for t in threads:
        t.start()


def _run_and_check(
    order_saga: ModuleType, orders: Any, stock: Any, payments: Any, initial: int
) -> None:
    # A few orders get a deadline too short to make it: the timeout path races the answers.
    order_saga.place_orders(
        orders, [(f"order-{i}", 1, 10) for i in range(ORDERS - 10)], timeout=60.0
    )
    order_saga.place_orders(
        orders, [(f"order-{i}", 1, 10) for i in range(ORDERS - 10, ORDERS)], timeout=0.3
    )
    table = orders.metadata.tables["orders"]
    deadline = time.monotonic() + 25
    pending = ORDERS
    while time.monotonic() < deadline:
        with orders.engine.connect() as conn:
            pending = conn.execute(
                sa.select(sa.func.count()).where(table.c.status == "pending")
            ).scalar_one()
        if pending == 0:
            break
        time.sleep(0.2)
    assert pending == 0, f"{pending} orders still pending"
    # Let the last compensations (order.cancelled -> release / refund) land.
    settle = time.monotonic() + 10
    while True:
        try:
            order_saga.check_invariants(orders, stock, payments, initial=initial)
            return
        except AssertionError:
            if time.monotonic() > settle:
                raise
            time.sleep(0.2)
