"""The relay: exactly the committed events, in per-key order, through failures."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from resilience import BrokerUnavailableError, CircuitOpenError, ConfigurationError, PublishError
from resilience.messaging import (
    Codec,
    EncodedMessage,
    InMemoryBroker,
    Message,
)
from resilience.outbox import Backoff, Inbox, Outbox
from resilience.policies import CircuitBreaker, CircuitBreakerConfig
from resilience.testing import FakeClock, RecordingTelemetry

from .conftest import RecordingPublisher, SlowPublisher, keyed_events, make_relay, wait_until

DB = tuple[sa.Engine, Outbox, Inbox, sa.Table]


def _write_concurrently(
    engine: sa.Engine, outbox: Outbox, *, writers: int, per_writer: int, keys: int
) -> tuple[set[str], set[str]]:
    """Writers commit or roll back (every 4th transaction) batches of 5 events.

    Returns the committed and the rolled-back ids.
    """
    committed: set[str] = set()
    rolled_back: set[str] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        rng = random.Random(w)
        try:
            for txn in range(per_writer // 5):
                batch = [
                    Message(
                        "order.event", {"w": w, "t": txn, "i": i}, key=f"k{rng.randrange(keys)}"
                    )
                    for i in range(5)
                ]
                roll_back = txn % 4 == 3
                try:
                    with engine.begin() as conn:
                        outbox.add_many(conn, batch)
                        if roll_back:
                            raise LookupError("rolled back on purpose")
                except LookupError:
                    with lock:
                        rolled_back.update(m.id for m in batch)
                    continue
                with lock:
                    committed.update(m.id for m in batch)
        except BaseException as exc:  # surface in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(committed) + len(rolled_back) == writers * per_writer
    return committed, rolled_back


def test_exactly_the_committed_events_are_delivered_postgres(
    pg_engine: sa.Engine, pg_tables: tuple[Outbox, Inbox, sa.Table]
) -> None:
    outbox = pg_tables[0]
    broker = InMemoryBroker(partitions=4)
    publisher = broker.publisher(router=lambda m: "orders")
    relay = make_relay(pg_engine, outbox, publisher, batch_size=500)
    with relay:  # the relay runs while the writers write
        committed, rolled_back = _write_concurrently(
            pg_engine, outbox, writers=8, per_writer=1250, keys=500
        )
        wait_until(lambda: relay.lag().pending == 0, timeout=25)
    delivered = [m.id for m in broker.messages("orders")]
    assert len(committed) > 7000
    assert len(rolled_back) > 2000
    assert len(delivered) == len(set(delivered)), "no duplicates without faults"
    assert set(delivered) == committed
    assert not rolled_back & set(delivered)


def test_exactly_the_committed_events_are_delivered_sqlite(
    sqlite_engine: sa.Engine, sqlite_tables: tuple[Outbox, Inbox, sa.Table]
) -> None:
    outbox = sqlite_tables[0]
    publisher = RecordingPublisher()
    relay = make_relay(sqlite_engine, outbox, publisher)
    assert relay.claim_mode == "lease"
    with relay:
        committed, rolled_back = _write_concurrently(
            sqlite_engine, outbox, writers=4, per_writer=250, keys=50
        )
        wait_until(lambda: relay.lag().pending == 0)
    assert len(committed) > 700
    assert len(rolled_back) > 200
    assert sorted(publisher.ids()) == sorted(committed)


def _assert_per_key_order(messages: list[Message], expected_per_key: int | None = None) -> None:
    seqs: dict[str, list[int]] = defaultdict(list)
    for m in messages:
        seqs[m.key or ""].append(m.payload["seq"])
    for key, seq in seqs.items():
        assert seq == list(range(len(seq))), f"key {key}: {seq[:20]}..."
        if expected_per_key is not None:
            assert len(seq) == expected_per_key, key


def check_four_relays_keep_per_key_order(
    engine: sa.Engine, outbox: Outbox, *, redelivery: bool = False, **options: object
) -> None:
    """Four relays drain 2,000 events of 40 keys; every key arrives in order.

    With *redelivery*, a batch rolled back after its publish (an InnoDB deadlock
    between relays) may be published again, as after a crash: the first copies
    must still be in order (what a consumer behind the inbox applies).
    """
    keys, per_key = 40, 50
    messages = keyed_events(keys, per_key, seed=7)
    for start in range(0, len(messages), 200):
        with engine.begin() as conn:
            outbox.add_many(conn, messages[start : start + 200])
    published: list[Message] = []
    lock = threading.Lock()
    publishers = [SlowPublisher(published, lock) for _ in range(4)]
    relays = [
        make_relay(engine, outbox, p, name=f"r{i}", batch_size=37, **options)
        for i, p in enumerate(publishers)
    ]
    for relay in relays:
        relay.start()
    try:
        wait_until(lambda: len({m.id for m in published}) >= keys * per_key, timeout=25)
    finally:
        for relay in relays:
            relay.stop()
    assert len({m.id for m in published}) == keys * per_key
    if redelivery:
        published = first_copies(published)
    else:
        assert len(published) == keys * per_key, "no duplicates without faults"
    _assert_per_key_order(published, per_key)
    assert sum(p.count > 0 for p in publishers) >= 2, "the relays really shared the work"


def first_copies(messages: list[Message]) -> list[Message]:
    """The stream as an inbox-protected consumer applies it: redeliveries dropped."""
    seen: set[str] = set()
    kept = []
    for m in messages:
        if m.id not in seen:
            seen.add(m.id)
            kept.append(m)
    return kept


def test_four_relays_in_parallel_keep_per_key_order(
    pg_engine: sa.Engine, pg_tables: tuple[Outbox, Inbox, sa.Table]
) -> None:
    check_four_relays_keep_per_key_order(pg_engine, pg_tables[0], listen=False)


def test_a_failed_row_holds_back_the_later_rows_of_its_key_in_the_same_batch(db: DB) -> None:
    engine, outbox, _, _ = db
    fail_once = {"a-0"}

    def reject(m: Message) -> str | None:
        tag = f"{m.key}-{m.payload['seq']}"
        if tag in fail_once:
            fail_once.discard(tag)
            return "broker said no"
        return None

    publisher = RecordingPublisher(reject)
    with engine.begin() as conn:
        outbox.add_many(
            conn,
            [
                Message("e", {"seq": 0}, key="a"),
                Message("e", {"seq": 0}, key="b"),
                Message("e", {"seq": 1}, key="a"),
                Message("e", {"seq": 1}, key="b"),
            ],
        )
    relay = make_relay(engine, outbox, publisher)
    first = relay.run_once()
    # Wave 1 is [a0, b0] and the broker refuses a0 (so b0 is not acknowledged either);
    # wave 2 [a1, b1] must not be published at all, or a1 would overtake a0.
    assert (first.claimed, first.published, first.failed) == (4, 0, 2)
    assert publisher.published == []
    t = outbox.table
    with engine.connect() as conn:
        attempts = dict(conn.execute(sa.select(t.c.position, t.c.attempts)).all())
    assert sorted(attempts.values()) == [0, 0, 0, 1]  # only the culprit is charged
    deadline = time.monotonic() + 10
    while relay.lag().pending and time.monotonic() < deadline:
        relay.run_once()
        time.sleep(0.02)
    _assert_per_key_order(publisher.published, 2)


def test_poison_row_is_dead_lettered_and_other_keys_keep_flowing(db: DB) -> None:
    engine, outbox, _, _ = db
    publisher = RecordingPublisher(lambda m: "record too large" if m.type == "poison" else None)
    telemetry = RecordingTelemetry()
    poison = Message("poison", key="p")
    with engine.begin() as conn:
        outbox.add(conn, poison)
        outbox.add_many(conn, [Message("ok", {"seq": i}, key=f"k{i}") for i in range(20)])
        outbox.add(conn, Message("after", {"seq": 1}, key="p"))
    relay = make_relay(
        engine, outbox, publisher, max_attempts=3, telemetry=telemetry, dead_letter_blocks_key=False
    )
    with relay:
        wait_until(lambda: relay.lag().dead == 1 and relay.lag().pending == 0)
    with engine.connect() as conn:
        dead = outbox.dead(conn)
    assert [(d.message_id, d.attempts) for d in dead] == [(poison.id, 3)]
    assert dead[0].last_error == "record too large"
    assert {m.type for m in publisher.published} == {"ok", "after"}
    assert len(publisher.published) == 21
    [event] = telemetry.of_kind("dead_lettered")
    assert event.attributes["message_id"] == poison.id


def test_by_default_a_dead_letter_blocks_its_key_until_requeued(db: DB) -> None:
    engine, outbox, _, _ = db
    broken = {"yes"}
    publisher = RecordingPublisher(lambda m: "nope" if m.type == "first" and broken else None)
    first = Message("first", {"seq": 0}, key="p")
    with engine.begin() as conn:
        outbox.add_many(conn, [first, Message("second", {"seq": 1}, key="p")])
    relay = make_relay(engine, outbox, publisher, max_attempts=2)  # the default keeps order
    with relay:
        wait_until(lambda: relay.lag().dead == 1)
        time.sleep(0.3)
        assert publisher.published == []  # "second" waits behind the dead "first"
        broken.clear()
        with engine.begin() as conn:
            assert outbox.requeue(conn, [first.id]) == 1
        wait_until(lambda: relay.lag().pending == 0 and relay.lag().dead == 0)
    assert [m.type for m in publisher.published] == ["first", "second"]


def test_open_breaker_stops_publishing_without_charging_attempts(db: DB) -> None:
    engine, outbox, _, _ = db
    down = {"yes"}
    publisher = RecordingPublisher(lambda m: "connection refused" if down else None)
    breaker = CircuitBreaker(
        "broker",
        CircuitBreakerConfig(
            failure_rate_threshold=50, minimum_calls=2, window_size=4, open_duration=60
        ),
        clock=FakeClock(),
    )
    with engine.begin() as conn:
        outbox.add_many(conn, [Message("e", {"seq": 0}, key=f"k{i}") for i in range(5)])
    relay = make_relay(engine, outbox, publisher, breaker=breaker, max_attempts=3, batch_size=1)
    attempts_before_open = 0
    for _ in range(10):
        result = relay.run_once()
        if result.retry_after is not None:
            break
        attempts_before_open += result.failed
        time.sleep(0.11)  # let the failed row's backoff pass
    assert result.retry_after is not None
    assert result.retry_after > 0
    calls = publisher.calls
    for _ in range(5):
        assert relay.run_once().retry_after is not None
    assert publisher.calls == calls  # nothing reaches the broker while open
    t = outbox.table
    with engine.connect() as conn:
        charged = conn.execute(sa.select(sa.func.sum(t.c.attempts))).scalar_one()
        assert charged == attempts_before_open
        assert outbox.stats(conn).dead == 0


def test_mark_mode_keeps_rows_and_purge_deletes_in_small_batches(db: DB) -> None:
    engine, outbox, _, _ = db
    import datetime as dt

    publisher = RecordingPublisher()
    with engine.begin() as conn:
        outbox.add_many(conn, [Message("e", {"seq": i}, key="k") for i in range(25)])
    relay = make_relay(engine, outbox, publisher, on_sent="mark", batch_size=10)
    while relay.run_once().published:
        pass
    with engine.connect() as conn:
        stats = outbox.stats(conn)
    assert (stats.pending, stats.sent) == (0, 25)
    assert outbox.purge(engine, older_than=dt.timedelta(hours=1)) == 0  # too recent
    assert outbox.purge(engine, older_than=dt.timedelta(0), batch_size=7, pause=0) == 25
    with engine.connect() as conn:
        assert outbox.stats(conn).sent == 0
    _assert_per_key_order(publisher.published, 25)


def test_lag_reports_pending_and_age(db: DB) -> None:
    engine, outbox, _, _ = db
    relay = make_relay(engine, outbox, RecordingPublisher())
    assert relay.lag().pending == 0
    assert relay.lag().oldest_pending_age is None
    with engine.begin() as conn:
        outbox.add_many(conn, [Message("e") for _ in range(3)])
    time.sleep(0.05)
    lag = relay.lag()
    assert lag.pending == 3
    assert lag.oldest_pending_age is not None
    assert 0.04 <= lag.oldest_pending_age < 30


def test_listen_notify_wakes_an_idle_relay_at_once(
    pg_engine: sa.Engine, pg_tables: tuple[Outbox, Inbox, sa.Table]
) -> None:
    outbox = pg_tables[0]
    publisher = RecordingPublisher()
    # Idle waits grow to 30 s: only a NOTIFY can make delivery fast.
    relay = make_relay(pg_engine, outbox, publisher, idle_min=5.0, idle_max=30.0)
    with relay:
        time.sleep(0.3)  # let it go idle on LISTEN
        latencies = []
        for i in range(5):
            start = time.monotonic()
            with pg_engine.begin() as conn:
                outbox.add(conn, Message("e", {"seq": i}, key="k"))
            wait_until(lambda n=i + 1: len(publisher.published) == n, timeout=4, interval=0.002)
            latencies.append(time.monotonic() - start)
    assert max(latencies) < 2.0, latencies


def test_sqlite_lease_lets_one_relay_work_and_fails_over_on_stop(
    sqlite_engine: sa.Engine, sqlite_tables: tuple[Outbox, Inbox, sa.Table]
) -> None:
    outbox = sqlite_tables[0]
    p1, p2 = RecordingPublisher(), RecordingPublisher()
    r1 = make_relay(sqlite_engine, outbox, p1, name="r1", lease_ttl=30)
    r2 = make_relay(sqlite_engine, outbox, p2, name="r2", lease_ttl=30)
    with sqlite_engine.begin() as conn:
        outbox.add(conn, Message("e", {"seq": 0}, key="k"))
    assert r1.run_once().published == 1
    with sqlite_engine.begin() as conn:
        outbox.add(conn, Message("e", {"seq": 1}, key="k"))
    assert r2.run_once().lease_held is False  # r1 holds the lease for 30 s
    r1.start()
    wait_until(lambda: len(p1.published) == 2)
    r1.stop()  # releases the lease
    with sqlite_engine.begin() as conn:
        outbox.add(conn, Message("e", {"seq": 2}, key="k"))
    assert r2.run_once().published == 1
    _assert_per_key_order(p1.published + p2.published, 3)


def test_lease_expiry_is_judged_by_the_database_clock(
    sqlite_engine: sa.Engine, sqlite_tables: tuple[Outbox, Inbox, sa.Table]
) -> None:
    outbox = sqlite_tables[0]
    r1 = make_relay(sqlite_engine, outbox, RecordingPublisher(), name="r1", lease_ttl=0.3)
    r2 = make_relay(sqlite_engine, outbox, RecordingPublisher(), name="r2", lease_ttl=0.3)
    assert r1.run_once().lease_held
    assert not r2.run_once().lease_held
    time.sleep(0.4)  # r1 "died": its lease runs out
    assert r2.run_once().lease_held
    assert not r1.run_once().lease_held


async def test_asyncio_driver_runs_until_the_stop_event(db: DB) -> None:
    engine, outbox, _, _ = db
    publisher = RecordingPublisher()
    relay = make_relay(engine, outbox, publisher)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    with engine.begin() as conn:
        outbox.add_many(conn, [Message("e", {"seq": i}, key="k") for i in range(10)])
    await asyncio.to_thread(wait_until, lambda: len(publisher.published) == 10)
    stop.set()
    await asyncio.wait_for(task, 5)
    _assert_per_key_order(publisher.published, 10)


def test_database_errors_are_reported_and_retried(db: DB) -> None:
    engine, outbox, _, _ = db
    telemetry = RecordingTelemetry()
    publisher = RecordingPublisher()

    relay = make_relay(engine, outbox, publisher, telemetry=telemetry)
    original = relay._drain  # what run_forever repeats
    calls = {"n": 0}

    def flaky(limit: int | None, stop: threading.Event) -> object:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        return original(limit, stop)

    relay._drain = flaky  # type: ignore[method-assign,assignment]
    with engine.begin() as conn:
        outbox.add(conn, Message("e", {"seq": 0}, key="k"))
    with relay:
        wait_until(lambda: len(publisher.published) == 1)
    assert len(telemetry.of_kind("batch_failed")) == 2


def test_publish_error_partial_delivery_is_recorded_precisely(db: DB) -> None:
    engine, outbox, _, _ = db
    publisher = RecordingPublisher(lambda m: "full" if m.payload["i"] == 3 else None)
    with engine.begin() as conn:
        outbox.add_many(conn, [Message("e", {"i": i}, key=f"k{i}") for i in range(6)])
    result = make_relay(engine, outbox, publisher, max_attempts=5).run_once()
    assert (result.published, result.failed) == (3, 3)  # 0,1,2 acked; 3 refused; 4,5 unknown
    with engine.connect() as conn:
        assert outbox.stats(conn).pending == 3


def test_circuit_open_error_type_is_the_toolkit_one() -> None:
    assert issubclass(CircuitOpenError, Exception)
    assert issubclass(PublishError, Exception)


def test_a_hot_key_stuck_behind_a_failing_row_does_not_starve_other_keys(db: DB) -> None:
    engine, outbox, _, _ = db
    publisher = RecordingPublisher(lambda m: "broker rejects it" if m.type == "stuck" else None)
    with engine.begin() as conn:
        outbox.add(conn, Message("stuck", {"seq": 0}, key="hot"))
        outbox.add_many(conn, [Message("e", {"seq": i}, key="hot") for i in range(1, 40)])
        outbox.add_many(conn, [Message("e", {"seq": 0}, key=f"cold-{i}") for i in range(5)])
    # batch_size 10: a plain claim would return only "hot" rows, all waiting behind
    # the failing head, forever (until it is dead-lettered).
    relay = make_relay(
        engine,
        outbox,
        publisher,
        batch_size=10,
        max_attempts=1000,
        backoff=Backoff(initial=60, maximum=60),
    )
    relay.run_once()  # the head fails and backs off for a minute
    result = relay.run_once()
    assert result.published == 5
    assert {m.key for m in publisher.published} == {f"cold-{i}" for i in range(5)}


def test_relay_level_backoff_runs_on_the_injected_clock(db: DB) -> None:
    engine, outbox, _, _ = db
    clock = FakeClock()
    stop = threading.Event()

    class StopAfter:
        def __init__(self) -> None:
            self.failures = 0

        def emit(self, event: object) -> None:
            if getattr(event, "kind", "") == "batch_failed":
                self.failures += 1
                if self.failures == 6:
                    stop.set()

    relay = make_relay(
        engine,
        outbox,
        RecordingPublisher(),
        clock=clock,
        telemetry=StopAfter(),
        failure_backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0),
    )
    relay._drain = lambda limit, stop: (_ for _ in ()).throw(ConnectionError("db down"))  # type: ignore[method-assign]
    started = time.monotonic()
    relay.run_forever(stop)
    assert time.monotonic() - started < 5  # 23 fake seconds of backoff, no real waiting
    assert clock.monotonic() - 1_000.0 == pytest.approx(1 + 2 + 4 + 8 + 8, abs=0.01)


@pytest.mark.parametrize("encoded", [False, True], ids=["publish", "publish_encoded"])
def test_four_relays_with_random_partial_failures_still_keep_per_key_order(
    pg_engine: sa.Engine, pg_tables: tuple[Outbox, Inbox, sa.Table], encoded: bool
) -> None:
    outbox = pg_tables[0]
    keys, per_key = 20, 30
    order = [k for k in range(keys) for _ in range(per_key)]
    random.Random(5).shuffle(order)
    seq: dict[int, int] = defaultdict(int)
    messages = []
    for k in order:
        messages.append(Message("acct.entry", {"seq": seq[k]}, key=f"acct-{k}"))
        seq[k] += 1
    with pg_engine.begin() as conn:
        outbox.add_many(conn, messages)

    acked: list[Message] = []
    lock = threading.Lock()
    rng = random.Random(9)

    class FlakyBroker:
        """Acknowledges a random prefix of some batches, then fails (like a broker
        that went away mid-batch); the rest go through whole."""

        def publish(self, batch: list[Message]) -> None:
            time.sleep(rng.uniform(0, 0.003))
            with lock:
                cut = rng.randrange(len(batch) + 1) if rng.random() < 0.3 else len(batch)
                acked.extend(batch[:cut])
            if cut < len(batch):
                raise PublishError(
                    "connection reset", delivered=frozenset(m.id for m in batch[:cut])
                )

        def close(self) -> None: ...

    class FlakyEncodedBroker(FlakyBroker):
        """The same broker, taking the relay's stored bytes (`publish_encoded`)."""

        def publish_encoded(self, records: list[EncodedMessage], *, codec: Codec) -> None:
            self.publish([r.to_message(codec) for r in records])

    relays = [
        make_relay(
            pg_engine,
            outbox,
            FlakyEncodedBroker() if encoded else FlakyBroker(),
            name=f"r{i}",
            batch_size=25,
            listen=False,
            max_attempts=1000,
        )
        for i in range(4)
    ]
    for relay in relays:
        relay.start()
    try:
        wait_until(lambda: relays[0].lag().pending == 0, timeout=25)
    finally:
        for relay in relays:
            relay.stop()
    assert [m.id for m in acked] == list(dict.fromkeys(m.id for m in acked)), "no duplicates"
    _assert_per_key_order(acked, per_key)


