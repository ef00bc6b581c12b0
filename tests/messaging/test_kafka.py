"""Kafka transport against a real Kafka-protocol broker (Tansu), faults included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from resilience import BrokerUnavailableError, ConfigurationError, PublishError
from resilience.messaging import (
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    DLQ_REASON,
    AsyncKafkaPublisher,
    AsyncKafkaSubscription,
    Consumer,
    Delivery,
    KafkaPublisher,
    KafkaSubscription,
    Message,
    decode_message,
)
from resilience.messaging._common import header
from resilience.testing import KafkaBroker

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def orders(n: int, keys: int = 4) -> list[Message]:
    return [
        Message(
            type="order.created",
            key=f"order-{i % keys}",
            payload={"seq": i},
            headers={"traceparent": TRACEPARENT},
        )
        for i in range(n)
    ]


def receive_until(
    sub: KafkaSubscription, count: int, *, ack: bool = True, within: float = 20.0
) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        batch = sub.receive(100, 0.2)
        got.extend(batch)
        if ack and batch:
            sub.ack(batch)
    return got


def quiet_for(sub: KafkaSubscription, seconds: float) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got.extend(sub.receive(100, 0.2))
    return got


def producer_config(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "log_level": 2}


def test_round_trip_keeps_headers_and_per_key_order_across_partitions(
    kafka_topic: Callable[..., str], kafka_consumer_config: dict[str, Any]
) -> None:
    topic = kafka_topic("orders", partitions=3)
    sent = orders(90, keys=7)
    publisher = KafkaPublisher(
        producer_config(kafka_consumer_config["bootstrap.servers"]), router=lambda m: topic
    )
    for start in range(0, 90, 30):
        publisher.publish(sent[start : start + 30])
    publisher.close()
    with KafkaSubscription(kafka_consumer_config, topic, kafka_consumer_config["group.id"]) as sub:
        got = receive_until(sub, 90)
    messages = [decode_message(d.raw) for d in got]
    assert sorted(m.id for m in messages) == sorted(m.id for m in sent)
    by_id = {m.id: m for m in sent}
    assert all(m == by_id[m.id] for m in messages)  # headers (traceparent), time, payload intact
    partitions_of: defaultdict[str | None, set[int]] = defaultdict(set)
    seqs: defaultdict[str | None, list[int]] = defaultdict(list)
    for d, m in zip(got, messages, strict=True):
        partitions_of[m.key].add(d.token.partition)
        seqs[m.key].append(m.payload["seq"])
    assert all(len(p) == 1 for p in partitions_of.values())  # a key lives on one partition
    assert len(set().union(*partitions_of.values())) > 1  # and keys spread over several
    assert all(s == sorted(s) for s in seqs.values())


def test_one_message_twice_in_a_batch_is_acknowledged_not_refused(
    kafka_topic: Callable[..., str], kafka_consumer_config: dict[str, Any]
) -> None:
    # A handler may emit what an earlier, redelivered run already emitted: the
    # broker acknowledges both copies, and consumers dedup by id.
    topic = kafka_topic("twice")
    sent = orders(3)
    publisher = KafkaPublisher(
        producer_config(kafka_consumer_config["bootstrap.servers"]), router=lambda m: topic
    )
    publisher.publish([sent[0], sent[1], sent[0], sent[2]])
    publisher.close()
    with KafkaSubscription(kafka_consumer_config, topic, kafka_consumer_config["group.id"]) as sub:
        got = receive_until(sub, 4)
    assert [decode_message(d.raw).id for d in got] == [
        m.id for m in (sent[0], sent[1], sent[0], sent[2])
    ]


def test_acked_records_are_committed_and_not_redelivered(
    kafka_topic: Callable[..., str], kafka_consumer_config: dict[str, Any]
) -> None:
    topic = kafka_topic("orders", partitions=2)
    sent = orders(20)
    with_publisher = KafkaPublisher(
        kafka_consumer_config["bootstrap.servers"], router=lambda m: topic
    )
    with_publisher.publish(sent)
    with_publisher.close()
    group = kafka_consumer_config["group.id"]
    with KafkaSubscription(kafka_consumer_config, topic, group) as sub:
        assert len(receive_until(sub, 20)) == 20
    with KafkaSubscription(kafka_consumer_config, topic, group) as again:
        assert quiet_for(again, 3) == []


_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from resilience.messaging import KafkaSubscription, decode_message
    config, topic, group, ack_count = json.loads(sys.argv[1])
    sub = KafkaSubscription(config, topic, group)
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 20 and time.monotonic() < deadline:
        got.extend(sub.receive(100, 0.2))
    # partition 0 only, so "the first ack_count" is well defined
    sub.ack(got[:ack_count])
    print(json.dumps([decode_message(d.raw).id for d in got[:ack_count]]), flush=True)
    time.sleep(60)  # killed here, holding the rest unacked
    """
)


