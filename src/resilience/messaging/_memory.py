"""An in-process broker with the delivery semantics of the real ones.

It is what tests and the embedded demos use, so it behaves like Kafka where it
matters: records are stored encoded (a payload that cannot be serialised fails
at publish), every destination has N key-hashed partitions, a consumer group
sees each record once, its members share the partitions, unacknowledged records
come back (at-least-once) when their consumer leaves, crashes, stops polling or
sits on them past the visibility timeout, and records of one partition are
handed out in order.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from resilience._clock import SYSTEM_CLOCK, Clock
from resilience._errors import (
    ConfigurationError,
    MessagingError,
    PublishError,
    SubscriptionClosedError,
)

from ._common import dead_letter_destination, dead_letter_record, encode_batch, partition_for
from ._message import Codec, JsonCodec, Message, RawMessage, decode_message
from ._protocols import Delivery, Router
from ._routing import TopicRouter

__all__ = [
    "AsyncInMemoryPublisher",
    "AsyncInMemorySubscription",
    "InMemoryBroker",
    "InMemoryPublisher",
    "InMemorySubscription",
]

_JSON: Final = JsonCodec()


@dataclass(frozen=True, slots=True)
class _Token:
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class _Topic:
    name: str
    partitions: list[list[RawMessage]]
    order: list[tuple[int, int]] = field(
        default_factory=list
    )  # (partition, offset) in append order
    next_keyless: int = 0


@dataclass(slots=True)
class _Cursor:
    """One group's progress through one partition."""

    committed: int = 0  # every offset below is acked
    position: int = 0  # next offset to hand out
    owner: int | None = None  # member id
    acked: set[int] = field(default_factory=set)  # acked offsets >= committed
    handed_at: dict[int, float] = field(default_factory=dict)  # outstanding offset -> when
    counts: dict[int, int] = field(default_factory=dict)  # offset -> times handed out

    def rewind(self) -> None:
        self.position = self.committed
        self.handed_at.clear()


@dataclass(slots=True)
class _Member:
    id: int
    topics: tuple[str, ...]
    last_seen: float
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)
    alive: bool = True


@dataclass(slots=True)
class _Group:
    members: dict[int, _Member] = field(default_factory=dict)
    expired: dict[int, _Member] = field(default_factory=dict)  # evicted for silence; may rejoin
    cursors: dict[tuple[str, int], _Cursor] = field(default_factory=dict)


@dataclass(slots=True)
class _Faults:
    fail_publishes: int = 0
    fail_after: int = 0
    fail_reason: str = ""
    duplicate_publishes: int = 0
    duplicate_deliveries: int = 0
    publish_delay: float = 0.0


