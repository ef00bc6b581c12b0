"""Faults: the relay killed mid-batch, the broker frozen, the database cut off.

After recovery every committed event is delivered at least once, and through
the inbox every effect is applied exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from resilience.messaging import InMemoryBroker, Message, RawMessage, decode_message
from resilience.outbox import Inbox, Outbox
from resilience.testing import KafkaBroker, TcpProxy

from .conftest import make_relay, wait_until

HERE = Path(__file__).parent
SRC = HERE.parent.parent / "src"


def _events(keys: int, per_key: int) -> list[Message]:
    order = [k for k in range(keys) for _ in range(per_key)]
    random.Random(3).shuffle(order)
    seq: dict[int, int] = defaultdict(int)
    out = []
    for k in order:
        out.append(Message("order.step", {"seq": seq[k]}, key=f"order-{k}"))
        seq[k] += 1
    return out


def _consume_kafka(
    config: dict[str, Any], topic: str, want: set[str], timeout: float
) -> list[Message]:
    from confluent_kafka import Consumer

    consumer = Consumer(config)
    consumer.subscribe([topic])
    got: list[Message] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while not want <= seen and time.monotonic() < deadline:
            for record in consumer.consume(500, 0.5):
                if record.error():
                    continue
                message = decode_message(
                    RawMessage(record.key(), record.value(), record.headers() or [])
                )
                got.append(message)
                seen.add(message.id)
    finally:
        consumer.close()
    return got


def _apply_through_inbox(
    engine: sa.Engine, inbox: Inbox, orders: sa.Table, messages: list[Message]
) -> dict[str, list[int]]:
    """Feed the stream (duplicates and all) to an inbox-protected handler; return each
    key's applied sequence numbers, in the order they were applied."""
    applied: dict[str, list[int]] = defaultdict(list)

    def effect(session: Session, message: Message) -> None:
        session.execute(
            orders.update().where(orders.c.id == "total").values(effects=orders.c.effects + 1)
        )
        applied[message.key or ""].append(message.payload["seq"])

    handler = inbox.handler(consumer="billing", sessionmaker=sessionmaker(engine), fn=effect)
    with engine.begin() as conn:
        conn.execute(orders.insert().values(id="total", total=0))
    for message in messages:
        handler(message)
    return applied


def _assert_exactly_once_in_order(
    engine: sa.Engine, orders: sa.Table, applied: dict[str, list[int]], events: list[Message]
) -> None:
    per_key: dict[str, int] = defaultdict(int)
    for e in events:
        per_key[e.key or ""] += 1
    for key, count in per_key.items():
        assert applied[key] == list(range(count)), f"{key}: {applied[key][:20]}"
    with engine.connect() as conn:
        effects = conn.execute(
            sa.select(orders.c.effects).where(orders.c.id == "total")
        ).scalar_one()
    assert effects == len(events)


@pytest.mark.slow
def test_relay_sigkilled_repeatedly_mid_batch_loses_nothing(
    pg_engine: sa.Engine,
    postgres_url: str,
    pg_tables: tuple[Outbox, Inbox, sa.Table],
    kafka_broker: KafkaBroker,
    kafka_topic: Callable[..., str],
    kafka_consumer_config: dict[str, Any],
) -> None:
    outbox, inbox, orders = pg_tables
    topic = kafka_topic("outbox-kill", partitions=3)
    events = _events(keys=20, per_key=40)
    for start in range(0, len(events), 300):
        with pg_engine.begin() as conn:
            outbox.add_many(conn, events[start : start + 300])

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [
        sys.executable,
        str(HERE / "relay_main.py"),
        "outbox",
        "relay",
        "--url",
        postgres_url,
        "--table",
        str(outbox.table.name),
        "--kafka",
        kafka_broker.bootstrap_servers,
        "--topic",
        topic,
        "--batch-size",
        "20",
    ]
    rng = random.Random(11)

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # Two relays run at once (SKIP LOCKED); we SIGKILL one in the middle of its
    # work three times, starting a replacement each time, so a standby is
    # always warm and the test does not wait on interpreter start-up.
    relays = [spawn(), spawn()]
    kills = 0
    pending_before = _pending(pg_engine, outbox)
    try:
        while kills < 3:
            wait_until(
                lambda before=pending_before: _pending(pg_engine, outbox) < before,
                timeout=20,
                interval=0.005,
            )
            time.sleep(rng.uniform(0.0, 0.03))
            victim = relays.pop(rng.randrange(len(relays)))
            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=5)
            kills += 1
            relays.append(spawn())
            pending_before = _pending(pg_engine, outbox)
            if pending_before == 0:
                break
        wait_until(lambda: _pending(pg_engine, outbox) == 0, timeout=20)
    finally:
        for relay in relays:  # the survivors stop cleanly on SIGTERM
            relay.send_signal(signal.SIGTERM)
        outputs = [relay.communicate(timeout=10)[1] for relay in relays]
    assert kills >= 2
    # A relay that was up stops cleanly (exit 0) on SIGTERM; one still importing
    # when the signal came dies of it (-15), which is fine: it held nothing.
    codes = [relay.returncode for relay in relays]
    assert set(codes) <= {0, -signal.SIGTERM}, [e.decode()[-2000:] for e in outputs]
    assert 0 in codes, [e.decode()[-2000:] for e in outputs]

    want = {e.id for e in events}
    stream = _consume_kafka(kafka_consumer_config, topic, want, timeout=20)
    assert want <= {m.id for m in stream}, "every committed event delivered at least once"
    applied = _apply_through_inbox(pg_engine, inbox, orders, stream)
    _assert_exactly_once_in_order(pg_engine, orders, applied, events)


