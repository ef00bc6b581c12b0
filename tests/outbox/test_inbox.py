"""The inbox: duplicates are skipped, failures leave no trace, effects happen once."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from resilience import ConfigurationError, IdempotencyInProgressError
from resilience.messaging import InMemoryBroker, Message
from resilience.outbox import Inbox, Outbox, RedisInbox

DB = tuple[sa.Engine, Inbox, Outbox, sa.Table]


@pytest.fixture
def inbox_db(db: tuple[sa.Engine, Outbox, Inbox, sa.Table]) -> DB:
    engine, outbox, inbox, orders = db
    with engine.begin() as conn:
        conn.execute(orders.insert().values(id="o1", total=0))
    return engine, inbox, outbox, orders


def _effect(orders: sa.Table) -> object:
    def apply(session: Session, message: Message) -> None:
        session.execute(
            orders.update().where(orders.c.id == "o1").values(effects=orders.c.effects + 1)
        )

    return apply


def _effects(engine: sa.Engine, orders: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(orders.c.effects)).scalar_one())


def test_same_message_five_times_concurrently_applies_once(inbox_db: DB) -> None:
    engine, inbox, _, orders = inbox_db
    handler = inbox.handler(
        consumer="invoices", sessionmaker=sessionmaker(engine), fn=_effect(orders)
    )
    message = Message("order.closed", key="o1")
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(5)

    def deliver() -> None:
        barrier.wait()
        try:
            results.append(handler(message))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == [False, False, False, False, True]
    assert _effects(engine, orders) == 1


def test_handler_failure_records_nothing_and_redelivery_applies_once(inbox_db: DB) -> None:
    engine, inbox, _, orders = inbox_db
    calls = {"n": 0}

    def flaky(session: Session, message: Message) -> None:
        calls["n"] += 1
        _effect(orders)(session, message)  # type: ignore[operator]
        if calls["n"] == 1:
            raise ConnectionError("invoice service down")

    handler = inbox.handler(consumer="invoices", sessionmaker=sessionmaker(engine), fn=flaky)
    message = Message("order.closed", key="o1")
    with pytest.raises(ConnectionError):
        handler(message)
    with engine.connect() as conn:
        assert not inbox.seen(conn, "invoices", message.id)
    assert _effects(engine, orders) == 0  # the effect rolled back with the inbox row
    assert handler(message) is True
    assert handler(message) is False
    assert _effects(engine, orders) == 1


def test_consumers_are_independent(inbox_db: DB) -> None:
    engine, inbox, _, orders = inbox_db
    make = sessionmaker(engine)
    message = Message("order.closed")
    a = inbox.handler(consumer="invoices", sessionmaker=make, fn=_effect(orders))
    b = inbox.handler(consumer="shipping", sessionmaker=make, fn=_effect(orders))
    assert (a(message), b(message), a(message), b(message)) == (True, True, False, False)
    assert _effects(engine, orders) == 2


def test_consume_change_and_emit_in_one_transaction(inbox_db: DB) -> None:
    engine, inbox, outbox, orders = inbox_db

    def bill(session: Session, message: Message) -> None:
        _effect(orders)(session, message)  # type: ignore[operator]
        outbox.add(session, Message("invoice.issued", {"order": message.key}, key=message.key))
        if message.payload == "fail":
            raise ValueError("after emitting")

    handler = inbox.handler(consumer="invoices", sessionmaker=sessionmaker(engine), fn=bill)
    with pytest.raises(ValueError, match="after emitting"):
        handler(Message("order.closed", "fail", key="o1"))
    handler(Message("order.closed", "ok", key="o1"))
    with engine.connect() as conn:
        assert outbox.stats(conn).pending == 1  # only the successful one emitted
    assert _effects(engine, orders) == 1


def test_inbox_with_the_consumer_loop_and_duplicate_deliveries(inbox_db: DB) -> None:
    from resilience.messaging import Consumer

    engine, inbox, _, orders = inbox_db
    broker = InMemoryBroker(partitions=1)
    publisher = broker.publisher(router=lambda m: "orders")
    messages = [Message("order.closed", {"i": i}, key="o1") for i in range(20)]
    publisher.publish(messages)
    broker.duplicate_publishes(5)
    publisher.publish(messages[:5])  # the producer retried: 5 records arrive twice more
    broker.duplicate_deliveries(10)
    subscription = broker.subscribe("orders", group="invoices")
    handler = inbox.handler(
        consumer="invoices", sessionmaker=sessionmaker(engine), fn=_effect(orders)
    )
    consumer = Consumer(subscription, handler, name="invoices", poll_timeout=0.05)
    import time

    deadline = time.monotonic() + 10
    while broker.pending("invoices", "orders") and time.monotonic() < deadline:
        consumer.run_once(0.05)
    assert broker.pending("invoices", "orders") == 0
    assert _effects(engine, orders) == 20  # 35+ deliveries, 20 distinct messages


def test_purge_forgets_old_ids_in_batches(inbox_db: DB) -> None:
    engine, inbox, _, orders = inbox_db
    handler = inbox.handler(consumer="c", sessionmaker=sessionmaker(engine), fn=_effect(orders))
    for i in range(25):
        handler(Message("e", {"i": i}))
    assert inbox.purge_older_than(engine, dt.timedelta(hours=1)) == 0
    assert inbox.purge_older_than(engine, dt.timedelta(0), batch_size=10, pause=0) == 25


def test_bad_handler_config_is_rejected(inbox_db: DB) -> None:
    engine, inbox, _, _ = inbox_db
    with pytest.raises(ConfigurationError):
        inbox.handler(consumer="", sessionmaker=sessionmaker(engine), fn=lambda s, m: None)
    with pytest.raises(ConfigurationError):
        inbox.handler(consumer="c", sessionmaker=sessionmaker(engine), fn=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Inbox(sa.Table("x", sa.MetaData(), sa.Column("id", sa.Integer)))


# --------------------------------------------------------------------------- Redis


def test_redis_inbox_applies_once_under_concurrent_duplicates(
    redis_client, redis_prefix: str
) -> None:
    inbox = RedisInbox(redis_client, prefix=redis_prefix, lease=5, retention=60)
    applied: list[str] = []
    gate = threading.Event()

    def slow(message: Message) -> None:
        gate.wait(5)
        applied.append(message.id)

    handler = inbox.handler(consumer="mailer", fn=slow)
    message = Message("order.closed")
    outcomes: list[object] = []

    def deliver() -> None:
        try:
            outcomes.append(handler(message))
        except IdempotencyInProgressError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for t in threads:
        t.start()
    # four of them find it in progress while the first one is still running
    import time

    deadline = time.monotonic() + 5
    while len(outcomes) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join()
    assert applied == [message.id]
    busy = [o for o in outcomes if isinstance(o, IdempotencyInProgressError)]
    assert len(busy) == 4
    assert all(0 < b.retry_after <= 5 for b in busy)
    assert outcomes.count(True) == 1
    assert handler(message) is False  # done: later duplicates are skipped
    assert inbox.seen("mailer", message.id)


def test_redis_inbox_releases_the_lease_when_the_handler_fails(
    redis_client, redis_prefix: str
) -> None:
    inbox = RedisInbox(redis_client, prefix=redis_prefix, lease=5, retention=60)
    calls = {"n": 0}

    def flaky(message: Message) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise TimeoutError("smtp")

    handler = inbox.handler(consumer="mailer", fn=flaky)
    message = Message("order.closed")
    with pytest.raises(TimeoutError):
        handler(message)
    assert not inbox.seen("mailer", message.id)
    assert handler(message) is True
    assert calls["n"] == 2


def test_redis_inbox_crash_after_effect_reapplies_after_the_lease(
    redis_client, redis_prefix: str
) -> None:
    # The documented weaker guarantee: a worker that dies mid-way leaves only a lease.
    import time

    inbox = RedisInbox(redis_client, prefix=redis_prefix, lease=0.2, retention=60)
    message = Message("order.closed")
    redis_client.set(f"{redis_prefix}mailer:{message.id}", "processing:dead-worker", px=200)
    applied: list[str] = []
    handler = inbox.handler(consumer="mailer", fn=lambda m: applied.append(m.id))
    with pytest.raises(IdempotencyInProgressError):
        handler(message)
    time.sleep(0.3)
    assert handler(message) is True
    assert applied == [message.id]


def test_redis_inbox_validates_config(redis_client) -> None:
    with pytest.raises(ConfigurationError):
        RedisInbox(redis_client, lease=0)
    with pytest.raises(ConfigurationError):
        RedisInbox(redis_client, lease=10, retention=1)


def test_batch_handler_dedups_within_and_across_batches(inbox_db: DB) -> None:
    engine, inbox, _, orders = inbox_db
    handle = inbox.batch_handler(
        consumer="invoices", sessionmaker=sessionmaker(engine), fn=_effect(orders)
    )
    a, b, c = (Message("e", {"i": i}) for i in range(3))
    assert handle([a, b, a]) == 2
    assert handle([b, c]) == 1
    assert _effects(engine, orders) == 3

    def boom(session: Session, message: Message) -> None:
        _effect(orders)(session, message)  # type: ignore[operator]
        if message.payload["i"] == 4:
            raise RuntimeError("boom")

    failing = inbox.batch_handler(consumer="invoices", sessionmaker=sessionmaker(engine), fn=boom)
    d, e = Message("e", {"i": 3}), Message("e", {"i": 4})
    with pytest.raises(RuntimeError):
        failing([d, e])
    assert _effects(engine, orders) == 3  # all or nothing
    with engine.connect() as conn:
        assert not inbox.seen(conn, "invoices", d.id)


def test_batch_fn_gets_the_fresh_messages_once_in_one_transaction(inbox_db: DB) -> None:
    engine, inbox, _, orders = inbox_db
    calls: list[list[str]] = []

    def bulk(session: Session, messages: list[Message]) -> None:
        calls.append([m.id for m in messages])
        session.execute(
            orders.update()
            .where(orders.c.id == "o1")
            .values(effects=orders.c.effects + len(messages))
        )
        if any(m.payload["i"] == 9 for m in messages):
            raise RuntimeError("boom")

    handle = inbox.batch_handler(consumer="bulk", sessionmaker=sessionmaker(engine), batch_fn=bulk)
    a, b, c = (Message("e", {"i": i}) for i in range(3))
    assert handle([a, b, a]) == 2
    assert handle([b, c, b]) == 1
    assert handle([a, c]) == 0
    assert calls == [
        [a.id, b.id],
        [c.id],
    ]  # in order, duplicates removed, no call when none is fresh
    assert _effects(engine, orders) == 3
    poison = Message("e", {"i": 9})
    with pytest.raises(RuntimeError):
        handle([Message("e", {"i": 4}), poison])
    assert _effects(engine, orders) == 3  # all or nothing
    with engine.connect() as conn:
        assert not inbox.seen(conn, "bulk", poison.id)


def test_batch_handler_needs_exactly_one_of_fn_and_batch_fn(inbox_db: DB) -> None:
    engine, inbox, _, orders = inbox_db
    make = sessionmaker(engine)
    with pytest.raises(ConfigurationError):
        inbox.batch_handler(consumer="c", sessionmaker=make)
    with pytest.raises(ConfigurationError):
        inbox.batch_handler(
            consumer="c", sessionmaker=make, fn=_effect(orders), batch_fn=lambda s, m: None
        )
    with pytest.raises(ConfigurationError):
        inbox.batch_handler(consumer="c", sessionmaker=make, batch_fn="nope")  # type: ignore[arg-type]


def test_record_many_returns_only_first_sightings_for_large_batches(inbox_db: DB) -> None:
    engine, inbox, _, _ = inbox_db
    ids = [f"m-{i}" for i in range(1500)]
    with engine.begin() as conn:
        assert inbox.record_many(conn, "big", ids[:1000] + ids[:10]) == set(ids[:1000])
    with engine.begin() as conn:
        assert inbox.record_many(conn, "big", ids) == set(ids[1000:])
        assert inbox.record_many(conn, "other", ids[:5]) == set(ids[:5])  # per consumer