def test_a_killed_consumer_resumes_at_the_committed_offset_without_loss(
    kafka_topic: Callable[..., str], kafka_consumer_config: dict[str, Any]
) -> None:
    import json

    topic = kafka_topic("orders", partitions=1)
    sent = orders(20)
    publisher = KafkaPublisher(kafka_consumer_config["bootstrap.servers"], router=lambda m: topic)
    publisher.publish(sent)
    publisher.close()
    group = kafka_consumer_config["group.id"]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps([kafka_consumer_config, topic, group, 8])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        acked = json.loads(child.stdout.readline())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert acked == [m.id for m in sent[:8]]
    with KafkaSubscription(kafka_consumer_config, topic, group) as successor:
        rest = receive_until(successor, 12, within=25)
    assert [decode_message(d.raw).id for d in rest] == [m.id for m in sent[8:]]


def test_poison_and_garbage_go_to_the_dlq_while_later_records_flow(
    kafka_topic: Callable[..., str], kafka_consumer_config: dict[str, Any]
) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    topic = kafka_topic("orders", partitions=1)
    kafka_topic_dlq = f"{topic}.dlq"
    bootstrap = kafka_consumer_config["bootstrap.servers"]
    raw_producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    raw_producer.produce(topic, value=b"\x00\xffnot an event", key=b"order-1")
    raw_producer.flush(10)
    sent = orders(10, keys=1)
    poison = sent[4]
    publisher = KafkaPublisher(bootstrap, router=lambda m: topic)
    publisher.publish(sent)
    publisher.close()
    handled: list[str] = []

    def handler(message: Message) -> None:
        if message.id == poison.id:
            raise ValueError("negative total")
        handled.append(message.id)

    sub = KafkaSubscription(kafka_consumer_config, topic, kafka_consumer_config["group.id"])
    consumer = Consumer(sub, handler, dead_letter_after=2, poll_timeout=0.2)
    deadline = time.monotonic() + 20
    while len(handled) < 9 and time.monotonic() < deadline:
        consumer.run_once()
    sub.close()
    assert handled == [m.id for m in sent if m is not poison]
    dlq_config = {**kafka_consumer_config, "group.id": kafka_consumer_config["group.id"] + "-dlq"}
    with KafkaSubscription(dlq_config, kafka_topic_dlq, dlq_config["group.id"]) as dlq:
        dead = receive_until(dlq, 2)
    assert len(dead) == 2
    # the dlq topic may have several partitions: find each record by content
    [garbage] = [d.raw for d in dead if d.raw.value == b"\x00\xffnot an event"]
    [failed] = [d.raw for d in dead if d.raw.value != b"\x00\xffnot an event"]
    assert garbage.key == b"order-1"
    assert (header(garbage, DLQ_REASON) or "").startswith("undecodable:")
    assert header(garbage, DLQ_ORIGINAL_TOPIC) == topic
    assert header(garbage, DLQ_ORIGINAL_PARTITION) == "0"
    assert header(garbage, DLQ_ORIGINAL_OFFSET) == "0"
    assert decode_message(failed).id == poison.id  # the original record, still decodable
    assert "ValueError: negative total" in (header(failed, DLQ_REASON) or "")
    assert header(failed, DLQ_ORIGINAL_OFFSET) == "5"


def test_publish_during_a_short_broker_pause_succeeds_after_resume(
    kafka_broker: KafkaBroker,
    kafka_topic: Callable[..., str],
    kafka_consumer_config: dict[str, Any],
) -> None:
    topic = kafka_topic("orders", partitions=2)
    publisher = KafkaPublisher(kafka_broker.bootstrap_servers, router=lambda m: topic, timeout=20)
    publisher.publish(orders(1))  # connected and warmed up
    sent = orders(30)
    kafka_broker.pause()
    resumer = threading.Timer(2.0, kafka_broker.resume)
    resumer.start()
    try:
        started = time.monotonic()
        publisher.publish(sent)
        elapsed = time.monotonic() - started
    finally:
        resumer.join()
        kafka_broker.resume()
    publisher.close()
    assert elapsed >= 1.5  # it really waited for the broker
    with KafkaSubscription(kafka_consumer_config, topic, kafka_consumer_config["group.id"]) as sub:
        got = receive_until(sub, 31)
    stored = {decode_message(d.raw).id for d in got}
    assert {m.id for m in sent} <= stored


def test_publish_during_a_long_broker_pause_raises_and_loses_nothing_reported(
    kafka_broker: KafkaBroker,
    kafka_topic: Callable[..., str],
    kafka_consumer_config: dict[str, Any],
) -> None:
    topic = kafka_topic("orders", partitions=2)
    publisher = KafkaPublisher(kafka_broker.bootstrap_servers, router=lambda m: topic, timeout=3)
    publisher.publish(orders(1))
    sent = orders(20)
    kafka_broker.pause()
    try:
        with pytest.raises(PublishError) as info:
            publisher.publish(sent)
    finally:
        kafka_broker.resume()
    delivered = info.value.delivered
    assert delivered < {m.id for m in sent}
    publisher.publish([m for m in sent if m.id not in delivered])  # what a relay does next
    publisher.close()
    with KafkaSubscription(kafka_consumer_config, topic, kafka_consumer_config["group.id"]) as sub:
        got = receive_until(sub, 21 + len(delivered))
        got += quiet_for(sub, 1)
    stored = [decode_message(d.raw).id for d in got]
    assert {m.id for m in sent} <= set(stored)  # nothing lost; duplicates are allowed


