"""The consumer loop: decode, handle, retry, dead-letter, ack in order, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from resilience import ConfigurationError, MessagingError
from resilience.messaging import (
    DLQ_REASON,
    AsyncConsumer,
    Consumer,
    InMemoryBroker,
    Message,
    RawMessage,
    RetryBackoff,
    stop_on_signals,
)
from resilience.messaging._common import header
from resilience.testing import FakeClock, RecordingTelemetry


class Flaky(Exception):
    pass


class Invalid(Exception):
    pass


def orders(n: int, keys: int = 3) -> list[Message]:
    return [
        Message(type="order.created", key=f"order-{i % keys}", payload={"seq": i}) for i in range(n)
    ]


def consumer_for(broker: InMemoryBroker, handler: Any, **options: Any) -> Consumer:
    options.setdefault("clock", FakeClock())
    options.setdefault("rng", random.Random(7))
    return Consumer(broker.subscribe("order", "g"), handler, **options)


def test_every_message_is_handled_once_and_acked() -> None:
    broker = InMemoryBroker()
    sent = orders(50)
    broker.publisher().publish(sent)
    seen: list[str] = []
    consumer = consumer_for(broker, lambda m: seen.append(m.id), batch_size=7)
    while consumer.run_once(timeout=0):
        pass
    assert sorted(seen) == sorted(m.id for m in sent)
    assert consumer.stats.handled == 50
    assert broker.pending("g", "order") == 0


def test_transient_failures_are_retried_with_backoff_then_succeed() -> None:
    broker = InMemoryBroker(partitions=1)
    sent = orders(3, keys=1)
    broker.publisher().publish(sent)
    clock, telemetry = FakeClock(), RecordingTelemetry()
    failures = {sent[1].id: 2}
    handled: list[int] = []

    def handler(message: Message) -> None:
        if failures.get(message.id, 0) > 0:
            failures[message.id] -= 1
            raise Flaky("database blip")
        handled.append(message.payload["seq"])

    consumer = consumer_for(
        broker,
        handler,
        clock=clock,
        telemetry=telemetry,
        backoff=RetryBackoff(initial=1, multiplier=2, maximum=10, jitter=0.5),
    )
    assert consumer.run_once(timeout=0) == 3
    assert handled == [0, 1, 2]  # the retried message did not let the next one jump ahead
    assert len(clock.sleeps) == 2
    assert 1 <= clock.sleeps[0] <= 1.5
    assert 2 <= clock.sleeps[1] <= 2.5
    retries = telemetry.of_kind("retry")
    assert [e.attributes["attempt"] for e in retries] == [1, 2]
    assert all(e.attributes["message_id"] == sent[1].id for e in retries)
    assert "Flaky: database blip" in retries[0].attributes["error"]
    assert broker.pending("g", "order") == 0
    assert broker.dead_letters("order") == []


def test_a_message_that_keeps_failing_is_dead_lettered_and_the_rest_flow() -> None:
    broker = InMemoryBroker(partitions=1)
    sent = orders(5, keys=1)
    poison = sent[2]
    broker.publisher().publish(sent)
    telemetry = RecordingTelemetry()
    calls: defaultdict[str, int] = defaultdict(int)
    handled: list[str] = []

    def handler(message: Message) -> None:
        calls[message.id] += 1
        if message.id == poison.id:
            raise Flaky(f"cannot apply {message.payload['seq']}")
        handled.append(message.id)

    consumer = consumer_for(broker, handler, dead_letter_after=4, telemetry=telemetry)
    consumer.run_once(timeout=0)
    assert calls[poison.id] == 4
    assert handled == [m.id for m in sent if m is not poison]
    [dead] = broker.dead_letters("order")
    assert header(dead, "ce_id") == poison.id
    reason = header(dead, DLQ_REASON)
    assert reason is not None
    assert "failed 4 times" in reason
    assert "Flaky: cannot apply 2" in reason
    [event] = telemetry.of_kind("dead_letter")
    assert event.attributes["message_id"] == poison.id
    assert event.attributes["attempts"] == 4
    assert broker.pending("g", "order") == 0
    assert consumer.stats.dead_lettered == 1


def test_garbage_is_dead_lettered_with_the_reason_and_the_consumer_keeps_going() -> None:
    broker = InMemoryBroker(partitions=1)
    before, after = orders(2, keys=1), orders(2, keys=1)
    broker.publisher().publish(before)
    broker.publish_raw("order", RawMessage(key=None, value=b"{not json"))
    broker.publish_raw("order", RawMessage(key=b"\xff", value=b"{}", headers=[("ce_id", b"x")]))
    broker.publisher().publish(after)
    seen: list[str] = []
    consumer = consumer_for(broker, lambda m: seen.append(m.id))
    while consumer.run_once(timeout=0):
        pass
    assert seen == [m.id for m in before + after]
    reasons = [header(r, DLQ_REASON) or "" for r in broker.dead_letters("order")]
    assert len(reasons) == 2
    assert all(r.startswith("undecodable:") for r in reasons)
    assert "ce_id or ce_type" in reasons[0]
    assert "UTF-8" in reasons[1]
    assert consumer.stats.undecodable == 2
    assert broker.pending("g", "order") == 0


def test_permanent_errors_skip_the_retries() -> None:
    broker = InMemoryBroker()
    broker.publisher().publish(orders(1))
    calls = 0

    def handler(message: Message) -> None:
        nonlocal calls
        calls += 1
        raise Invalid("total must be positive")

    consumer = consumer_for(broker, handler, permanent_errors=(Invalid,))
    consumer.run_once(timeout=0)
    assert calls == 1
    [dead] = broker.dead_letters("order")
    assert (header(dead, DLQ_REASON) or "").startswith("permanent error: Invalid")


class DatabaseDown(Exception):
    pass


def test_transient_errors_never_dead_letter_a_good_message() -> None:
    # The handler's database is down for far longer than dead_letter_after
    # attempts; the message waits it out, then is handled once and acked.
    broker = InMemoryBroker()
    [message] = orders(1)
    broker.publisher().publish([message])
    calls, handled = 0, []

    def handler(m: Message) -> None:
        nonlocal calls
        calls += 1
        if calls <= 25:
            raise DatabaseDown("connection refused")
        handled.append(m.id)

    telemetry = RecordingTelemetry()
    consumer = consumer_for(
        broker,
        handler,
        dead_letter_after=3,
        transient_errors=(DatabaseDown,),
        telemetry=telemetry,
    )
    consumer.run_once(timeout=0)
    assert calls == 26
    assert handled == [message.id]
    assert broker.dead_letters("order") == []
    assert broker.pending("g", "order") == 0
    retries = telemetry.of_kind("retry")
    assert len(retries) == 25
    assert all(e.attributes["transient"] for e in retries)


def test_other_errors_still_dead_letter_when_transient_ones_are_declared() -> None:
    broker = InMemoryBroker()
    broker.publisher().publish(orders(1))
    calls = 0

    def handler(m: Message) -> None:
        nonlocal calls
        calls += 1
        raise Flaky("a bug, not an outage")

    consumer = consumer_for(broker, handler, dead_letter_after=3, transient_errors=(DatabaseDown,))
    consumer.run_once(timeout=0)
    assert calls == 3
    [dead] = broker.dead_letters("order")
    assert "failed 3 times" in (header(dead, DLQ_REASON) or "")


def test_a_record_redelivered_too_often_is_dead_lettered_without_running_the_handler() -> None:
    broker = InMemoryBroker(partitions=1)
    [message] = orders(1)
    broker.publisher().publish([message])
    for _ in range(3):  # three consumers "crash" while holding it
        sub = broker.subscribe("order", "g")
        assert len(sub.receive(10, 0)) == 1
        broker.crash(sub)
    calls: list[str] = []
    consumer = consumer_for(broker, calls.append, max_deliveries=3)
    consumer.run_once(timeout=0)
    assert calls == []
    [dead] = broker.dead_letters("order")
    assert "delivered 4 times" in (header(dead, DLQ_REASON) or "")
    assert broker.pending("g", "order") == 0


def test_per_key_order_holds_with_random_failures() -> None:
    broker = InMemoryBroker(partitions=3)
    sent = orders(300, keys=11)
    broker.publisher().publish(sent)
    rng = random.Random(3)
    by_key: defaultdict[str | None, list[int]] = defaultdict(list)

    def handler(message: Message) -> None:
        if rng.random() < 0.2:
            raise Flaky("sometimes")
        by_key[message.key].append(message.payload["seq"])

    consumer = consumer_for(broker, handler, dead_letter_after=50, batch_size=13)
    while consumer.run_once(timeout=0):
        pass
    assert sum(len(v) for v in by_key.values()) == 300
    for seqs in by_key.values():
        assert seqs == sorted(seqs)
    assert consumer.stats.retries > 20


def test_an_escaping_base_exception_acks_only_what_was_finished() -> None:
    broker = InMemoryBroker(partitions=1)
    sent = orders(5, keys=1)
    broker.publisher().publish(sent)

    def handler(message: Message) -> None:
        if message.payload["seq"] == 3:
            raise KeyboardInterrupt

    consumer = consumer_for(broker, handler)
    with pytest.raises(KeyboardInterrupt):
        consumer.run_once(timeout=0)
    consumer.subscription.close()
    assert broker.pending("g", "order") == 2  # 3 and 4: redelivered to the next consumer
    seen: list[int] = []
    consumer_for(broker, lambda m: seen.append(m.payload["seq"])).run_once(timeout=0)
    assert seen == [3, 4]


def test_run_stops_after_the_message_in_hand_and_nothing_is_lost() -> None:
    broker = InMemoryBroker(partitions=2)
    sent = orders(200, keys=7)
    broker.publisher().publish(sent)
    stop = threading.Event()
    first: list[str] = []

    def slow_handler(message: Message) -> None:
        first.append(message.id)
        if len(first) == 30:
            stop.set()  # SIGTERM arrives while this message is in hand

    consumer = Consumer(
        broker.subscribe("order", "g"), slow_handler, batch_size=100, poll_timeout=0.05
    )
    runner = threading.Thread(target=consumer.run, args=(stop,))
    runner.start()
    runner.join(10)
    assert not runner.is_alive()
    assert len(first) == 30  # finished the one in hand, started no other
    assert broker.pending("g", "order") == 170  # the 30 were acked, the subscription left
    rest: list[str] = []
    successor = Consumer(broker.subscribe("order", "g"), lambda m: rest.append(m.id))
    while successor.run_once(timeout=0):
        pass
    assert sorted(first + rest) == sorted(m.id for m in sent)
    assert not set(first) & set(rest)


def test_stop_during_a_backoff_leaves_the_message_for_redelivery() -> None:
    broker = InMemoryBroker(partitions=1)
    broker.publisher().publish(orders(1))
    stop = threading.Event()

    def handler(message: Message) -> None:
        stop.set()
        raise Flaky("down")

    consumer = Consumer(
        broker.subscribe("order", "g"),
        handler,
        backoff=RetryBackoff(initial=30, maximum=30, jitter=0),
        poll_timeout=0.05,
    )
    started = time.monotonic()
    consumer.run(stop)
    assert time.monotonic() - started < 10  # did not sit out the 30 s backoff
    assert broker.pending("g", "order") == 1
    assert broker.dead_letters("order") == []


def test_consumer_span_wraps_each_handler_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import resilience.tracing

    spans: list[tuple[str, dict[str, Any]]] = []
    inside: list[bool] = []
    active = False

    @contextlib.contextmanager
    def consumer_span(message: Message, **attributes: Any) -> Iterator[None]:
        nonlocal active
        spans.append((message.id, attributes))
        active = True
        try:
            yield
        finally:
            active = False

    monkeypatch.setattr(resilience.tracing, "consumer_span", consumer_span, raising=False)
    broker = InMemoryBroker()
    [message] = orders(1)
    broker.publisher().publish([message])
    consumer_for(broker, lambda m: inside.append(active)).run_once(timeout=0)
    assert inside == [True]
    assert spans == [
        (message.id, {"system": "in_memory", "destination": "order", "consumer_group": "g"})
    ]


def test_stop_on_signals_sets_the_event_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGTERM) == before


def test_options_are_validated_at_construction() -> None:
    sub = InMemoryBroker().subscribe("order", "g")
    with pytest.raises(ConfigurationError):
        Consumer(sub, print, dead_letter_after=0)
    with pytest.raises(ConfigurationError):
        Consumer(sub, print, batch_size=0)
    with pytest.raises(ConfigurationError):
        Consumer(sub, print, poll_timeout=0)
    with pytest.raises(ConfigurationError):
        Consumer(sub, print, max_deliveries=0)
    with pytest.raises(ConfigurationError):
        Consumer(sub, "not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RetryBackoff(initial=2, maximum=1)
    with pytest.raises(ConfigurationError):
        RetryBackoff(multiplier=0.5)
    with pytest.raises(ConfigurationError):
        RetryBackoff(jitter=-1)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    backoff = RetryBackoff(initial=0.5, maximum=3, multiplier=2, jitter=0)
    rng = random.Random(0)
    assert [backoff.delay(n, rng) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_async_consumer_retries_dead_letters_and_acks_in_order() -> None:
    broker = InMemoryBroker(partitions=2)
    sent = orders(60, keys=5)
    poison = sent[10]
    broker.publisher().publish(sent)
    broker.publish_raw("order", RawMessage(key=b"order-1", value=b"garbage"))
    clock = FakeClock()
    attempts: defaultdict[str, int] = defaultdict(int)
    by_key: defaultdict[str | None, list[int]] = defaultdict(list)

    async def handler(message: Message) -> None:
        attempts[message.id] += 1
        if message.id == poison.id or (
            attempts[message.id] == 1 and message.payload["seq"] % 7 == 0
        ):
            raise Flaky("nope")
        await asyncio.sleep(0)
        by_key[message.key].append(message.payload["seq"])

    consumer = AsyncConsumer(
        broker.async_subscribe("order", "g"), handler, clock=clock, dead_letter_after=3
    )
    while await consumer.run_once(timeout=0):
        pass
    assert attempts[poison.id] == 3
    assert sum(len(v) for v in by_key.values()) == 59
    for seqs in by_key.values():
        assert seqs == sorted(seqs)
    assert len(broker.dead_letters("order")) == 2
    assert broker.pending("g", "order") == 0
    assert consumer.stats.undecodable == 1


async def test_async_run_stops_on_the_event_and_closes_the_subscription() -> None:
    broker = InMemoryBroker()
    sent = orders(20)
    stop = asyncio.Event()
    seen: list[str] = []

    async def handler(message: Message) -> None:
        seen.append(message.id)
        if len(seen) == len(sent):
            stop.set()

    sub = broker.async_subscribe("order", "g")
    task = asyncio.create_task(AsyncConsumer(sub, handler, poll_timeout=0.05).run(stop))
    await asyncio.sleep(0.02)
    await broker.async_publisher().publish(sent)
    await asyncio.wait_for(task, 10)
    assert sorted(seen) == sorted(m.id for m in sent)
    assert broker.pending("g", "order") == 0
    with pytest.raises(Exception, match="closed"):
        await sub.receive(1, 0)


class FlakyTransport:
    """Wraps a subscription; its receive and ack fail on the calls listed."""

    def __init__(self, inner: Any, fail_receive: set[int], fail_ack: set[int]) -> None:
        self.inner = inner
        self.fail_receive, self.fail_ack = fail_receive, fail_ack
        self.receives = self.acks = 0

    def receive(self, max_messages: int, timeout: float) -> Any:
        self.receives += 1
        if self.receives in self.fail_receive:
            raise MessagingError("connection reset")
        return self.inner.receive(max_messages, timeout)

    def ack(self, deliveries: Any) -> None:
        self.acks += 1
        if self.acks in self.fail_ack:
            raise MessagingError("commit failed")
        self.inner.ack(deliveries)

    def dead_letter(self, delivery: Any, reason: str) -> None:
        self.inner.dead_letter(delivery, reason)

    def close(self) -> None:
        self.inner.close()


def test_broker_errors_are_retried_without_losing_or_rehandling_anything() -> None:
    broker = InMemoryBroker(partitions=1)
    sent = orders(40, keys=1)
    broker.publisher().publish(sent)
    telemetry, clock = RecordingTelemetry(), FakeClock()
    transport = FlakyTransport(broker.subscribe("order", "g"), fail_receive={1, 3}, fail_ack={2})
    stop = threading.Event()
    handled: list[str] = []

    def handler(message: Message) -> None:
        handled.append(message.id)
        if len(handled) == len(sent):
            stop.set()

    consumer = Consumer(
        transport, handler, batch_size=10, clock=clock, telemetry=telemetry, poll_timeout=0.01
    )
    consumer.run(stop)
    assert handled == [m.id for m in sent]  # each exactly once, in order
    assert len(telemetry.of_kind("transport_error")) == 3
    assert consumer.stats.transport_errors == 3
    assert len(clock.sleeps) == 3
    assert broker.pending("g", "order") == 0  # the failed ack was retried


def test_run_ends_when_the_subscription_is_dead_instead_of_retrying_forever() -> None:
    from resilience._errors import SubscriptionClosedError

    broker = InMemoryBroker()
    sub = broker.subscribe("order", "g")
    broker.crash(sub)
    telemetry = RecordingTelemetry()
    consumer = Consumer(sub, print, clock=FakeClock(), telemetry=telemetry)
    with pytest.raises(SubscriptionClosedError):
        consumer.run(threading.Event())
    assert telemetry.of_kind("transport_error") == []
