"""Outbox relay throughput (PostgreSQL → Kafka-protocol broker) and inbox-protected consumption.

Relay group: a naive hand-written relay (``SELECT … FOR UPDATE SKIP LOCKED LIMIT
500`` → produce → flush → ``DELETE``, raw psycopg + confluent-kafka), raw
confluent-kafka produce of the same payloads (the ceiling: no database at
all), and `resilience.outbox.Relay` with per-key ordering, bookkeeping and
tracing on. Every case drains the same number of pre-written events per round.

Inbox group: consuming with deduplication in PostgreSQL, one transaction per
message and one per batch, against a handler without deduplication.

Latency (commit → consumer) is measured by ``benchmarks/latency_outbox.py``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ._harness import Case, Context, Group, Target

BATCH = 500
_OCCURRED = "2026-12-07T08:00:00.000000+00:00"


def _payload(i: int) -> bytes:
    return json.dumps(
        {
            "order_id": f"order-{i}",
            "customer_id": f"cust-{i % 997}",
            "total_cents": 1990 + i % 5000,
            "currency": "EUR",
            "items": [{"sku": f"sku-{i % 50}", "qty": 1 + i % 3}],
        },
        separators=(",", ":"),
    ).encode()


def _producer_config(ctx: Context) -> dict[str, Any]:
    return {
        "bootstrap.servers": ctx.kafka().bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    }


def _topic(ctx: Context, stem: str) -> str:
    return ctx.kafka().create_topic(f"bench-{stem}-{uuid.uuid4().hex[:8]}", partitions=3)


def _naive_relay(ctx: Context, per_round: int, rounds: int, *, cloudevents: bool = False) -> Any:
    """The issue's naive relay; with *cloudevents*, the same records on the wire as ours.

    Without it, a record is key and payload only: a consumer cannot deduplicate
    (no message id) nor dispatch on type. With it, each row also keeps its id,
    type and time, and each record carries the six CloudEvents headers that
    `KafkaPublisher` writes, so only ordering and bookkeeping differ from ours.
    """
    import psycopg
    from confluent_kafka import Producer

    dsn = ctx.postgres_url().replace("postgresql+psycopg://", "postgresql://")
    table = f"naive_outbox_{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(dsn)
    conn.execute(
        f"CREATE TABLE {table} (id bigserial PRIMARY KEY, key text, payload bytea NOT NULL,"
        " message_id text, type text, occurred_at text)"
    )
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {table} (key, payload, message_id, type, occurred_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            [
                (f"order-{i}", _payload(i), str(uuid.uuid4()), "order.created", _OCCURRED)
                for i in range(per_round * rounds)
            ],
        )
    conn.commit()
    conn.execute(f"ANALYZE {table}")
    conn.commit()
    producer = Producer(_producer_config(ctx))
    topic = _topic(ctx, "naive")
    columns = (
        "id, key, payload, message_id, type, occurred_at" if cloudevents else "id, key, payload"
    )
    constant = [("ce_source", b"bench"), ("content-type", b"application/json")]

    def drain() -> int:
        done = 0
        while done < per_round:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    f"SELECT {columns} FROM {table} ORDER BY id "
                    f"LIMIT {min(BATCH, per_round - done)} FOR UPDATE SKIP LOCKED"
                )
                rows = cur.fetchall()
                if not rows:
                    break
                if cloudevents:
                    for _, key, payload, message_id, type_, occurred in rows:
                        headers = [
                            ("ce_specversion", b"1.0"),
                            ("ce_id", message_id.encode()),
                            ("ce_type", type_.encode()),
                            ("ce_time", occurred.encode()),
                            *constant,
                        ]
                        producer.produce(topic, value=payload, key=key, headers=headers)
                else:
                    for _, key, payload in rows:
                        producer.produce(topic, value=payload, key=key)
                producer.flush()
                cur.execute(f"DELETE FROM {table} WHERE id = ANY(%s)", ([r[0] for r in rows],))
            done += len(rows)
        return done

    drain.conn = conn  # type: ignore[attr-defined]
    return drain


def _raw_produce(ctx: Context, per_round: int) -> Any:
    from confluent_kafka import Producer

    producer = Producer(_producer_config(ctx))
    topic = _topic(ctx, "raw")
    payloads = [(f"order-{i}", _payload(i)) for i in range(per_round)]

    def produce() -> int:
        for start in range(0, per_round, BATCH):
            for key, payload in payloads[start : start + BATCH]:
                producer.produce(topic, value=payload, key=key)
            producer.flush()
        return per_round

    return produce


def _publisher_only(ctx: Context, per_round: int) -> Any:
    from resilience.messaging import KafkaPublisher, Message, TopicRouter

    topic = _topic(ctx, "publisher")
    publisher = KafkaPublisher(_producer_config(ctx), router=TopicRouter({"order.created": topic}))
    messages = [
        Message("order.created", json.loads(_payload(i)), key=f"order-{i}")
        for i in range(per_round)
    ]

    def publish() -> int:
        for start in range(0, per_round, BATCH):
            publisher.publish(messages[start : start + BATCH])
        return per_round

    return publish


def _our_relay(ctx: Context, per_round: int, rounds: int, **options: Any) -> Any:
    import sqlalchemy as sa

    from resilience.messaging import KafkaPublisher, Message, TopicRouter
    from resilience.outbox import Outbox, Relay

    engine = sa.create_engine(ctx.postgres_url())
    outbox = Outbox(sa.MetaData(), name=f"bench_outbox_{uuid.uuid4().hex[:8]}")
    outbox.create_tables(engine)
    total = per_round * rounds
    for start in range(0, total, 2000):
        with engine.begin() as conn:
            outbox.add_many(
                conn,
                [
                    Message("order.created", json.loads(_payload(i)), key=f"order-{i}")
                    for i in range(start, min(start + 2000, total))
                ],
            )
    with engine.begin() as conn:  # what autovacuum does soon after a bulk load
        conn.exec_driver_sql(f"ANALYZE {outbox.table.name}")
    topic = _topic(ctx, "relay")
    publisher = KafkaPublisher(
        {**_producer_config(ctx)}, router=TopicRouter({"order.created": topic}), timeout=30.0
    )
    relay = Relay(engine, outbox, publisher, batch_size=BATCH, listen=False, **options)

    def drain() -> int:
        # What run_forever repeats: batches back to back, the next one claimed
        # (and the last one recorded) while the broker acknowledges the current one.
        return relay.drain(limit=per_round).published

    return drain


def _inbox_case(ctx: Context, per_round: int, rounds: int, mode: str) -> Any:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session, sessionmaker

    from resilience.messaging import Message
    from resilience.outbox import Inbox

    engine = sa.create_engine(ctx.postgres_url(), pool_size=2)
    metadata = sa.MetaData()
    suffix = uuid.uuid4().hex[:8]
    inbox = Inbox(metadata, name=f"bench_inbox_{suffix}")
    effects = sa.Table(
        f"bench_effects_{suffix}",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.String(64), nullable=False),
    )
    metadata.create_all(engine)
    make = sessionmaker(engine)
    batches = iter(
        [
            [Message("order.created", {"order_id": f"o-{r}-{i}"}) for i in range(per_round)]
            for r in range(rounds + 2)
        ]
    )

    def effect(session: Session, message: Message) -> None:
        session.execute(effects.insert().values(order_id=message.payload["order_id"]))

    def bulk_effect(session: Session, messages: list[Message]) -> None:
        session.execute(effects.insert(), [{"order_id": m.payload["order_id"]} for m in messages])

    def chunks() -> Any:
        messages = next(batches)
        return (messages[start : start + 100] for start in range(0, per_round, 100))

    if mode == "plain":

        def run() -> int:
            for message in next(batches):
                with make() as session, session.begin():
                    effect(session, message)
            return per_round

        return run
    if mode == "plain_batch":

        def run_plain_batch() -> int:
            for chunk in chunks():
                with make() as session, session.begin():
                    for message in chunk:
                        effect(session, message)
            return per_round

        return run_plain_batch
    if mode == "plain_bulk":

        def run_plain_bulk() -> int:
            for chunk in chunks():
                with make() as session, session.begin():
                    bulk_effect(session, chunk)
            return per_round

        return run_plain_bulk
    if mode == "inbox":
        handler = inbox.handler(consumer="bench", sessionmaker=make, fn=effect)

        def run_inbox() -> int:
            for message in next(batches):
                handler(message)
            return per_round

        return run_inbox
    if mode == "bulk":
        bulk_handler = inbox.batch_handler(
            consumer="bench", sessionmaker=make, batch_fn=bulk_effect
        )

        def run_bulk() -> int:
            for chunk in chunks():
                bulk_handler(chunk)
            return per_round

        return run_bulk
    batch_handler = inbox.batch_handler(consumer="bench", sessionmaker=make, fn=effect)

    def run_batches() -> int:
        for chunk in chunks():
            batch_handler(chunk)
        return per_round

    return run_batches


def groups(ctx: Context) -> list[Group]:
    # Relay rounds swing by ±20% on a shared 2-core machine: nine of them steady the median.
    relay_rounds = 1 if ctx.quick else 9
    rounds = 1 if ctx.quick else 5
    per_round = 200 if ctx.quick else 10_000
    inbox_per_round = 200 if ctx.quick else 2_000
    kafka = ("confluent_kafka", "sqlalchemy", "psycopg")

    def inbox_case(name: str, mode: str, note: str = "") -> Case:
        return Case(
            name,
            setup=lambda: _inbox_case(ctx, inbox_per_round, rounds, mode),
            kind="batch",
            requires=("sqlalchemy", "psycopg"),
            note=note,
        )

    return [
        Group(
            name="outbox.relay",
            title=f"Outbox relay: drain {per_round:,} events PostgreSQL → Kafka-protocol broker (per event)",
            baseline="naive relay (psycopg + confluent-kafka)",
            cases=[
                Case(
                    "naive relay (psycopg + confluent-kafka)",
                    setup=lambda: _naive_relay(ctx, per_round, relay_rounds),
                    kind="batch",
                    requires=kafka,
                    note="SKIP LOCKED LIMIT 500 → produce → flush → DELETE; no ordering, no bookkeeping",
                ),
                Case(
                    "naive relay, CloudEvents headers",
                    setup=lambda: _naive_relay(ctx, per_round, relay_rounds, cloudevents=True),
                    kind="batch",
                    requires=kafka,
                    note="the same, sending the records ours sends: id, type, time and source headers",
                ),
                Case(
                    "raw confluent-kafka produce (no database)",
                    setup=lambda: _raw_produce(ctx, per_round),
                    kind="batch",
                    requires=kafka,
                    note="ceiling: the broker alone",
                ),
                Case(
                    "KafkaPublisher.publish alone (no database)",
                    setup=lambda: _publisher_only(ctx, per_round),
                    kind="batch",
                    requires=kafka,
                    note="the transport's share: envelope encoding, headers, per-record delivery reports",
                ),
                Case(
                    "resilience Relay",
                    setup=lambda: _our_relay(ctx, per_round, relay_rounds),
                    kind="batch",
                    requires=kafka,
                    note="per-key ordering (strict waves), attempts, backoff, CloudEvents headers, tracing",
                ),
                Case(
                    "resilience Relay (tracing off)",
                    setup=lambda: _our_relay(ctx, per_round, relay_rounds, tracing=False),
                    kind="batch",
                    requires=kafka,
                ),
            ],
            targets=[
                Target("resilience Relay", 1.25),
                Target("resilience Relay", 1.25, against="naive relay, CloudEvents headers"),
            ],
            rounds=relay_rounds,
            quick_rounds=1,
        ),
        Group(
            name="outbox.inbox",
            title=f"Inbox-protected consumer: {inbox_per_round:,} messages into PostgreSQL (per message)",
            baseline="handler without dedup (1 txn/message)",
            cases=[
                inbox_case("handler without dedup (1 txn/message)", "plain"),
                inbox_case("Inbox.handler (1 txn/message)", "inbox"),
                inbox_case(
                    "handler without dedup (1 txn/100 messages)",
                    "plain_batch",
                    note="the same business write per message, 100 messages per transaction",
                ),
                inbox_case("Inbox.batch_handler (1 txn/100 messages)", "batch"),
                inbox_case(
                    "bulk write without dedup (1 txn/100 messages)",
                    "plain_bulk",
                    note="one multi-row business INSERT per 100 messages",
                ),
                inbox_case(
                    "Inbox.batch_handler(batch_fn=...) (1 txn/100 messages)",
                    "bulk",
                    note="dedup: one INSERT … SELECT unnest(ids) ON CONFLICT DO NOTHING RETURNING",
                ),
            ],
            targets=[
                Target("Inbox.handler (1 txn/message)", 1.5),
                Target(
                    "Inbox.batch_handler (1 txn/100 messages)",
                    1.25,
                    against="handler without dedup (1 txn/100 messages)",
                ),
                Target(
                    "Inbox.batch_handler(batch_fn=...) (1 txn/100 messages)",
                    # The dedup is itself one indexed 100-row INSERT, as big as the
                    # business write it protects: about twice the work, by design.
                    2.0,
                    against="bulk write without dedup (1 txn/100 messages)",
                ),
            ],
            rounds=rounds,
            quick_rounds=1,
        ),
    ]