async def test_async_publisher_and_subscription_round_trip(
    kafka_topic: Callable[..., str], kafka_consumer_config: dict[str, Any]
) -> None:
    topic = kafka_topic("orders", partitions=2)
    sent = orders(12)
    publisher = AsyncKafkaPublisher(
        kafka_consumer_config["bootstrap.servers"], router=lambda m: topic
    )
    await publisher.publish(sent)
    await publisher.close()
    sub = AsyncKafkaSubscription(kafka_consumer_config, topic, kafka_consumer_config["group.id"])
    assert sub.system == "kafka"
    got: list[Delivery] = []
    deadline = time.monotonic() + 20
    while len(got) < 12 and time.monotonic() < deadline:
        batch = await sub.receive(100, 0.2)
        await sub.ack(batch)
        got.extend(batch)
    await sub.close()
    assert sorted(decode_message(d.raw).id for d in got) == sorted(m.id for m in sent)


def test_unsafe_producer_settings_and_bad_topics_are_rejected(kafka_bootstrap: str) -> None:
    with pytest.raises(ConfigurationError, match="idempotence"):
        KafkaPublisher({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": False})
    with pytest.raises(ConfigurationError, match="acks"):
        KafkaPublisher({"bootstrap.servers": kafka_bootstrap, "acks": 1})
    with pytest.raises(ConfigurationError):
        KafkaPublisher({})
    with pytest.raises(ConfigurationError):
        KafkaSubscription(kafka_bootstrap, "bad topic!", "g")
    with pytest.raises(ConfigurationError):
        KafkaSubscription({"bootstrap.servers": kafka_bootstrap, "group.id": "a"}, "t", "b")
    publisher = KafkaPublisher(kafka_bootstrap, router=lambda m: "no spaces allowed")
    with pytest.raises(PublishError) as info:
        publisher.publish(orders(1))
    assert info.value.delivered == frozenset()
    publisher.close()


def test_rebalance_hands_unacked_records_to_the_new_owner_and_loses_nothing(
    kafka_topic: Callable[..., str], kafka_consumer_config: dict[str, Any]
) -> None:
    topic = kafka_topic("orders", partitions=4)
    sent = orders(40, keys=8)
    publisher = KafkaPublisher(kafka_consumer_config["bootstrap.servers"], router=lambda m: topic)
    publisher.publish(sent)
    publisher.close()
    group = kafka_consumer_config["group.id"]
    first = KafkaSubscription(kafka_consumer_config, topic, group)
    held = receive_until(first, 40, ack=False)  # sole member: it holds everything, unacked
    assert len(held) == 40
    second = KafkaSubscription(kafka_consumer_config, topic, group)
    got_second: list[Delivery] = []
    deadline = time.monotonic() + 25
    while not got_second and time.monotonic() < deadline:  # both poll while the group rebalances
        first.receive(100, 0.1)
        got_second.extend(second.receive(100, 0.1))
    assert got_second, "the second member never got a partition"
    moved = {d.token.partition for d in got_second}
    first.ack(held)  # stale for the partitions that moved: ignored, the new owner has them
    second.ack(got_second)
    first.close()
    # after first leaves, second owns every partition; it must get all that first did not commit
    rest = quiet_for(second, 3)
    second.ack(rest)
    second.close()
    kept_by_first = {decode_message(d.raw).id for d in held if d.token.partition not in moved}
    done_by_second = {decode_message(d.raw).id for d in got_second + rest}
    assert kept_by_first | done_by_second == {m.id for m in sent}
    with KafkaSubscription(kafka_consumer_config, topic, group) as third:
        assert quiet_for(third, 3) == []  # everything is committed


def test_a_down_broker_is_the_transports_fault_and_an_oversized_record_the_messages(
    kafka_broker: KafkaBroker, kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic("orders", partitions=1)
    publisher = KafkaPublisher(
        {"bootstrap.servers": kafka_broker.bootstrap_servers, "message.max.bytes": 10_000},
        router=lambda m: topic,
        timeout=2,
    )
    publisher.publish(orders(1))
    sent = orders(5)
    kafka_broker.pause()
    try:
        with pytest.raises(BrokerUnavailableError) as down:
            publisher.publish(sent)
    finally:
        kafka_broker.resume()
    assert down.value.delivered < {m.id for m in sent}  # a PublishError like any other
    big = Message("order.created", {"blob": "x" * 20_000}, key="k")
    with pytest.raises(PublishError) as refused:
        publisher.publish([big])
    assert not isinstance(refused.value, BrokerUnavailableError)  # retrying will not help
    assert refused.value.delivered == frozenset()
    publisher.publish(orders(2))  # the publisher itself is fine afterwards
    publisher.close()
