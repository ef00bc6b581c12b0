"""The transfer flow on the real Kafka-protocol broker and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from typing import Any

import sqlalchemy as sa
from examples.codepix.adapters.messaging import (
    TOPICS,
    CodePixWorker,
    WorkerOptions,
    kafka_endpoints,
)
from examples.codepix.adapters.sql import create_engine, create_schema, tables, unit_of_work_factory
from examples.codepix.application import FindPixKey, OpenAccount, RegisterBank, RegisterPixKey

from resilience.messaging import (
    KafkaPublisher,
    KafkaSubscription,
    Message,
    RetryBackoff,
    TopicRouter,
    decode_message,
)
from resilience.outbox import Backoff, RelayOptions

OPTIONS = WorkerOptions(
    dead_letter_after=3,
    backoff=RetryBackoff(initial=0.05, maximum=0.2),
    relay=RelayOptions(
        name="codepix-pg-test",
        idle_min=0.02,
        idle_max=0.1,
        backoff=Backoff(initial=0.05, maximum=0.5),
    ),
    poll_timeout=0.1,
)


def test_transfer_flow_on_kafka_and_postgres(
    postgres_url: str,
    kafka_broker: Any,
    kafka_bootstrap: str,
    kafka_consumer_config: dict[str, Any],
) -> None:
    started = time.monotonic()
    for topic in (*TOPICS, "bank001", "bank002"):
        kafka_broker.create_topic(topic, 2)
    engine = create_engine(postgres_url)
    tables.metadata.drop_all(engine)  # the session database is ours; start from nothing
    create_schema(engine)
    uow = unit_of_work_factory(engine)
    RegisterBank(uow)("001", "Banco Um")
    RegisterBank(uow)("002", "Banco Dois")
    OpenAccount(uow)(bank_code="001", account_id="acc-ann", number="1001", owner_name="Ann")
    OpenAccount(uow)(bank_code="002", account_id="acc-bob", number="2001", owner_name="Bob")
    bob_key = str(uuid.uuid4())
    RegisterPixKey(uow)("random", bob_key, "acc-bob")

    subscribe, publisher = kafka_endpoints(
        kafka_consumer_config, group=f"codepix-{uuid.uuid4().hex[:8]}"
    )
    bank = KafkaPublisher(
        {"bootstrap.servers": kafka_bootstrap},
        router=TopicRouter(
            {
                "transaction.requested": "transactions",
                "transaction.confirmed": "transaction_confirmation",
                "transaction.completed": "transaction_confirmation",
            }
        ),
        timeout=10,
    )
    reader_group = f"banks-{uuid.uuid4().hex[:8]}"
    reader = KafkaSubscription(
        {**kafka_consumer_config, "group.id": reader_group}, ["bank001", "bank002"], reader_group
    )
    seen: list[tuple[str, Message]] = []

    def wait_for(message_type: str, topic: str, timeout: float = 20.0) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for got_topic, message in seen:
                if message.type == message_type and got_topic == topic:
                    return message
            deliveries = reader.receive(50, 0.2)
            for delivery in deliveries:
                seen.append((delivery.destination, decode_message(delivery.raw)))
            if deliveries:
                reader.ack(deliveries)
        raise AssertionError(f"no {message_type} on {topic}; saw {[(t, m.type) for t, m in seen]}")

    worker = CodePixWorker(engine, uow, subscribe(), publisher, OPTIONS)
    try:
        with worker:
            request = Message(
                type="transaction.requested",
                key="tx-pg-1",
                payload={
                    "id": "tx-pg-1",
                    "account_id": "acc-ann",
                    "amount_cents": 12_345,
                    "pix_key_kind": "random",
                    "pix_key": bob_key,
                    "description": "rent",
                },
            )
            bank.publish([request, request])  # a duplicate on the wire, too
            forwarded = wait_for("transaction.requested", "bank002")
            assert forwarded.key == "tx-pg-1"
            assert forwarded.payload["amount_cents"] == 12_345
            bank.publish(
                [Message(type="transaction.confirmed", key="tx-pg-1", payload={"id": "tx-pg-1"})]
            )
            assert wait_for("transaction.confirmed", "bank001").payload["status"] == "confirmed"
            bank.publish(
                [Message(type="transaction.completed", key="tx-pg-1", payload={"id": "tx-pg-1"})]
            )
            assert wait_for("transaction.completed", "bank002").payload["status"] == "completed"
            bank.publish(
                [
                    Message(
                        type="transaction.requested",
                        key="tx-pg-2",
                        payload={**request.payload, "id": "tx-pg-2", "pix_key": str(uuid.uuid4())},
                    )
                ]
            )
            failed = wait_for("transaction.failed", "bank001")
            assert failed.payload["id"] == "tx-pg-2"
            assert "no random key" in failed.payload["reason"]
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(tables.transactions.c.id, tables.transactions.c.status)
            ).all()
        assert rows == [("tx-pg-1", "completed")]
        requested = [m for t, m in seen if m.type == "transaction.requested" and m.key == "tx-pg-1"]
        assert len(requested) == 1  # the duplicate was absorbed
    finally:
        reader.close()
        bank.close()
        publisher.close()
        tables.metadata.drop_all(engine)
        engine.dispose()
    assert time.monotonic() - started < 30


def test_concurrent_key_registration_on_postgres_has_one_owner(postgres_url: str) -> None:
    """Eight threads race for each key on PostgreSQL: the primary key picks exactly one owner."""
    import threading

    from examples.codepix.domain import PixKeyAlreadyExistsError

    engine = create_engine(postgres_url, pool_size=10)
    prefix = uuid.uuid4().hex[:6]
    try:
        create_schema(engine)
        uow = unit_of_work_factory(engine)
        code = f"{int(prefix, 16) % 900 + 100}"
        RegisterBank(uow)(code, f"Race {prefix}")
        accounts = [f"race-{prefix}-{i}" for i in range(8)]
        for i, account in enumerate(accounts):
            OpenAccount(uow)(bank_code=code, account_id=account, number=str(i), owner_name="Racer")
        keys = [str(uuid.uuid4()) for _ in range(10)]
        winners: dict[str, list[str]] = {k: [] for k in keys}
        losers: dict[str, int] = dict.fromkeys(keys, 0)
        lock = threading.Lock()
        barrier = threading.Barrier(len(accounts))
        register = RegisterPixKey(uow)

        def race(account: str) -> None:
            for key in keys:
                barrier.wait(timeout=20)
                try:
                    register("random", key, account)
                except PixKeyAlreadyExistsError:
                    with lock:
                        losers[key] += 1
                else:
                    with lock:
                        winners[key].append(account)

        threads = [threading.Thread(target=race, args=(a,)) for a in accounts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for key in keys:
            assert len(winners[key]) == 1, winners[key]
            assert losers[key] == len(accounts) - 1
            assert FindPixKey(uow)("random", key).account.id == winners[key][0]
    finally:
        engine.dispose()
