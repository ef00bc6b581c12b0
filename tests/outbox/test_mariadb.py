"""The outbox on MySQL/MariaDB: per-key commit order through the key-lock table,
SKIP LOCKED claims by several relays, and the same proofs as on PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from resilience import ConfigurationError
from resilience.messaging import InMemoryBroker, Message
from resilience.outbox import Inbox, Outbox, ddl

from .conftest import RecordingPublisher, SlowPublisher, keyed_events, make_relay, wait_until
from .test_relay import (
    _assert_per_key_order,
    _write_concurrently,
    check_four_relays_keep_per_key_order,
    first_copies,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def my_engine(mariadb_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(mariadb_url, pool_size=12, max_overflow=12, pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture
def outbox(my_engine: sa.Engine) -> Iterator[Outbox]:
    metadata = sa.MetaData()
    box = Outbox(metadata, name=f"ob_{uuid.uuid4().hex[:10]}")
    box.create_tables(my_engine)
    try:
        yield box
    finally:
        metadata.drop_all(my_engine)


def test_the_relay_claims_with_skip_locked_and_times_keep_microseconds(
    my_engine: sa.Engine, outbox: Outbox
) -> None:
    publisher = RecordingPublisher()
    relay = make_relay(my_engine, outbox, publisher)
    assert relay.claim_mode == "skip_locked"
    sent = [Message("e", {"seq": i, "big": "x" * 70_000}, key="k") for i in range(3)]
    with my_engine.begin() as conn:
        outbox.add_many(conn, sent)
    assert relay.drain().published == 3
    assert [m.id for m in publisher.published] == [m.id for m in sent]
    assert [m.occurred_at for m in publisher.published] == [m.occurred_at for m in sent]
    assert publisher.published[0].payload == sent[0].payload  # over BLOB's 64 KiB


def test_exactly_the_committed_events_are_delivered(my_engine: sa.Engine, outbox: Outbox) -> None:
    broker = InMemoryBroker(partitions=4)
    relay = make_relay(my_engine, outbox, broker.publisher(router=lambda m: "orders"))
    with relay:  # the relay runs while the writers commit and roll back
        committed, rolled_back = _write_concurrently(
            my_engine, outbox, writers=6, per_writer=250, keys=60
        )
        wait_until(lambda: relay.lag().pending == 0, timeout=25)
    delivered = [m.id for m in broker.messages("orders")]
    assert len(committed) > 1000
    assert len(rolled_back) > 300
    assert len(delivered) == len(set(delivered)), "no duplicates without faults"
    assert set(delivered) == committed


def test_four_relays_keep_per_key_order(my_engine: sa.Engine, outbox: Outbox) -> None:
    # InnoDB now and then picks a deadlock victim among relays deleting their
    # batches: that batch is rolled back and published again (at least once).
    check_four_relays_keep_per_key_order(my_engine, outbox, redelivery=True)


def test_four_relays_keep_commit_order_while_two_writers_write(
    my_engine: sa.Engine, outbox: Outbox
) -> None:
    keys, per_key = 30, 40
    messages = keyed_events(keys, per_key, seed=3)
    published: list[Message] = []
    lock = threading.Lock()
    publishers = [SlowPublisher(published, lock) for _ in range(4)]
    relays = [  # on_sent="mark" keeps the rows: their positions are the commit order per key
        make_relay(my_engine, outbox, p, name=f"r{i}", batch_size=37, on_sent="mark")
        for i, p in enumerate(publishers)
    ]
    for relay in relays:
        relay.start()
    try:
        # Two writers commit while the relays run, so claims race with commits.
        def write(part: list[Message]) -> None:
            for start in range(0, len(part), 25):
                with my_engine.begin() as conn:
                    outbox.add_many(conn, part[start : start + 25])

        writers = [threading.Thread(target=write, args=(messages[i::2],)) for i in range(2)]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        wait_until(lambda: len({m.id for m in published}) >= keys * per_key, timeout=40)
    finally:
        for relay in relays:
            relay.stop()
    assert len({m.id for m in published}) == keys * per_key
    assert sum(p.count > 0 for p in publishers) >= 2, "the relays really shared the work"
    t = outbox.table
    with my_engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.key, t.c.message_id).order_by(t.c.position)).all()
    committed: dict[str, list[str]] = defaultdict(list)
    for key, message_id in rows:
        committed[key].append(message_id)
    sent: dict[str, list[str]] = defaultdict(list)
    for m in first_copies(published):  # a rolled-back batch is published again
        sent[m.key or ""].append(m.id)
    assert sent == committed  # per key: published in commit (= position) order


def test_a_second_writer_of_a_key_waits_for_the_first_to_commit(
    my_engine: sa.Engine, outbox: Outbox
) -> None:
    first_added = threading.Event()
    second_done = threading.Event()
    order: list[str] = []

    def second() -> None:
        first_added.wait(5)
        with my_engine.begin() as conn:
            outbox.add(conn, Message("e", {"who": "second"}, key="acct-1"))
        order.append("second committed")
        second_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    with my_engine.begin() as conn:
        outbox.add(conn, Message("e", {"who": "first"}, key="acct-1"))
        first_added.set()
        assert not second_done.wait(0.5), "the key lock must hold the second writer"
        with my_engine.begin() as other:  # another key is not held up
            outbox.add(other, Message("e", {"who": "other"}, key="acct-2"))
        order.append("first committed")
    thread.join(5)
    assert order == ["first committed", "second committed"]
    t = outbox.table
    with my_engine.connect() as c:
        rows = c.execute(
            sa.select(t.c.position, t.c.payload).where(t.c.key == "acct-1").order_by(t.c.position)
        ).all()
    assert [outbox.codec.decode(p)["who"] for _, p in rows] == ["first", "second"]


def test_a_rolled_back_writer_releases_its_key(my_engine: sa.Engine, outbox: Outbox) -> None:
    def refused_order() -> None:
        with my_engine.begin() as conn:
            outbox.add(conn, Message("e", key="k"))
            raise LookupError("business rule said no")

    with pytest.raises(LookupError):
        refused_order()
    started = time.monotonic()
    with my_engine.begin() as conn:  # would wait for the lock if it leaked
        outbox.add(conn, Message("e", key="k"))
    assert time.monotonic() - started < 2
    with my_engine.connect() as conn:
        assert outbox.stats(conn).pending == 1


def test_dead_letter_requeue_and_lease_mode_work(my_engine: sa.Engine, outbox: Outbox) -> None:
    broken = {"yes"}
    publisher = RecordingPublisher(lambda m: "nope" if m.type == "poison" and broken else None)
    poison = Message("poison", {"seq": 0}, key="p")
    with my_engine.begin() as conn:
        outbox.add_many(conn, [poison, Message("ok", {"seq": 1}, key="p")])
    relay = make_relay(my_engine, outbox, publisher, max_attempts=1, claim_mode="lease")
    assert relay.claim_mode == "lease"
    relay.run_once()
    with my_engine.begin() as conn:
        assert [d.message_id for d in outbox.dead(conn)] == [poison.id]
    assert relay.run_once().published == 0  # "ok" waits behind the dead row of its key
    broken.clear()
    with my_engine.begin() as conn:
        assert outbox.requeue(conn, [poison.id]) == 1
    relay.drain()
    _assert_per_key_order(publisher.published, 2)


def test_an_unfilled_key_lock_table_is_refused(my_engine: sa.Engine, outbox: Outbox) -> None:
    with my_engine.begin() as conn:
        conn.execute(outbox.key_lock_table.delete())
    with pytest.raises(ConfigurationError, match="key_locks"), my_engine.begin() as conn:
        outbox.add(conn, Message("e", key="k"))


def test_the_mariadb_ddl_creates_working_tables(my_engine: sa.Engine) -> None:
    suffix = uuid.uuid4().hex[:8]
    names = (f"ddl_ob_{suffix}", f"ddl_ib_{suffix}")
    script = ddl("mariadb", outbox=names[0], inbox=names[1])
    try:
        with my_engine.begin() as conn:
            for statement in script.split(";\n"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
        box = Outbox(sa.MetaData(), name=names[0])
        with my_engine.begin() as conn:
            box.add(conn, Message("e", key="k"))
        assert make_relay(my_engine, box, RecordingPublisher()).drain().published == 1
        inbox = Inbox(sa.MetaData(), name=names[1])
        with my_engine.begin() as conn:
            assert inbox.record(conn, "c", "m-1")
            assert not inbox.record(conn, "c", "m-1")
    finally:
        with my_engine.begin() as conn:
            for name in (*names, f"{names[0]}_lease", f"{names[0]}_key_locks"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
