"""Redis Streams transport against the real Redis: crashes, reclaim, poison, trimming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from resilience import ConfigurationError, MessagingError, PublishError
from resilience.messaging import (
    DLQ_DELIVERY_COUNT,
    DLQ_ORIGINAL_ID,
    DLQ_ORIGINAL_TOPIC,
    DLQ_REASON,
    AsyncRedisStreamsPublisher,
    AsyncRedisStreamsSubscription,
    Consumer,
    Delivery,
    Message,
    RedisStreamsPublisher,
    RedisStreamsSubscription,
    decode_message,
)
from resilience.testing import free_port

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def orders(n: int, keys: int = 3) -> list[Message]:
    return [
        Message(
            type="order.created",
            key=f"order-{i % keys}",
            payload={"seq": i},
            headers={"traceparent": TRACEPARENT},
        )
        for i in range(n)
    ]


def drain(sub: RedisStreamsSubscription, *, ack: bool = True, rounds: int = 20) -> list[Delivery]:
    got: list[Delivery] = []
    for _ in range(rounds):
        batch = sub.receive(100, 0)
        if not batch:
            break
        got.extend(batch)
        if ack:
            sub.ack(batch)
    return got


def ids(deliveries: list[Delivery]) -> list[str]:
    return [decode_message(d.raw).id for d in deliveries]


def pending(client: Any, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


def test_round_trip_in_publish_order(redis_client: Any, redis_prefix: str) -> None:
    stream = redis_prefix + "orders"
    sent = orders(30)
    publisher = RedisStreamsPublisher(redis_client, router=lambda m: stream)
    publisher.publish(sent[:10])
    publisher.publish(sent[10:])
    with RedisStreamsSubscription(redis_client, stream, "billing", "worker-1") as sub:
        got = drain(sub)
    assert [decode_message(d.raw) for d in got] == sent  # total order, headers intact
    assert all(d.delivery_count == 1 for d in got)
    assert pending(redis_client, stream, "billing") == 0
    fields = redis_client.xrange(stream, count=1)[0][1]
    assert fields[b"h:ce_type"] == b"order.created"  # readable in redis-cli
    assert fields[b"k"] == b"order-0"


def test_group_created_late_still_sees_earlier_entries_and_groups_are_independent(
    redis_client: Any, redis_prefix: str
) -> None:
    stream = redis_prefix + "orders"
    sent = orders(5)
    RedisStreamsPublisher(redis_client, router=lambda m: stream).publish(sent)
    a = RedisStreamsSubscription(redis_client, stream, "a", "w")
    b = RedisStreamsSubscription(redis_client, stream, "b", "w")
    RedisStreamsSubscription(redis_client, stream, "a", "w2")  # idempotent group creation
    assert ids(drain(a)) == ids(drain(b)) == [m.id for m in sent]


def test_entries_of_an_abandoned_consumer_are_reclaimed_after_the_idle_time(
    redis_client: Any, redis_prefix: str
) -> None:
    stream = redis_prefix + "orders"
    sent = orders(10)
    RedisStreamsPublisher(redis_client, router=lambda m: stream).publish(sent)
    crashed = RedisStreamsSubscription(redis_client, stream, "g", "w1", claim_idle_ms=300)
    held = crashed.receive(100, 0)
    crashed.ack(held[:3])  # finished three, then died holding seven
    rescuer = RedisStreamsSubscription(redis_client, stream, "g", "w2", claim_idle_ms=300)
    assert rescuer.receive(100, 0) == []  # not idle long enough yet
    time.sleep(0.45)
    reclaimed = drain(rescuer)
    assert ids(reclaimed) == [m.id for m in sent[3:]]
    assert all(d.delivery_count == 2 for d in reclaimed)
    assert pending(redis_client, stream, "g") == 0


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import redis
    from resilience.messaging import RedisStreamsSubscription, decode_message
    url, stream = sys.argv[1], sys.argv[2]
    sub = RedisStreamsSubscription(redis.Redis.from_url(url), stream, "g", "doomed")
    got = sub.receive(100, 5)
    sub.ack(got[:4])
    print(json.dumps([decode_message(d.raw).id for d in got]), flush=True)
    time.sleep(60)  # SIGKILLed here, holding the rest
    """
)