class InMemoryBroker:
    """A thread-safe, asyncio-friendly broker living in this process.

    Use it in tests and demos wherever Kafka or Redis Streams would go: it
    speaks the same `Publisher` / `Subscription` protocols and keeps the same
    promises, and it can inject the faults real brokers produce
    (`fail_publishes`, `duplicate_publishes`, `duplicate_deliveries`,
    `delay_publishes`, `crash`).

    Args:
        partitions: partitions per destination, created on first use.
        visibility_timeout: a record handed out and not acked for this long is
            handed out again (from the partition's first unacked record, so
            order holds).
        session_timeout: a member that has not called ``receive`` for this long
            is considered dead; its partitions go to the other members.
        clock: time source for the two timeouts.
        source: the CloudEvents ``source`` written by publishers.
    """

    __slots__ = (
        "_clock",
        "_cond",
        "_faults",
        "_groups",
        "_lock",
        "_member_ids",
        "_topics",
        "partitions",
        "session_timeout",
        "source",
        "visibility_timeout",
    )

    def __init__(
        self,
        *,
        partitions: int = 4,
        visibility_timeout: float = 30.0,
        session_timeout: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
        source: str = "resilience",
    ) -> None:
        if not isinstance(partitions, int) or partitions < 1:
            raise ConfigurationError("partitions", "must be an integer >= 1")
        if not visibility_timeout > 0:
            raise ConfigurationError("visibility_timeout", "must be > 0 seconds")
        if not session_timeout > 0:
            raise ConfigurationError("session_timeout", "must be > 0 seconds")
        self.partitions = partitions
        self.visibility_timeout = float(visibility_timeout)
        self.session_timeout = float(session_timeout)
        self.source = source
        self._clock = clock
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._faults = _Faults()
        self._member_ids = itertools.count(1)

    # ------------------------------------------------------------------ endpoints

    def publisher(self, *, router: Router | None = None, codec: Codec = _JSON) -> InMemoryPublisher:
        """A `Publisher` routing with *router* (default `TopicRouter()`)."""
        return InMemoryPublisher(self, router or TopicRouter(), codec)

    def async_publisher(
        self, *, router: Router | None = None, codec: Codec = _JSON
    ) -> AsyncInMemoryPublisher:
        """An `AsyncPublisher` routing with *router* (default `TopicRouter()`)."""
        return AsyncInMemoryPublisher(self, router or TopicRouter(), codec)

    def subscribe(self, destinations: str | Iterable[str], group: str) -> InMemorySubscription:
        """Join consumer *group* on *destinations*; returns a `Subscription`."""
        topics, member = self._join(destinations, group)
        return InMemorySubscription(self, group, topics, member)

    def async_subscribe(
        self, destinations: str | Iterable[str], group: str
    ) -> AsyncInMemorySubscription:
        """Join consumer *group* on *destinations*; returns an `AsyncSubscription`."""
        topics, member = self._join(destinations, group)
        return AsyncInMemorySubscription(self, group, topics, member)

    # ------------------------------------------------------------------ inspection

    def create_topic(self, name: str, partitions: int | None = None) -> str:
        """Create *name* with *partitions* partitions (no-op if it exists)."""
        if partitions is not None and (not isinstance(partitions, int) or partitions < 1):
            raise ConfigurationError("partitions", "must be an integer >= 1")
        with self._lock:
            self._topic(name, partitions)
        return name

    def topics(self) -> list[str]:
        """Every destination that exists, sorted."""
        with self._lock:
            return sorted(self._topics)

    def records(self, destination: str) -> list[RawMessage]:
        """Every record ever written to *destination*, in append order."""
        with self._lock:
            topic = self._topics.get(destination)
            if topic is None:
                return []
            return [topic.partitions[p][o] for p, o in topic.order]

    def messages(self, destination: str, codec: Codec = _JSON) -> list[Message]:
        """The decoded records of *destination* (raises `MessageDecodeError` on garbage)."""
        return [decode_message(raw, codec) for raw in self.records(destination)]

    def dead_letters(self, destination: str) -> list[RawMessage]:
        """The records dead-lettered from *destination* (``<destination>.dlq``)."""
        return self.records(dead_letter_destination(destination))

    def pending(self, group: str, destination: str) -> int:
        """Records of *destination* not yet acked by *group* (waiting or in flight)."""
        with self._lock:
            topic = self._topics.get(destination)
            if topic is None:
                return 0
            state = self._groups.get(group)
            total = 0
            for p, log in enumerate(topic.partitions):
                cursor = state.cursors.get((destination, p)) if state else None
                if cursor is None:
                    total += len(log)
                else:
                    total += len(log) - cursor.committed - len(cursor.acked)
            return total

    def publish_raw(
        self, destination: str, raw: RawMessage, *, partition: int | None = None
    ) -> int:
        """Append a record as-is (garbage included), like a foreign producer would.

        Returns the partition it landed on.
        """
        with self._cond:
            topic = self._topic(destination)
            return self._append(topic, raw, partition)

    # ------------------------------------------------------------------ fault injection

    def fail_publishes(
        self, times: int = 1, *, after: int = 0, reason: str = "injected fault"
    ) -> None:
        """Make the next *times* publish calls fail after storing their first *after* messages.

        The failure is a `PublishError` whose ``delivered`` lists the stored
        ids, exactly like a broker that acknowledged part of a batch.
        """
        with self._lock:
            self._faults.fail_publishes = times
            self._faults.fail_after = after
            self._faults.fail_reason = reason

    def duplicate_publishes(self, times: int = 1) -> None:
        """Store each of the next *times* published messages twice (a producer
        retry after a lost acknowledgement, without idempotence)."""
        with self._lock:
            self._faults.duplicate_publishes = times

    def duplicate_deliveries(self, times: int = 1) -> None:
        """Hand each of the next *times* records out twice in a row (a redelivery
        after a lost ack): consumers must be idempotent."""
        with self._lock:
            self._faults.duplicate_deliveries = times

    def delay_publishes(self, seconds: float) -> None:
        """Wait *seconds* (on the broker's clock) before acknowledging each publish."""
        if seconds < 0:
            raise ConfigurationError("seconds", "must be >= 0")
        with self._lock:
            self._faults.publish_delay = seconds

    def crash(self, subscription: InMemorySubscription | AsyncInMemorySubscription) -> None:
        """Kill *subscription* as if its process died: nothing it holds is acked,
        its partitions go to the remaining members, and it can no longer be used."""
        with self._cond:
            self._leave(subscription.group, subscription.member)
            self._cond.notify_all()

    # ------------------------------------------------------------------ internals (lock held)

    def _topic(self, name: str, partitions: int | None = None) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            count = partitions or self.partitions
            topic = _Topic(name, [[] for _ in range(count)])
            self._topics[name] = topic
            for group_name, group in self._groups.items():
                if any(name in m.topics for m in group.members.values()):
                    self._rebalance(group_name, group)
        return topic

    def _append(self, topic: _Topic, raw: RawMessage, partition: int | None = None) -> int:
        if partition is None:
            partition = partition_for(raw.key, len(topic.partitions), topic.next_keyless)
            if raw.key is None:
                topic.next_keyless += 1
        elif not 0 <= partition < len(topic.partitions):
            raise ConfigurationError(
                "partition", f"{topic.name!r} has {len(topic.partitions)} partitions"
            )
        log = topic.partitions[partition]
        topic.order.append((partition, len(log)))
        log.append(raw)
        return partition

    def _notify(self) -> None:
        self._cond.notify_all()
        for group in self._groups.values():
            for member in group.members.values():
                for loop, event in member.waiters:
                    try:
                        loop.call_soon_threadsafe(event.set)
                    except RuntimeError:  # that loop is closed; its waiter is gone
                        pass

    def _publish(self, messages: Sequence[Message], router: Router, codec: Codec) -> float:
        batch = encode_batch(messages, router, codec, self.source)
        with self._cond:
            faults = self._faults
            limit = len(batch)
            failing = faults.fail_publishes > 0
            if failing:
                faults.fail_publishes -= 1
                limit = min(limit, faults.fail_after)
            stored: set[str] = set()
            for destination, message, raw in batch[:limit]:
                topic = self._topic(destination)
                self._append(topic, raw)
                if faults.duplicate_publishes > 0:
                    faults.duplicate_publishes -= 1
                    self._append(topic, raw)
                stored.add(message.id)
            if stored:
                self._notify()
            if failing:
                raise PublishError(
                    f"in-memory broker: {faults.fail_reason} after {limit} of {len(batch)} messages",
                    delivered=frozenset(stored),
                )
            return faults.publish_delay

    def _join(self, destinations: str | Iterable[str], group: str) -> tuple[tuple[str, ...], int]:
        topics = (destinations,) if isinstance(destinations, str) else tuple(destinations)
        if not topics or not all(isinstance(t, str) and t for t in topics):
            raise ConfigurationError("destinations", "must be one or more non-empty names")
        if not isinstance(group, str) or not group:
            raise ConfigurationError("group", "must be a non-empty string")
        with self._cond:
            for name in topics:
                self._topic(name)
            state = self._groups.setdefault(group, _Group())
            member = _Member(next(self._member_ids), topics, self._clock.monotonic())
            state.members[member.id] = member
            self._rebalance(group, state)
            return topics, member.id

    def _leave(self, group: str, member_id: int) -> None:
        state = self._groups.get(group)
        if state is None:
            return
        state.expired.pop(member_id, None)
        member = state.members.pop(member_id, None)
        if member is not None:
            member.alive = False
            for loop, event in member.waiters:
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:
                    pass
            self._rebalance(group, state)

    def _rebalance(self, group: str, state: _Group) -> None:
        """Spread each topic's partitions over the members subscribed to it.

        A partition whose owner changes restarts at its first unacked record,
        so whatever the old owner held unacked is handed out again, in order.
        """
        del group
        for name, topic in self._topics.items():
            members = sorted(m.id for m in state.members.values() if name in m.topics)
            for p in range(len(topic.partitions)):
                owner = members[p % len(members)] if members else None
                cursor = state.cursors.get((name, p))
                if cursor is None:
                    if owner is None:
                        continue
                    cursor = state.cursors[name, p] = _Cursor()
                if cursor.owner != owner:
                    cursor.owner = owner
                    cursor.rewind()

    def _member(self, group: str, member_id: int) -> _Member:
        state = self._groups.get(group)
        member = state.members.get(member_id) if state else None
        if member is None or not member.alive:
            raise SubscriptionClosedError(
                f"subscription to group {group!r} is closed or crashed; subscribe again"
            )
        return member

    def _expire(self, state: _Group, group: str, now: float) -> None:
        dead = [m for m in state.members.values() if now - m.last_seen > self.session_timeout]
        for member in dead:
            self._leave(group, member.id)
            member.alive = True  # a silent member is evicted, not closed: it may rejoin
            state.expired[member.id] = member

    def _fetch(self, group: str, member_id: int, max_messages: int) -> list[Delivery]:
        now = self._clock.monotonic()
        state = self._groups[group]
        rejoining = state.expired.pop(member_id, None)
        if rejoining is not None:  # like a Kafka consumer polling again after its session expired
            state.members[member_id] = rejoining
            self._rebalance(group, state)
        if member_id in state.members:
            state.members[member_id].last_seen = now
        self._expire(state, group, now)
        member = self._member(group, member_id)
        out: list[Delivery] = []
        faults = self._faults
        for name in member.topics:
            topic = self._topics[name]
            for p, log in enumerate(topic.partitions):
                cursor = state.cursors.get((name, p))
                if cursor is None or cursor.owner != member_id:
                    continue
                if (
                    cursor.handed_at
                    and now - min(cursor.handed_at.values()) >= self.visibility_timeout
                ):
                    cursor.rewind()
                while cursor.position < len(log) and len(out) < max_messages:
                    offset = cursor.position
                    cursor.position += 1
                    if offset in cursor.acked:
                        continue
                    copies = 1
                    if faults.duplicate_deliveries > 0:
                        faults.duplicate_deliveries -= 1
                        copies = 2
                    for _ in range(copies):
                        count = cursor.counts.get(offset, 0) + 1
                        cursor.counts[offset] = count
                        cursor.handed_at[offset] = now
                        out.append(Delivery(log[offset], name, _Token(name, p, offset), count))
                if len(out) >= max_messages:
                    return out
        return out

    def _ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        state = self._groups.get(group)
        if state is None:
            return
        for delivery in deliveries:
            token = delivery.token
            if not isinstance(token, _Token):
                raise MessagingError(f"{delivery!r} was not received from an in-memory broker")
            cursor = state.cursors.get((token.topic, token.partition))
            if cursor is None or token.offset < cursor.committed:
                continue  # already acked: acks are idempotent
            cursor.acked.add(token.offset)
            cursor.handed_at.pop(token.offset, None)
            while cursor.committed in cursor.acked:
                cursor.acked.discard(cursor.committed)
                cursor.counts.pop(cursor.committed, None)
                cursor.committed += 1
            cursor.position = max(cursor.position, cursor.committed)

    def _dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        token = delivery.token
        if not isinstance(token, _Token):
            raise MessagingError(f"{delivery!r} was not received from an in-memory broker")
        record = dead_letter_record(
            delivery.raw,
            reason,
            topic=token.topic,
            partition=token.partition,
            offset=token.offset,
            delivery_count=delivery.delivery_count,
        )
        with self._cond:
            dlq = self._topic(dead_letter_destination(token.topic))
            self._append(dlq, record)
            self._ack(group, [delivery])
            self._notify()

    def __repr__(self) -> str:
        with self._lock:
            return f"InMemoryBroker(partitions={self.partitions}, topics={sorted(self._topics)})"