@pytest.mark.parametrize(
    "outage",
    [
        BrokerUnavailableError("Kafka acknowledged 0 of 3 messages: _MSG_TIMED_OUT"),
        ConnectionError("connection refused"),
    ],
    ids=["broker-unavailable", "connection-error"],
)
def test_a_broker_outage_is_not_charged_to_the_messages(db: DB, outage: Exception) -> None:
    engine, outbox, _, _ = db
    down = {"yes"}

    class Outage(RecordingPublisher):
        def publish(self, messages: list[Message], /) -> None:  # type: ignore[override]
            if down:
                raise outage
            super().publish(messages)

    publisher = Outage()
    telemetry = RecordingTelemetry()
    with engine.begin() as conn:
        outbox.add_many(conn, [Message("e", {"seq": i}, key="k") for i in range(3)])
    relay = make_relay(engine, outbox, publisher, max_attempts=2, telemetry=telemetry)
    for _ in range(5):  # far more failed batches than max_attempts
        assert relay.run_once().failed == 1
    t = outbox.table
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.c.attempts, t.c.last_error, t.c.available_at).order_by(t.c.position)
        ).all()
        assert outbox.stats(conn).dead == 0
    assert [r.attempts for r in rows] == [0, 0, 0]
    assert str(outage) in (rows[0].last_error or "")  # recorded on the head row, uncharged
    assert all(r.available_at is None for r in rows)  # no per-row backoff: the relay backs off
    assert all(e.attributes["transport"] for e in telemetry.of_kind("publish_failed"))
    down.clear()
    assert relay.drain().published == 3
    _assert_per_key_order(publisher.published, 3)


