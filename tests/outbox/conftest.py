"""Fixtures for the outbox tests: engines, a fresh outbox per test, a recording publisher."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import pytest
import sqlalchemy as sa

from resilience import PublishError
from resilience.messaging import Message
from resilience.outbox import Backoff, Inbox, Outbox, Relay


class RecordingPublisher:
    """A Publisher that keeps what it was given; *reject* names messages it refuses.

    Like a broker, it acknowledges messages in order and stops at the first
    refusal, reporting the ones it did acknowledge in ``delivered``.
    """

    system = "in_memory"

    def __init__(self, reject: Callable[[Message], str | None] = lambda m: None) -> None:
        self.reject = reject
        self.published: list[Message] = []
        self.calls = 0
        self.lock = threading.Lock()
        self.closed = False

    def publish(self, messages: Sequence[Message], /) -> None:
        with self.lock:
            self.calls += 1
            done: set[str] = set()
            for message in messages:
                reason = self.reject(message)
                if reason:
                    raise PublishError(reason, delivered=frozenset(done))
                self.published.append(message)
                done.add(message.id)

    def close(self) -> None:
        self.closed = True

    def ids(self) -> list[str]:
        with self.lock:
            return [m.id for m in self.published]


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture(scope="session")
def pg_engine(postgres_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(postgres_url, pool_size=12, max_overflow=12, pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sqlite_url, connect_args={"timeout": 15})
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    yield engine
    engine.dispose()


def _tables(engine: sa.Engine) -> Iterator[tuple[Outbox, Inbox, sa.Table]]:
    suffix = uuid.uuid4().hex[:10]
    metadata = sa.MetaData()
    outbox = Outbox(metadata, name=f"ob_{suffix}")
    inbox = Inbox(metadata, name=f"ib_{suffix}")
    orders = sa.Table(
        f"orders_{suffix}",
        metadata,
        sa.Column("id", sa.String(50), primary_key=True),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("effects", sa.Integer, nullable=False, server_default="0"),
    )
    metadata.create_all(engine)
    try:
        yield outbox, inbox, orders
    finally:
        metadata.drop_all(engine)


@pytest.fixture
def pg_tables(pg_engine: sa.Engine) -> Iterator[tuple[Outbox, Inbox, sa.Table]]:
    yield from _tables(pg_engine)


@pytest.fixture
def sqlite_tables(sqlite_engine: sa.Engine) -> Iterator[tuple[Outbox, Inbox, sa.Table]]:
    yield from _tables(sqlite_engine)


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest) -> Iterator[tuple[sa.Engine, Outbox, Inbox, sa.Table]]:
    """The same test on PostgreSQL and SQLite: (engine, outbox, inbox, orders table)."""
    if request.param == "postgresql":
        engine = request.getfixturevalue("pg_engine")
        outbox, inbox, orders = request.getfixturevalue("pg_tables")
    else:
        engine = request.getfixturevalue("sqlite_engine")
        outbox, inbox, orders = request.getfixturevalue("sqlite_tables")
    return engine, outbox, inbox, orders


def make_relay(engine: sa.Engine, outbox: Outbox, publisher: object, **options: object) -> Relay:
    """A relay tuned for tests: short idle waits and backoffs."""
    defaults: dict[str, object] = {
        "idle_min": 0.01,
        "idle_max": 0.2,
        "backoff": Backoff(initial=0.02, maximum=0.1),
        "failure_backoff": Backoff(initial=0.02, maximum=0.2),
        "lease_ttl": 5.0,
    }
    defaults.update(options)
    return Relay(engine, outbox, publisher, **defaults)  # type: ignore[arg-type]


def wait_until(
    predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02
) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def keyed_events(keys: int, per_key: int, seed: int) -> list[Message]:
    """``per_key`` events for each of ``keys`` keys, keys shuffled, ``payload["seq"]``
    counting up per key (the order a consumer must see)."""
    order = [k for k in range(keys) for _ in range(per_key)]
    random.Random(seed).shuffle(order)
    seq: dict[int, int] = defaultdict(int)
    events = []
    for k in order:
        events.append(Message("acct.entry", {"seq": seq[k]}, key=f"acct-{k}"))
        seq[k] += 1
    return events


class SlowPublisher:
    """Appends to a shared *log* after a short random pause, so relays interleave."""

    def __init__(self, log: list[Message], lock: threading.Lock) -> None:
        self.log = log
        self.lock = lock
        self.count = 0

    def publish(self, batch: Sequence[Message], /) -> None:
        time.sleep(random.uniform(0, 0.004))
        with self.lock:
            self.log.extend(batch)
            self.count += len(batch)

    def close(self) -> None: ...
