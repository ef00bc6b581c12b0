"""The test harness itself: every real service answers over a real connection."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from resilience.testing import KafkaBroker, TcpProxy


def test_postgres_is_a_fresh_database(postgres_dsn: str) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    assert row[0].startswith("rt_")
    assert row[0] in postgres_dsn


def test_sqlalchemy_postgres_url(postgres_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1 + 1")).scalar_one() == 2
    engine.dispose()


def test_sqlite_url(sqlite_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        conn.execute(sa.text("INSERT INTO t VALUES (7)"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT x FROM t")).scalar_one() == 7
    engine.dispose()


def test_redis_prefix_is_isolated(redis_client: Any, redis_prefix: str) -> None:
    key = redis_prefix + "k"
    assert redis_client.set(key, b"v", nx=True)
    assert redis_client.get(key) == b"v"
    assert redis_prefix.startswith("rt:")


def test_kafka_round_trip_with_headers_through_a_consumer_group(
    kafka_topic: Callable[..., str], kafka_consumer_config: dict[str, Any]
) -> None:
    from confluent_kafka import Consumer, Producer

    started = time.monotonic()
    topic = kafka_topic("harness", partitions=2)
    producer = Producer(
        {
            "bootstrap.servers": kafka_consumer_config["bootstrap.servers"],
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    delivered: list[Any] = []
    body = uuid.uuid4().bytes
    producer.produce(
        topic,
        key=b"order-1",
        value=body,
        headers=[("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
        on_delivery=lambda err, msg: delivered.append(err or msg),
    )
    assert producer.flush(10) == 0
    assert len(delivered) == 1
    assert not isinstance(delivered[0], Exception)

    consumer = Consumer(kafka_consumer_config)
    consumer.subscribe([topic])
    received = None
    try:
        while received is None and time.monotonic() - started < 10:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                received = msg
        assert received is not None, "no message within 10 s"
        consumer.commit(received, asynchronous=False)
    finally:
        consumer.close()

    assert received.value() == body
    assert received.key() == b"order-1"
    assert dict(received.headers() or [])["traceparent"].startswith(b"00-0af7")
    assert time.monotonic() - started < 10


def test_kafka_broker_pause_blocks_and_resume_recovers(kafka_broker: KafkaBroker) -> None:
    kafka_broker.pause()
    try:
        with socket.create_connection(("127.0.0.1", kafka_broker.port), timeout=1) as s:
            s.settimeout(0.5)
            s.sendall(
                b"\x00\x00\x00\x01\x00"
            )  # half a request: a live broker would answer or close
            with pytest.raises(TimeoutError):
                s.recv(1)
    finally:
        kafka_broker.resume()
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers}).list_topics(
        timeout=10
    )
    assert metadata.brokers


def test_tcp_proxy_cut_drops_live_connections_and_restore_heals(redis_url: str) -> None:
    import redis

    with TcpProxy("127.0.0.1", 6379) as proxy:
        client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=2)
        assert client.ping()
        proxy.cut()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        proxy.restore()
        assert client.ping()  # redis-py reconnects on the next command
        client.close()