def test_a_message_the_broker_refuses_is_still_charged_and_dead_lettered(db: DB) -> None:
    engine, outbox, _, _ = db
    publisher = RecordingPublisher(lambda m: "MSG_SIZE_TOO_LARGE" if m.type == "big" else None)
    with engine.begin() as conn:
        outbox.add(conn, Message("big", key="k"))
    relay = make_relay(engine, outbox, publisher, max_attempts=2)
    relay.run_once()
    time.sleep(0.12)  # the first attempt's backoff
    assert relay.run_once().dead == 1


def test_drain_publishes_the_backlog_in_full_batches_and_stops(db: DB) -> None:
    engine, outbox, _, _ = db
    publisher = RecordingPublisher()
    with engine.begin() as conn:
        outbox.add_many(conn, [Message("e", {"seq": i}, key=f"k{i % 3}") for i in range(25)])
    relay = make_relay(engine, outbox, publisher, batch_size=10)
    first = relay.drain(limit=20)
    assert (first.claimed, first.published) == (20, 20)
    rest = relay.drain()
    assert (rest.claimed, rest.published) == (5, 5)
    assert relay.drain().claimed == 0
    seqs = [m.payload["seq"] for m in publisher.published]
    assert seqs == list(range(25))
    with pytest.raises(ConfigurationError):
        relay.drain(limit=0)


