"""InMemoryBroker: the delivery semantics tests and demos rely on, and its fault hooks."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import defaultdict
from typing import Any

import pytest

from resilience import ConfigurationError, MessagingError, PublishError
from resilience.messaging import (
    DLQ_DELIVERY_COUNT,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    DLQ_REASON,
    AsyncPublisher,
    AsyncSubscription,
    Delivery,
    InMemoryBroker,
    Message,
    Publisher,
    RawMessage,
    Subscription,
    decode_message,
)
from resilience.messaging._common import header
from resilience.testing import FakeClock


def orders(n: int, keys: int = 5, type_: str = "order.created") -> list[Message]:
    return [Message(type=type_, key=f"order-{i % keys}", payload={"seq": i}) for i in range(n)]


def drain(sub: Subscription, *, ack: bool = True, max_rounds: int = 50) -> list[Delivery]:
    got: list[Delivery] = []
    for _ in range(max_rounds):
        batch = sub.receive(100, 0)
        if not batch:
            break
        got.extend(batch)
        if ack:
            sub.ack(batch)
    return got


def ids(deliveries: list[Delivery]) -> list[str]:
    return [decode_message(d.raw).id for d in deliveries]


def test_endpoints_satisfy_the_protocols() -> None:
    broker = InMemoryBroker()
    assert isinstance(broker.publisher(), Publisher)
    assert isinstance(broker.async_publisher(), AsyncPublisher)
    assert isinstance(broker.subscribe("order", "g"), Subscription)
    assert isinstance(broker.async_subscribe("order", "g"), AsyncSubscription)


def test_round_trip_acks_everything_and_routes_by_type_prefix() -> None:
    broker = InMemoryBroker()
    sent = orders(20)
    broker.publisher().publish(sent)
    assert broker.topics() == ["order"]
    with broker.subscribe("order", "billing") as sub:
        got = drain(sub)
    assert sorted(ids(got)) == sorted(m.id for m in sent)
    assert [decode_message(d.raw) for d in got if decode_message(d.raw).id == sent[0].id] == [
        sent[0]
    ]
    assert broker.pending("billing", "order") == 0
    assert broker.messages("order") == sent  # stored in append order


def test_unserialisable_payload_fails_at_publish_and_stores_nothing() -> None:
    broker = InMemoryBroker()
    good = Message(type="order.created", payload={"a": 1})
    bad = Message(type="order.created", payload={"when": object()})
    with pytest.raises(PublishError) as info:
        broker.publisher().publish([good, bad])
    assert info.value.delivered == frozenset()
    assert bad.id in str(info.value)
    assert broker.records("order") == []


def test_per_key_order_holds_within_every_partition() -> None:
    broker = InMemoryBroker(partitions=3)
    sent = orders(300, keys=17)
    publisher = broker.publisher()
    for start in range(0, 300, 7):
        publisher.publish(sent[start : start + 7])
    with broker.subscribe("order", "g") as sub:
        got = [decode_message(d.raw) for d in drain(sub)]
    by_key: dict[str | None, list[int]] = defaultdict(list)
    for m in got:
        by_key[m.key].append(m.payload["seq"])
    assert len(got) == 300
    for seqs in by_key.values():
        assert seqs == sorted(seqs)


def test_every_group_gets_every_message_and_members_share_partitions() -> None:
    broker = InMemoryBroker(partitions=4)
    sent = orders(200, keys=50)
    a, b = broker.subscribe("order", "g1"), broker.subscribe("order", "g1")
    other = broker.subscribe("order", "g2")
    broker.publisher().publish(sent)
    got_a, got_b, got_other = drain(a), drain(b), drain(other)
    assert got_a
    assert got_b
    assert not set(ids(got_a)) & set(ids(got_b))
    assert sorted(ids(got_a) + ids(got_b)) == sorted(m.id for m in sent)
    assert sorted(ids(got_other)) == sorted(m.id for m in sent)
    # a key lives on one partition, so on one member
    keys_a = {d.raw.key for d in got_a}
    keys_b = {d.raw.key for d in got_b}
    assert not keys_a & keys_b


def test_close_without_ack_hands_records_to_the_next_member_in_order() -> None:
    broker = InMemoryBroker(partitions=1)
    sent = orders(10, keys=1)
    broker.publisher().publish(sent)
    first = broker.subscribe("order", "g")
    batch = first.receive(10, 0)
    first.ack(batch[:3])  # processed three, then stopped before acking the rest
    first.close()
    with pytest.raises(MessagingError):
        first.receive(1, 0)
    second = broker.subscribe("order", "g")
    redelivered = drain(second)
    assert ids(redelivered) == [m.id for m in sent[3:]]
    assert all(d.delivery_count == 2 for d in redelivered)
    assert broker.pending("g", "order") == 0


def test_crashed_member_loses_its_partitions_and_nothing_is_lost() -> None:
    broker = InMemoryBroker(partitions=4)
    sent = orders(100, keys=40)
    broker.publisher().publish(sent)
    doomed, survivor = broker.subscribe("order", "g"), broker.subscribe("order", "g")
    held = doomed.receive(100, 0)
    done = drain(survivor)
    assert held
    broker.crash(doomed)
    with pytest.raises(MessagingError):
        doomed.receive(1, 0)
    recovered = drain(survivor)
    assert sorted(ids(held)) == sorted(ids(recovered))
    assert sorted(ids(done) + ids(recovered)) == sorted(m.id for m in sent)
    assert broker.pending("g", "order") == 0


def test_visibility_timeout_redelivers_from_the_first_unacked_record() -> None:
    clock = FakeClock()
    broker = InMemoryBroker(partitions=1, visibility_timeout=30, session_timeout=600, clock=clock)
    sent = orders(5, keys=1)
    broker.publisher().publish(sent)
    sub = broker.subscribe("order", "g")
    batch = sub.receive(5, 0)
    sub.ack([batch[0], batch[2]])  # out of order: 1 and 3..4 outstanding
    assert sub.receive(5, 0) == []
    clock.advance(29)
    assert sub.receive(5, 0) == []
    clock.advance(2)
    again = sub.receive(5, 0)
    # 0 was committed, 2 acked: the rest come back, in order, with a higher count
    assert ids(again) == [sent[1].id, sent[3].id, sent[4].id]
    assert [d.delivery_count for d in again] == [2, 2, 2]
    sub.ack(again)
    assert broker.pending("g", "order") == 0


def test_silent_member_is_evicted_after_the_session_timeout_and_may_rejoin() -> None:
    clock = FakeClock()
    broker = InMemoryBroker(partitions=2, session_timeout=10, visibility_timeout=600, clock=clock)
    sent = orders(40, keys=10)
    silent, active = broker.subscribe("order", "g"), broker.subscribe("order", "g")
    broker.publisher().publish(sent)
    held = silent.receive(100, 0)
    assert held
    clock.advance(11)
    got = drain(active)  # silent is expired: active now owns both partitions
    assert sorted(ids(got)) == sorted(m.id for m in sent)
    assert silent.receive(10, 0) == []  # rejoins, the work is already done
    silent.ack(held)  # a late ack is harmless
    assert broker.pending("g", "order") == 0


def test_partial_publish_failure_reports_exactly_what_was_stored() -> None:
    broker = InMemoryBroker()
    sent = orders(5)
    publisher = broker.publisher()
    broker.fail_publishes(times=1, after=2)
    with pytest.raises(PublishError) as info:
        publisher.publish(sent)
    assert info.value.delivered == {sent[0].id, sent[1].id}
    assert [m.id for m in broker.messages("order")] == [sent[0].id, sent[1].id]
    publisher.publish([m for m in sent if m.id not in info.value.delivered])  # the relay's retry
    assert sorted(m.id for m in broker.messages("order")) == sorted(m.id for m in sent)


def test_duplicate_publishes_and_deliveries_are_visible_to_consumers() -> None:
    broker = InMemoryBroker(partitions=1)
    sent = orders(3, keys=1)
    broker.duplicate_publishes(1)
    broker.publisher().publish(sent)
    assert [m.id for m in broker.messages("order")] == [
        sent[0].id,
        sent[0].id,
        sent[1].id,
        sent[2].id,
    ]
    broker.duplicate_deliveries(1)
    with broker.subscribe("order", "g") as sub:
        got = drain(sub)
    assert ids(got) == [sent[0].id] * 3 + [sent[1].id, sent[2].id]
    assert broker.pending("g", "order") == 0


def test_delay_publishes_waits_on_the_broker_clock() -> None:
    clock = FakeClock()
    broker = InMemoryBroker(clock=clock)
    broker.delay_publishes(2.5)
    broker.publisher().publish(orders(1))
    assert clock.sleeps == [2.5]


def test_dead_letter_moves_the_record_aside_with_the_reason_and_acks_it() -> None:
    broker = InMemoryBroker(partitions=1)
    broker.publish_raw("order", RawMessage(key=b"k", value=b"\xff garbage"))
    sent = orders(2, keys=1)
    broker.publisher().publish(sent)
    with broker.subscribe("order", "g") as sub:
        garbage, *rest = sub.receive(10, 0)
        sub.dead_letter(garbage, "not a CloudEvent")
        sub.ack(rest)
    assert broker.pending("g", "order") == 0
    [dead] = broker.dead_letters("order")
    assert dead.value == b"\xff garbage"
    assert dead.key == b"k"
    assert header(dead, DLQ_REASON) == "not a CloudEvent"
    assert header(dead, DLQ_ORIGINAL_TOPIC) == "order"
    assert header(dead, DLQ_ORIGINAL_PARTITION) == "0"
    assert header(dead, DLQ_ORIGINAL_OFFSET) == "0"
    assert header(dead, DLQ_DELIVERY_COUNT) == "1"


def test_foreign_delivery_tokens_and_bad_arguments_are_typed_errors() -> None:
    broker = InMemoryBroker()
    sub = broker.subscribe("order", "g")
    with pytest.raises(MessagingError):
        sub.ack([Delivery(RawMessage(None, b""), "order", token=("x", 1))])
    with pytest.raises(ConfigurationError):
        sub.receive(0, 1)
    with pytest.raises(ConfigurationError):
        broker.subscribe([], "g")
    with pytest.raises(ConfigurationError):
        broker.subscribe("order", "")
    with pytest.raises(ConfigurationError):
        InMemoryBroker(partitions=0)
    with pytest.raises(ConfigurationError):
        InMemoryBroker(visibility_timeout=0)
    publisher = broker.publisher()
    publisher.close()
    with pytest.raises(PublishError):
        publisher.publish(orders(1))


def test_receive_waits_for_a_publish_from_another_thread() -> None:
    broker = InMemoryBroker()
    sub = broker.subscribe("order", "g")
    message = orders(1)[0]
    timer = threading.Timer(0.1, broker.publisher().publish, args=([message],))
    timer.start()
    got = sub.receive(10, 10)
    timer.join()
    assert ids(list(got)) == [message.id]


def test_concurrent_publishers_and_consumers_lose_nothing() -> None:
    broker = InMemoryBroker(partitions=4)
    total, producers = 2000, 4
    sent = [orders(total // producers, keys=13) for _ in range(producers)]
    received: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def consume() -> None:
        with broker.subscribe("order", "g") as sub:
            while not (done.is_set() and broker.pending("g", "order") == 0):
                batch = sub.receive(50, 0.05)
                with lock:
                    received.extend(ids(list(batch)))
                sub.ack(batch)

    def produce(chunk: list[Message]) -> None:
        publisher = broker.publisher()
        for start in range(0, len(chunk), 25):
            publisher.publish(chunk[start : start + 25])

    consumers = [threading.Thread(target=consume) for _ in range(3)]
    for t in consumers:
        t.start()
    producer_threads = [threading.Thread(target=produce, args=(c,)) for c in sent]
    for t in producer_threads:
        t.start()
    for t in producer_threads:
        t.join()
    done.set()
    for t in consumers:
        t.join(timeout=20)
    assert sorted(received) == sorted(m.id for chunk in sent for m in chunk)


async def test_async_endpoints_round_trip_and_wake_on_publish() -> None:
    broker = InMemoryBroker(partitions=2)
    sub = broker.async_subscribe("order", "g")
    sent = orders(10)
    waiting = asyncio.create_task(sub.receive(100, 10))
    await asyncio.sleep(0.01)
    await broker.async_publisher().publish(sent)
    first = await asyncio.wait_for(waiting, 5)
    await sub.ack(first)
    rest: list[Delivery] = []
    while len(first) + len(rest) < 10:
        batch = await sub.receive(100, 1)
        await sub.ack(batch)
        rest.extend(batch)
    assert sorted(ids(list(first) + rest)) == sorted(m.id for m in sent)
    assert await sub.receive(10, 0) == []
    await sub.close()
    assert broker.pending("g", "order") == 0


async def test_async_receive_times_out_empty_without_blocking_the_loop() -> None:
    broker = InMemoryBroker()
    async with broker.async_subscribe("order", "g") as sub:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        assert await sub.receive(10, 0.3) == []
        task.cancel()
    assert ticks >= 5


@pytest.mark.parametrize("seed", range(25))
def test_random_crashes_rebalances_and_timeouts_never_lose_or_reorder(seed: int) -> None:
    """Members join, crash, leave and stall at random; consumers ack in order.

    Invariants: every message is acked at least once, and per key the first
    acks happen in publish order (redeliveries only ever repeat a suffix).
    """
    rng = random.Random(seed)
    clock = FakeClock()
    broker = InMemoryBroker(
        partitions=rng.randint(1, 4), visibility_timeout=5, session_timeout=3, clock=clock
    )
    publisher = broker.publisher()
    sent: list[Message] = []
    members: list[Any] = []
    held: dict[int, list[Delivery]] = {}
    first_acks: list[str] = []
    acked: set[str] = set()

    def record(deliveries: list[Delivery]) -> None:
        for d in deliveries:
            mid = decode_message(d.raw).id
            if mid not in acked:
                acked.add(mid)
                first_acks.append(mid)

    for _ in range(120):
        op = rng.random()
        if op < 0.25 or not members:
            batch = orders(rng.randint(1, 8), keys=rng.randint(1, 6))
            publisher.publish(batch)
            sent.extend(batch)
            if rng.random() < 0.5:
                members.append(broker.subscribe("order", "g"))
        elif op < 0.55:
            sub = rng.choice(members)
            held.setdefault(id(sub), []).extend(sub.receive(rng.randint(1, 10), 0))
        elif op < 0.8:
            sub = rng.choice(members)
            batch = held.get(id(sub), [])
            cut = rng.randint(0, len(batch))
            sub.ack(batch[:cut])  # always a prefix: the consumer loop acks in order
            record(batch[:cut])
            held[id(sub)] = batch[cut:]
        elif op < 0.88:
            sub = members.pop(rng.randrange(len(members)))
            (broker.crash if rng.random() < 0.5 else type(sub).close)(sub)
            held.pop(id(sub), None)
        else:
            # sometimes past the visibility / session timeout: held records come
            # back; a late ack of a copy still held is legitimate (it was handled)
            clock.advance(rng.choice([1, 4, 6]))
    for sub in members:
        sub.close()
    with broker.subscribe("order", "g") as last:
        rest = drain(last)
    record(rest)
    assert acked == {m.id for m in sent}
    assert broker.pending("g", "order") == 0
    position = {m.id: i for i, m in enumerate(sent)}
    by_key: defaultdict[str | None, list[int]] = defaultdict(list)
    key_of = {m.id: m.key for m in sent}
    for mid in first_acks:
        by_key[key_of[mid]].append(position[mid])
    assert all(seq == sorted(seq) for seq in by_key.values())