def test_a_sigkilled_consumer_loses_nothing(
    redis_client: Any, redis_url: str, redis_prefix: str
) -> None:
    stream = redis_prefix + "orders"
    sent = orders(12)
    RedisStreamsPublisher(redis_client, router=lambda m: stream).publish(sent)
    RedisStreamsSubscription(redis_client, stream, "g", "survivor")  # group exists before
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, redis_url, stream],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        taken = json.loads(child.stdout.readline())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert taken == [m.id for m in sent]
    seen: list[str] = []
    survivor = RedisStreamsSubscription(redis_client, stream, "g", "survivor", claim_idle_ms=200)
    consumer = Consumer(survivor, lambda m: seen.append(m.id), poll_timeout=0.05)
    deadline = time.monotonic() + 10
    while len(seen) < 8 and time.monotonic() < deadline:
        consumer.run_once()
    assert seen == [m.id for m in sent[4:]]
    assert pending(redis_client, stream, "g") == 0


def test_a_restarted_consumer_resumes_its_own_pending_entries_first(
    redis_client: Any, redis_prefix: str
) -> None:
    stream = redis_prefix + "orders"
    sent = orders(6)
    publisher = RedisStreamsPublisher(redis_client, router=lambda m: stream)
    publisher.publish(sent[:4])
    first = RedisStreamsSubscription(redis_client, stream, "g", "worker-1")
    held = first.receive(100, 0)
    first.ack(held[:1])
    first.close()
    with pytest.raises(MessagingError):
        first.receive(1, 0)
    publisher.publish(sent[4:])
    again = RedisStreamsSubscription(redis_client, stream, "g", "worker-1")
    resumed = again.receive(2, 0) + again.receive(100, 0)  # history in small pages, then new
    resumed += again.receive(100, 0)
    assert ids(resumed) == [m.id for m in sent[1:]]
    assert [d.delivery_count for d in resumed] == [2, 2, 2, 1, 1]


def test_garbage_and_poison_go_to_the_dlq_with_reasons(
    redis_client: Any, redis_prefix: str
) -> None:
    stream = redis_prefix + "orders"
    redis_client.xadd(stream, {b"foo": b"bar"})
    redis_client.xadd(stream, {b"v": b"\xff\xfe", b"h:ce_id": b"x", b"h:ce_type": b"t"})
    sent = orders(4)
    poison = sent[1]
    RedisStreamsPublisher(redis_client, router=lambda m: stream).publish(sent)
    handled: list[str] = []

    def handler(message: Message) -> None:
        if message.id == poison.id:
            raise RuntimeError("ledger rejected it")
        handled.append(message.id)

    sub = RedisStreamsSubscription(redis_client, stream, "g", "w")
    consumer = Consumer(sub, handler, dead_letter_after=3, poll_timeout=0.05)
    while consumer.run_once(timeout=0):
        pass
    assert handled == [m.id for m in sent if m is not poison]
    assert pending(redis_client, stream, "g") == 0
    dead = redis_client.xrange(stream + ".dlq")
    assert len(dead) == 3
    reasons = [f[b"h:" + DLQ_REASON.encode()].decode() for _, f in dead]
    assert reasons[0].startswith("undecodable:")
    assert reasons[1].startswith("undecodable:")
    assert "RuntimeError: ledger rejected it" in reasons[2]
    assert dead[0][1][b"foo"] == b"bar"  # the original fields, untouched
    assert dead[2][1][b"h:ce_id"] == poison.id.encode()
    assert dead[2][1][b"h:" + DLQ_ORIGINAL_TOPIC.encode()] == stream.encode()
    assert dead[2][1][b"h:" + DLQ_DELIVERY_COUNT.encode()] == b"1"
    original_ids = [f[b"h:" + DLQ_ORIGINAL_ID.encode()] for _, f in dead]
    assert original_ids[:2] == [e[0] for e in redis_client.xrange(stream)][:2]


def test_maxlen_trims_and_lost_pending_entries_are_counted(
    redis_client: Any, redis_prefix: str
) -> None:
    stream = redis_prefix + "orders"
    publisher = RedisStreamsPublisher(
        redis_client, router=lambda m: stream, maxlen=10, approximate=False
    )
    early = orders(5)
    publisher.publish(early)
    slow = RedisStreamsSubscription(redis_client, stream, "g", "slow")
    assert len(slow.receive(5, 0)) == 5  # held, never acked
    late = orders(45)
    for start in range(0, 45, 9):
        publisher.publish(late[start : start + 9])
    assert redis_client.xlen(stream) == 10
    kept = [decode_message(raw_of(f)).id for _, f in redis_client.xrange(stream)]
    assert kept == [m.id for m in late[-10:]]
    restarted = RedisStreamsSubscription(redis_client, stream, "g", "slow")
    got = drain(restarted)
    assert restarted.lost == 5  # the held five were trimmed away: reported, not hidden
    assert ids(got) == [m.id for m in late[-10:]]
    assert pending(redis_client, stream, "g") == 0