def test_an_overlapped_drain_keeps_key_order_across_batches_and_stops_at_a_failure(
    pg_engine: sa.Engine, pg_tables: tuple[Outbox, Inbox, sa.Table]
) -> None:
    """On PostgreSQL a drain claims batch N+1 while N is being published: with
    three keys every batch holds rows whose previous row is still in flight."""
    outbox = pg_tables[0]
    keys, per_key = 3, 30
    refuse_once = {"k1-14"}

    def reject(m: Message) -> str | None:
        tag = f"{m.key}-{m.payload['seq']}"
        if tag in refuse_once:
            refuse_once.discard(tag)
            return "broker said no"
        return None

    with pg_engine.begin() as conn:
        outbox.add_many(
            conn,
            [Message("e", {"seq": s}, key=f"k{k}") for s in range(per_key) for k in range(keys)],
        )
    publisher = RecordingPublisher(reject)
    relay = make_relay(pg_engine, outbox, publisher, batch_size=10, listen=False)
    first = relay.drain()
    assert first.failed >= 1, "the refusal ended the drain"
    assert first.published < keys * per_key
    assert 0 < first.claimed < keys * per_key, "batches after the failure were not kept"
    time.sleep(0.12)  # the refused row's backoff
    while relay.lag().pending:
        relay.drain()
        time.sleep(0.02)
    assert len(publisher.published) == keys * per_key, "each event acknowledged exactly once"
    _assert_per_key_order(publisher.published, per_key)