class InMemoryPublisher:
    """`Publisher` for an `InMemoryBroker`; get one from `InMemoryBroker.publisher`."""

    system = "in_memory"  # ``messaging.system``, as on `InMemorySubscription`

    __slots__ = ("_broker", "_codec", "_router", "closed")

    def __init__(self, broker: InMemoryBroker, router: Router, codec: Codec) -> None:
        self._broker = broker
        self._router = router
        self._codec = codec
        self.closed = False

    def publish(self, messages: Sequence[Message], /) -> None:
        if self.closed:
            raise PublishError("publisher is closed")
        delay = self._broker._publish(messages, self._router, self._codec)
        if delay:
            self._broker._clock.sleep(delay)

    def close(self) -> None:
        self.closed = True


class AsyncInMemoryPublisher:
    """`AsyncPublisher` for an `InMemoryBroker`; get one from `InMemoryBroker.async_publisher`."""

    system = "in_memory"  # ``messaging.system``, as on `InMemorySubscription`

    __slots__ = ("_broker", "_codec", "_router", "closed")

    def __init__(self, broker: InMemoryBroker, router: Router, codec: Codec) -> None:
        self._broker = broker
        self._router = router
        self._codec = codec
        self.closed = False

    async def publish(self, messages: Sequence[Message], /) -> None:
        if self.closed:
            raise PublishError("publisher is closed")
        delay = self._broker._publish(messages, self._router, self._codec)
        if delay:
            await self._broker._clock.asleep(delay)

    async def close(self) -> None:
        self.closed = True


