"""Shared fixtures: real PostgreSQL, Redis, MariaDB, SQLite and a Kafka-protocol broker.

A test that uses a service fixture is marked ``integration`` automatically, so
``pytest -m "not integration"`` runs the unit tests alone in seconds.

When a service is unreachable the fixture first tries to start it (the same
commands as ``../shared/README.md``); if it still cannot be reached, the test
fails under ``CI=true`` and is skipped elsewhere with instructions.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from resilience.testing import KafkaBroker, ServiceUnavailableError, postgres_database
from resilience.testing._services import port_open

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
RUN_ID = secrets.token_hex(3)

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
MARIADB_HOST, MARIADB_PORT = "127.0.0.1", 3306

SERVICE_FIXTURES = frozenset(
    {
        "postgres_url",
        "postgres_dsn",
        "mariadb_url",
        "redis_url",
        "redis_client",
        "kafka_broker",
        "kafka_bootstrap",
        "kafka_topic",
        "kafka_consumer_config",
    }
)

_START_COMMANDS: dict[str, list[str]] = {
    "MariaDB": [
        "start-stop-daemon",
        "--start",
        "--oknodo",
        "--background",
        "--exec",
        "/usr/sbin/mariadbd",
    ],
    "PostgreSQL": [
        "sh",
        "-c",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ],
    "Redis": [
        "redis-server",
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "-::1",
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        "/var/lib/redis",
        "--logfile",
        "/var/log/redis/ci.log",
    ],
}


SERVER_BACKENDS = frozenset({"redis", "postgres", "postgresql", "mariadb", "mysql", "kafka"})


def _uses_a_server(item: pytest.Item) -> bool:
    if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    # Fixtures parametrized by backend name ("memory", "redis", "postgres", ...) reach
    # their server through request.getfixturevalue, which collection cannot see.
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    return any(isinstance(p, str) and p in SERVER_BACKENDS for p in params)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _uses_a_server(item):
            item.add_marker(pytest.mark.integration)


def unavailable(what: str, how: str) -> None:
    """Fail in CI, skip elsewhere: a missing service is never a silent pass."""
    message = f"{what} is not available. {how}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def _ensure_listening(name: str, host: str, port: int) -> None:
    if port_open(host, port):
        return
    command = _START_COMMANDS[name]
    if shutil.which(command[0]) and (name != "PostgreSQL" or shutil.which("pg_ctlcluster")):
        subprocess.run(command, check=False, capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if port_open(host, port):
                return
            time.sleep(0.2)
    unavailable(
        f"{name} on {host}:{port}",
        f"Start it with: {' '.join(command)}",
    )


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """libpq URL of a fresh database for this test session (dropped afterwards)."""
    _ensure_listening("PostgreSQL", PG_HOST, PG_PORT)
    try:
        with postgres_database(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres") as dsn:
            yield dsn
    except ServiceUnavailableError as exc:
        unavailable("PostgreSQL", str(exc))


@pytest.fixture(scope="session")
def postgres_url(postgres_dsn: str) -> str:
    """SQLAlchemy URL (psycopg 3 driver) of the session's fresh database."""
    return postgres_dsn.replace("postgresql://", "postgresql+psycopg://", 1)


# --------------------------------------------------------------------------- MariaDB


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """SQLAlchemy URL (pymysql driver) of a fresh MariaDB/MySQL database for this session.

    ``MARIADB_URL`` points the tests at another server (its database part is
    replaced by the per-session one).
    """
    import sqlalchemy as sa

    _ensure_listening("MariaDB", MARIADB_HOST, MARIADB_PORT)
    base = sa.make_url(
        os.environ.get("MARIADB_URL", f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/test")
    )
    name = f"rt_{RUN_ID}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE `{name}`")
    except (sa.exc.OperationalError, ModuleNotFoundError) as exc:
        admin.dispose()
        unavailable("MariaDB", f"cannot create a test database at {base}: {exc}")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


# --------------------------------------------------------------------------- SQLite


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "test.sqlite3"


@pytest.fixture
def sqlite_url(sqlite_path: Path) -> str:
    """SQLAlchemy URL of a fresh SQLite file database (the pysqlite driver)."""
    return f"sqlite:///{sqlite_path}"


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def _redis_server() -> Iterator[str]:
    _ensure_listening("Redis", REDIS_HOST, REDIS_PORT)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    yield url
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"rt:{RUN_ID}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to this test; everything under ``rt:<run>:`` is deleted at the end."""
    return f"rt:{RUN_ID}:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def redis_url(_redis_server: str) -> str:
    return _redis_server


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        unavailable("Redis", f"PING failed: {exc}")
    yield client
    client.close()


# --------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """A Kafka-protocol broker (Tansu) on a free port for the whole session."""
    broker = KafkaBroker()
    try:
        broker.start()
    except ServiceUnavailableError as exc:
        unavailable("The Kafka-protocol test broker", str(exc))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap_servers


@pytest.fixture
def kafka_topic(kafka_broker: KafkaBroker) -> Callable[..., str]:
    """Factory: ``kafka_topic("orders", partitions=3)`` creates a topic unique to this test."""

    def create(stem: str = "t", partitions: int = 1) -> str:
        return kafka_broker.create_topic(f"{stem}-{RUN_ID}-{uuid.uuid4().hex[:8]}", partitions)

    return create


@pytest.fixture
def kafka_consumer_config(kafka_bootstrap: str) -> dict[str, Any]:
    """confluent-kafka consumer settings for tests: a fresh group, fast group joins.

    A group join waits about ``session.timeout.ms``; librdkafka's 45 s default
    would make the first message take ~20 s to arrive.
    """
    return {
        "bootstrap.servers": kafka_bootstrap,
        "group.id": f"g-{RUN_ID}-{uuid.uuid4().hex[:8]}",
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 200,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