def test_an_overlapped_drain_comes_back_for_a_row_committed_late_below_its_batches(
    pg_engine: sa.Engine, pg_tables: tuple[Outbox, Inbox, sa.Table]
) -> None:
    """Claims after an exact one start past the batch in flight; a row that commits
    late with an earlier position shows up in the next count, and the claim after
    that starts from the beginning again, within the same drain."""
    outbox = pg_tables[0]
    late = Message("e", {"seq": -1}, key="late")
    writer = pg_engine.connect()
    txn = writer.begin()
    outbox.add(writer, late)  # takes the lowest position, commits last
    with pg_engine.begin() as conn:
        outbox.add_many(conn, [Message("e", {"seq": i}, key=f"k{i % 8}") for i in range(40)])

    class CommitsTheLateRow(RecordingPublisher):
        def publish(self, messages: Sequence[Message], /) -> None:
            if txn.is_active:
                txn.commit()
            super().publish(messages)

    publisher = CommitsTheLateRow()
    relay = make_relay(pg_engine, outbox, publisher, batch_size=10, listen=False)
    floors: list[int] = []
    fetch = relay._fetch

    def spy(conn: sa.Connection, statement: object, params: dict[str, object]) -> object:
        floor = params.get("floor")
        if isinstance(floor, int) and floor > 0:
            floors.append(floor)
        return fetch(conn, statement, params)

    relay._fetch = spy  # type: ignore[method-assign]
    try:
        result = relay.drain()
    finally:
        writer.close()
    assert floors, "some claim started past the batch in flight"
    assert result.published == 41
    assert sorted(m.payload["seq"] for m in publisher.published) == list(range(-1, 40))
    assert relay.lag().pending == 0


def test_an_overlapped_drain_in_mark_mode_marks_every_row_once(
    pg_engine: sa.Engine, pg_tables: tuple[Outbox, Inbox, sa.Table]
) -> None:
    """Batches recorded in the round trip that opens the next claim's transaction."""
    outbox = pg_tables[0]
    with pg_engine.begin() as conn:
        outbox.add_many(
            conn, [Message("e", {"seq": s}, key=f"k{k}") for s in range(12) for k in range(4)]
        )
    publisher = RecordingPublisher()
    relay = make_relay(pg_engine, outbox, publisher, batch_size=10, listen=False, on_sent="mark")
    while relay.lag().pending:
        relay.drain()
    t = outbox.table
    with pg_engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.sent_at, t.c.attempts)).all()
    assert len(rows) == 48
    assert all(sent is not None and attempts == 1 for sent, attempts in rows)
    _assert_per_key_order(publisher.published, 12)