def raw_of(fields: dict[bytes, bytes]) -> Any:
    from resilience.messaging._redis import _raw

    return _raw(fields)


def test_duplicates_published_twice_are_delivered_twice(
    redis_client: Any, redis_prefix: str
) -> None:
    stream = redis_prefix + "orders"
    [message] = orders(1)
    publisher = RedisStreamsPublisher(redis_client, router=lambda m: stream)
    publisher.publish([message])
    publisher.publish([message])  # a relay retry after a lost acknowledgement
    seen: list[str] = []
    sub = RedisStreamsSubscription(redis_client, stream, "g", "w")
    Consumer(sub, lambda m: seen.append(m.id)).run_once(timeout=0)
    assert seen == [message.id, message.id]  # at-least-once: the inbox deduplicates


def test_unreachable_redis_is_a_typed_error() -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    with pytest.raises(PublishError):
        RedisStreamsPublisher(client, router=lambda m: "s").publish(orders(1))
    with pytest.raises(MessagingError):
        RedisStreamsSubscription(client, "s", "g", "w")
    client.close()


def test_bad_options_are_rejected(redis_url: str) -> None:
    import redis

    text_client = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisStreamsPublisher(text_client)
    text_client.close()
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(ConfigurationError):
        RedisStreamsPublisher(client, maxlen=0)
    with pytest.raises(ConfigurationError):
        RedisStreamsSubscription(client, "s", "g", "")
    with pytest.raises(ConfigurationError):
        RedisStreamsSubscription(client, "s", "g", "w", claim_idle_ms=0)
    client.close()


async def test_async_round_trip_and_reclaim(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    stream = redis_prefix + "orders"
    sent = orders(8)
    try:
        await AsyncRedisStreamsPublisher(client, router=lambda m: stream).publish(sent)
        async with AsyncRedisStreamsSubscription(
            client, stream, "g", "w1", claim_idle_ms=200
        ) as first:
            held = await first.receive(100, 1)
            await first.ack(held[:5])
        second = AsyncRedisStreamsSubscription(client, stream, "g", "w2", claim_idle_ms=200)
        got: list[Delivery] = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            batch = await second.receive(100, 0.1)
            await second.ack(batch)
            got.extend(batch)
        await second.close()
        assert ids(list(held)) == [m.id for m in sent]
        assert ids(got) == [m.id for m in sent[5:]]
        assert (await client.xpending(stream, "g"))["pending"] == 0
    finally:
        await client.aclose()


async def test_async_consumer_over_redis_handles_retries_and_garbage(
    redis_url: str, redis_prefix: str
) -> None:
    import asyncio

    import redis.asyncio

    from resilience.messaging import AsyncConsumer
    from resilience.testing import FakeClock

    client = redis.asyncio.Redis.from_url(redis_url)
    stream = redis_prefix + "orders"
    sent = orders(20)
    flaky = {sent[3].id, sent[11].id}
    handled: list[str] = []

    async def handler(message: Message) -> None:
        await asyncio.sleep(0)
        if message.id in flaky:
            flaky.discard(message.id)  # fails once, then works
            raise ConnectionError("downstream blip")
        handled.append(message.id)

    try:
        await client.xadd(stream, {b"v": b"junk"})
        await AsyncRedisStreamsPublisher(client, router=lambda m: stream).publish(sent)
        subscription = AsyncRedisStreamsSubscription(client, stream, "g", "w")
        consumer = AsyncConsumer(subscription, handler, clock=FakeClock(), batch_size=7)
        while await consumer.run_once(timeout=0):
            pass
        await subscription.close()
        assert handled == [m.id for m in sent]
        assert consumer.stats.retries == 2
        assert consumer.stats.undecodable == 1
        assert (await client.xpending(stream, "g"))["pending"] == 0
        assert await client.xlen(stream + ".dlq") == 1
    finally:
        await client.aclose()


def test_a_vanished_stream_and_group_are_recreated_and_consuming_resumes(
    redis_client: Any, redis_prefix: str
) -> None:
    stream = redis_prefix + "orders"
    publisher = RedisStreamsPublisher(redis_client, router=lambda m: stream)
    before, after = orders(3), orders(4)
    publisher.publish(before)
    sub = RedisStreamsSubscription(redis_client, stream, "g", "w")
    assert ids(drain(sub)) == [m.id for m in before]
    redis_client.delete(stream)  # Redis restarted without persistence, or an operator slip
    with pytest.raises(MessagingError, match="NOGROUP"):
        sub.receive(10, 0)
    publisher.publish(after)
    assert ids(drain(sub)) == [m.id for m in after]
    assert pending(redis_client, stream, "g") == 0