def _pending(engine: sa.Engine, outbox: Outbox) -> int:
    with engine.connect() as conn:
        return outbox.stats(conn).pending


@pytest.mark.slow
def test_broker_frozen_for_seconds_then_everything_arrives(
    pg_engine: sa.Engine,
    pg_tables: tuple[Outbox, Inbox, sa.Table],
    kafka_broker: KafkaBroker,
    kafka_topic: Callable[..., str],
    kafka_consumer_config: dict[str, Any],
) -> None:
    from resilience.messaging import KafkaPublisher

    outbox, inbox, orders = pg_tables
    topic = kafka_topic("outbox-pause", partitions=2)
    publisher = KafkaPublisher(kafka_broker.bootstrap_servers, router=lambda m: topic, timeout=1.5)
    # max_attempts=2: a frozen broker fails batch after batch, but that is not the
    # messages' fault (BrokerUnavailableError), so none of them may be dead-lettered.
    relay = make_relay(pg_engine, outbox, publisher, batch_size=100, max_attempts=2)
    events = _events(keys=10, per_key=40)
    try:
        with relay:
            for start in range(0, 200, 50):
                with pg_engine.begin() as conn:
                    outbox.add_many(conn, events[start : start + 50])
            kafka_broker.pause()
            try:
                for start in range(200, 400, 50):
                    with pg_engine.begin() as conn:
                        outbox.add_many(conn, events[start : start + 50])
                time.sleep(3.0)
                assert _pending(pg_engine, outbox) > 0  # nothing gets through a frozen broker
            finally:
                kafka_broker.resume()
            wait_until(lambda: _pending(pg_engine, outbox) == 0, timeout=25)
    finally:
        publisher.close()
    with pg_engine.connect() as conn:
        assert outbox.stats(conn).dead == 0
    want = {e.id for e in events}
    stream = _consume_kafka(kafka_consumer_config, topic, want, timeout=20)
    assert want <= {m.id for m in stream}
    applied = _apply_through_inbox(pg_engine, inbox, orders, stream)
    _assert_exactly_once_in_order(pg_engine, orders, applied, events)


@pytest.mark.slow
def test_database_connection_cut_then_restored(
    pg_engine: sa.Engine, postgres_url: str, pg_tables: tuple[Outbox, Inbox, sa.Table]
) -> None:
    outbox, inbox, orders = pg_tables
    url = sa.make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = sa.create_engine(
        url.set(port=proxy.port), pool_pre_ping=True, connect_args={"connect_timeout": 2}
    )
    broker = InMemoryBroker(partitions=2)
    relay = make_relay(proxied, outbox, broker.publisher(router=lambda m: "orders"), batch_size=50)
    events = _events(keys=10, per_key=50)
    try:
        with relay:
            for round_no in range(5):
                chunk = events[round_no * 100 : (round_no + 1) * 100]
                with pg_engine.begin() as conn:  # the application's own path is unaffected
                    outbox.add_many(conn, chunk)
                time.sleep(0.05)
                proxy.cut()  # every relay connection (claim, LISTEN) dies mid-flight
                time.sleep(0.5)
                proxy.restore()
            wait_until(lambda: _pending(pg_engine, outbox) == 0, timeout=25)
    finally:
        proxy.close()
        proxied.dispose()
    stream = broker.messages("orders")
    assert {e.id for e in events} <= {m.id for m in stream}
    applied = _apply_through_inbox(pg_engine, inbox, orders, stream)
    _assert_exactly_once_in_order(pg_engine, orders, applied, events)