def _check_receive(max_messages: int, timeout: float) -> None:
    if not isinstance(max_messages, int) or max_messages < 1:
        raise ConfigurationError("max_messages", "must be an integer >= 1")
    if timeout < 0:
        raise ConfigurationError("timeout", "must be >= 0")


class InMemorySubscription:
    """One member of a consumer group on an `InMemoryBroker` (a `Subscription`).

    ``close()`` leaves the group without acking anything still held: those
    records go to the remaining members (or to the next one to join).
    """

    system = "in_memory"

    __slots__ = ("_broker", "destinations", "group", "member")

    def __init__(
        self, broker: InMemoryBroker, group: str, destinations: tuple[str, ...], member: int
    ) -> None:
        self._broker = broker
        self.group = group
        self.destinations = destinations
        self.member = member

    def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        _check_receive(max_messages, timeout)
        broker = self._broker
        deadline = time.monotonic() + timeout
        with broker._cond:
            while True:
                out = broker._fetch(self.group, self.member, max_messages)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                # Wake at least every 50 ms: time-based redeliveries need no notify.
                broker._cond.wait(min(remaining, 0.05))

    def ack(self, deliveries: Sequence[Delivery], /) -> None:
        with self._broker._cond:
            self._broker._ack(self.group, deliveries)

    def dead_letter(self, delivery: Delivery, reason: str, /) -> None:
        self._broker._dead_letter(self.group, delivery, reason)

    def close(self) -> None:
        with self._broker._cond:
            self._broker._leave(self.group, self.member)
            self._broker._cond.notify_all()

    def __enter__(self) -> InMemorySubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncInMemorySubscription:
    """`AsyncSubscription` twin of `InMemorySubscription`; never blocks the event loop."""

    system = "in_memory"

    __slots__ = ("_broker", "destinations", "group", "member")

    def __init__(
        self, broker: InMemoryBroker, group: str, destinations: tuple[str, ...], member: int
    ) -> None:
        self._broker = broker
        self.group = group
        self.destinations = destinations
        self.member = member

    async def receive(
        self,
        max_messages: int,
        timeout: float,  # noqa: ASYNC109 - a broker poll timeout, part of the protocol
    ) -> Sequence[Delivery]:
        _check_receive(max_messages, timeout)
        broker = self._broker
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        waiter = (loop, event)
        while True:
            with broker._lock:
                out = broker._fetch(self.group, self.member, max_messages)
                if out:
                    return out
                member = broker._member(self.group, self.member)
                event.clear()
                member.waiters.append(waiter)
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    return out
                try:
                    await asyncio.wait_for(event.wait(), min(remaining, 0.05))
                except TimeoutError:
                    pass
            finally:
                with broker._lock:
                    try:
                        member.waiters.remove(waiter)
                    except ValueError:
                        pass

    async def ack(self, deliveries: Sequence[Delivery], /) -> None:
        with self._broker._cond:
            self._broker._ack(self.group, deliveries)

    async def dead_letter(self, delivery: Delivery, reason: str, /) -> None:
        self._broker._dead_letter(self.group, delivery, reason)

    async def close(self) -> None:
        with self._broker._cond:
            self._broker._leave(self.group, self.member)
            self._broker._cond.notify_all()

    async def __aenter__(self) -> AsyncInMemorySubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
