"""Publishing pre-encoded records (`EncodedMessage`): the wire form must match `publish`."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest

from resilience import PublishError
from resilience.messaging import (
    Delivery,
    EncodedMessage,
    JsonCodec,
    KafkaPublisher,
    KafkaSubscription,
    Message,
    TopicRouter,
    decode_message,
    encode_message,
)
from resilience.messaging._common import encode_encoded_batch, routes_by_type

CODEC = JsonCodec()


def receive_until(sub: KafkaSubscription, count: int, within: float = 20.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        batch = sub.receive(100, 0.2)
        got.extend(batch)
        if batch:
            sub.ack(batch)
    return got


def _encoded(message: Message) -> EncodedMessage:
    return EncodedMessage(
        message.id,
        message.type,
        message.key,
        CODEC.encode(message.payload),
        dict(message.headers) or None,
        message.occurred_at,
    )


def _sample() -> list[Message]:
    paris = dt.timezone(dt.timedelta(hours=2))
    return [
        Message("order.created", {"n": 1, "name": "café"}, key="o-1", headers={"traceparent": "t"}),
        Message("order.paid", [1, 2], key=None),
        Message("payment.settled", {"n": 3}, key="p-3", occurred_at=dt.datetime.now(paris)),
    ]


def test_encoded_records_get_exactly_the_wire_form_of_encode_message() -> None:
    messages = _sample()
    router = TopicRouter()
    prepared = encode_encoded_batch(
        [_encoded(m) for m in messages], router, CODEC, "svc", by_type=routes_by_type(router)
    )
    for message, (destination, message_id, key, value, headers) in zip(
        messages, prepared, strict=True
    ):
        raw = encode_message(message, CODEC, source="svc")
        assert (destination, message_id) == (router(message), message.id)
        assert (key, value, headers) == (raw.key, raw.value, list(raw.headers))
        assert decode_message(raw) == message


def test_only_a_template_topic_router_is_cached_per_type() -> None:
    assert routes_by_type(TopicRouter({"a.b": "x"}))
    assert not routes_by_type(TopicRouter(default=lambda m: m.payload["topic"]))
    assert not routes_by_type(lambda m: "x")
    seen: list[Any] = []

    def by_payload(message: Message) -> str:
        seen.append(message.payload)
        return f"t-{message.payload['n']}"

    prepared = encode_encoded_batch([_encoded(m) for m in _sample()[::2]], by_payload, CODEC, "s")
    assert [p[0] for p in prepared] == ["t-1", "t-3"]  # a payload router sees the decoded payload
    assert seen == [{"n": 1, "name": "café"}, {"n": 3}]


def test_an_unroutable_or_undecodable_record_fails_the_batch_before_sending() -> None:
    good = _encoded(_sample()[0])
    garbage = good._replace(id="bad", value=b"\xff not json")
    with pytest.raises(PublishError, match="bad"):
        encode_encoded_batch([good, garbage], lambda m: "x", CODEC, "s")
    with pytest.raises(PublishError, match="cannot be published"):
        encode_encoded_batch([good], TopicRouter(default=lambda m: ""), CODEC, "s")


def test_publish_encoded_round_trips_through_kafka_like_publish(
    kafka_topic: Callable[..., str], kafka_consumer_config: dict[str, Any]
) -> None:
    topic = kafka_topic("encoded", partitions=3)
    router = TopicRouter(default=topic)
    publisher = KafkaPublisher(kafka_consumer_config["bootstrap.servers"], router=router)
    assert publisher.codec.content_type == CODEC.content_type
    plain = [
        Message("order.created", {"seq": i}, key=f"k{i % 5}", headers={"traceparent": "x"})
        for i in range(40)
    ]
    encoded = [
        Message("order.created", {"seq": i}, key=f"k{i % 5}", headers={"traceparent": "x"})
        for i in range(40, 80)
    ]
    publisher.publish(plain)
    publisher.publish_encoded([_encoded(m) for m in encoded[:20]], codec=CODEC)
    publisher.publish_encoded([_encoded(m) for m in encoded[20:]])
    publisher.close()
    with pytest.raises(PublishError, match="closed"):
        publisher.publish_encoded([_encoded(encoded[0])])
    with KafkaSubscription(kafka_consumer_config, topic, kafka_consumer_config["group.id"]) as sub:
        got = receive_until(sub, 80)
    by_id = {m.id: m for m in plain + encoded}
    received = [decode_message(d.raw) for d in got]
    assert sorted(m.id for m in received) == sorted(by_id)
    assert all(m == by_id[m.id] for m in received)
    header_names = {tuple(name for name, _ in d.raw.headers) for d in got}
    assert len(header_names) == 1  # both paths write the same headers, in the same order
    seqs: dict[str | None, list[int]] = {}
    for m in received:
        seqs.setdefault(m.key, []).append(m.payload["seq"])
    assert all(s == sorted(s) for s in seqs.values())
