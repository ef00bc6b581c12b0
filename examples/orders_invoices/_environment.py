"""Where a service keeps its data and how it reaches the broker.

That is the only difference between the embedded demo and a real deployment,
so it is the only thing the services are given: `LocalEnvironment` hands out
SQLite files and one `InMemoryBroker`; `ServerEnvironment` hands out one
PostgreSQL database per service, Kafka topics and consumer groups, and Redis
for the gateway's ``Idempotency-Key`` records. Every name it creates (databases,
topics, groups, Redis keys) starts with a *namespace*, so several systems can
share one set of servers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from examples.orders_invoices._infra import sqlite_engine
from examples.orders_invoices.events import EVENTS, ROUTER, TOPIC_TEMPLATE, topic_of
from resilience.idempotency import (
    AsyncIdempotencyStore,
    IdempotencyStore,
    RedisStore,
    SqlStore,
    idempotency_table,
)
from resilience.messaging import (
    DLQ_SUFFIX,
    InMemoryBroker,
    KafkaPublisher,
    KafkaSubscription,
    Message,
    Publisher,
    Subscription,
    TopicRouter,
)

TOPICS = tuple(sorted({topic_of(event) for event in EVENTS.values()}))
"""The logical topics of the system (``order``, ``stock``...)."""

TOPIC_PARTITIONS = 4

CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "auto.offset.reset": "earliest",  # a new group reads what was published before it joined
    "fetch.wait.max.ms": 100,  # an interactive system: do not hold fetches for half a second
}


class Environment(Protocol):
    """What a service gets from where it runs."""

    def engine(self, service: str) -> sa.Engine:
        """The service's own database."""

    def publisher(self, service: str) -> Publisher:
        """Where the service's outbox relay publishes (close it after use)."""

    def subscription(self, service: str, topics: Sequence[str]) -> Subscription:
        """Consumer group *service* on the logical *topics*."""

    def port(self, service: str) -> int:
        """The HTTP port to listen on (0: any free port)."""

    def idempotency_store(
        self, service: str, engine: sa.Engine, metadata: sa.MetaData
    ) -> IdempotencyStore | AsyncIdempotencyStore:
        """Where ``Idempotency-Key`` records of HTTP requests live."""


class _RecordingPublisher:
    """Publishes to the in-memory broker and remembers which service sent each message.

    The in-memory broker stamps one ``source`` on every record; a Kafka
    publisher stamps the service's own name. This keeps that fact for checks.
    """

    system = "in_memory"

    def __init__(self, inner: Publisher, service: str, producers: dict[str, str]) -> None:
        self._inner = inner
        self._service = service
        self._producers = producers

    def publish(self, messages: Sequence[Message], /) -> None:
        for message in messages:
            self._producers[message.id] = self._service
        self._inner.publish(messages)

    def close(self) -> None:
        self._inner.close()


class LocalEnvironment:
    """Everything in one process: SQLite files in *workdir*, one `InMemoryBroker`."""

    def __init__(self, workdir: Path, broker: InMemoryBroker) -> None:
        self.workdir = workdir
        self.broker = broker
        self.producers: dict[str, str] = {}
        """Message id -> the service whose relay published it."""

    def engine(self, service: str) -> sa.Engine:
        return sqlite_engine(self.workdir / f"{service}.db")

    def publisher(self, service: str) -> Publisher:
        return _RecordingPublisher(self.broker.publisher(router=ROUTER), service, self.producers)

    def subscription(self, service: str, topics: Sequence[str]) -> Subscription:
        return self.broker.subscribe(topics, group=service)

    def port(self, service: str) -> int:
        return 0

    def idempotency_store(
        self, service: str, engine: sa.Engine, metadata: sa.MetaData
    ) -> IdempotencyStore:
        return SqlStore(engine, idempotency_table(metadata))


_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class ServerEnvironment:
    """PostgreSQL, Kafka and Redis, with a fixed port per service.

    Attributes:
        kafka: bootstrap servers, ``host:port[,host:port]``.
        postgres: URL of the server (any database on it; each service uses
            ``<namespace>_<service>``, created if missing).
        redis: ``redis://host:port/db``.
        namespace: prefix of databases, topics (``<namespace>.order``),
            consumer groups and Redis keys.
        ports: HTTP port per service.
        consumer_options: extra librdkafka consumer settings (e.g. shorter
            ``session.timeout.ms`` in tests).
    """

    kafka: str
    postgres: str
    redis: str
    namespace: str = "oi"
    ports: Mapping[str, int] = field(default_factory=dict)
    consumer_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.namespace):
            raise ValueError(
                f"namespace {self.namespace!r}: lowercase letters, digits and _, "
                "starting with a letter (it names databases and topics)"
            )
        if not self.kafka:
            raise ValueError("kafka: give the bootstrap servers, host:port")
        sa.make_url(self.postgres)  # fails early on a malformed URL

    def database_url(self, service: str) -> sa.URL:
        return sa.make_url(self.postgres).set(
            drivername="postgresql+psycopg", database=f"{self.namespace}_{service}"
        )

    def topic(self, logical: str) -> str:
        return f"{self.namespace}.{logical}"

    def engine(self, service: str) -> sa.Engine:
        return sa.create_engine(
            self.database_url(service), pool_size=4, max_overflow=8, pool_pre_ping=True
        )

    def publisher(self, service: str) -> Publisher:
        return KafkaPublisher(
            {"bootstrap.servers": self.kafka},
            router=TopicRouter(default=f"{self.namespace}.{TOPIC_TEMPLATE}"),
            source=service,
            timeout=10.0,
        )

    def subscription(self, service: str, topics: Sequence[str]) -> Subscription:
        config = {"bootstrap.servers": self.kafka, **CONSUMER_DEFAULTS, **self.consumer_options}
        return KafkaSubscription(
            config, [self.topic(t) for t in topics], f"{self.namespace}.{service}", timeout=10.0
        )

    def port(self, service: str) -> int:
        return self.ports[service]

    def idempotency_store(
        self, service: str, engine: sa.Engine, metadata: sa.MetaData
    ) -> AsyncIdempotencyStore:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.redis)
        return RedisStore(async_client=client, prefix=f"{self.namespace}:{service}:idem:")

    # ------------------------------------------------------------------ provisioning

    def prepare(self, services: Sequence[str]) -> None:
        """Create what is missing: the services' databases, every topic and its dead-letter topic."""
        import psycopg

        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=5) as admin:
            for service in services:
                name = f"{self.namespace}_{service}"
                if admin.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone():
                    continue
                try:
                    admin.execute(f'CREATE DATABASE "{name}"')
                except psycopg.errors.DuplicateDatabase:
                    pass  # another process created it meanwhile
        self._create_topics()

    def drop(self, services: Sequence[str]) -> None:
        """Drop the services' databases and delete the namespace's Redis keys."""
        import psycopg
        import redis

        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=5) as admin:
            for service in services:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.namespace}_{service}" WITH (FORCE)')
        client = redis.Redis.from_url(self.redis)
        try:
            keys = list(client.scan_iter(match=f"{self.namespace}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    def _admin_url(self) -> str:
        url = sa.make_url(self.postgres).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def _create_topics(self) -> None:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient({"bootstrap.servers": self.kafka})
        names = [self.topic(t) + suffix for t in TOPICS for suffix in ("", DLQ_SUFFIX)]
        futures = admin.create_topics(
            [NewTopic(n, num_partitions=TOPIC_PARTITIONS, replication_factor=1) for n in names],
            operation_timeout=10,
        )
        for future in futures.values():
            try:
                future.result(15)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
