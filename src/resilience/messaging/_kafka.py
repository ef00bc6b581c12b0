"""Kafka transport on confluent-kafka (librdkafka), loaded lazily (extra ``kafka``).

Publishing: an idempotent producer (``enable.idempotence``, ``acks=all``), so
librdkafka's own retries neither duplicate nor reorder records of a partition;
`KafkaPublisher.publish` returns only after every delivery report is in.

Consuming: manual commits only. The committed offset of a partition is
"first record not yet acked", so a crash redelivers exactly what was not
finished (and possibly some finished records after a gap: at-least-once).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from resilience._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    MessagingError,
    PublishError,
    SubscriptionClosedError,
)
from resilience._optional import require

from ._common import (
    EncodedMessage,
    dead_letter_destination,
    dead_letter_record,
    encode_batch,
    encode_encoded_batch,
    routes_by_type,
)
from ._message import H_ID, Codec, JsonCodec, Message, RawMessage
from ._protocols import Delivery, Router
from ._routing import TopicRouter
from ._threaded import ThreadedAsyncPublisher, ThreadedAsyncSubscription

__all__ = [
    "AsyncKafkaPublisher",
    "AsyncKafkaSubscription",
    "KafkaPublisher",
    "KafkaSubscription",
]

_JSON: Final = JsonCodec()
_log = logging.getLogger("resilience.messaging")
_TOPIC_NAME: Final = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
# Settings copied from a consumer's config to the producer it uses for dead letters.
_SHARED_PREFIXES: Final = ("bootstrap.servers", "security.", "sasl.", "ssl.", "client.id")


def _kafka() -> Any:
    return require("confluent_kafka", "kafka")


def _config(config: Mapping[str, Any] | str, name: str) -> dict[str, Any]:
    if isinstance(config, str):
        if not config:
            raise ConfigurationError(name, "bootstrap servers must not be empty")
        return {"bootstrap.servers": config}
    if not isinstance(config, Mapping) or not config.get("bootstrap.servers"):
        raise ConfigurationError(
            name, "must be a bootstrap servers string or a dict with bootstrap.servers"
        )
    return dict(config)


def _producer_config(config: dict[str, Any], timeout: float) -> dict[str, Any]:
    if str(config.get("enable.idempotence", True)).lower() in {"false", "0"}:
        raise ConfigurationError(
            "config",
            "enable.idempotence must stay on: without it a retry can duplicate or reorder records",
        )
    if str(config.get("acks", "all")).lower() not in {"all", "-1"}:
        raise ConfigurationError(
            "config", "acks must be 'all': anything less can lose acknowledged records on failover"
        )
    out = {"linger.ms": 5, **config, "enable.idempotence": True, "acks": "all"}
    # librdkafka fails a record itself once this passes, so every record gets a
    # delivery report before publish() gives up waiting: no record is left in
    # the local queue to be sent after we have already reported it as failed.
    out.setdefault("message.timeout.ms", int(timeout * 1000))
    if int(out["message.timeout.ms"]) > timeout * 1000:
        raise ConfigurationError("config", "message.timeout.ms must not exceed the publish timeout")
    return out


_Record = tuple[str, str, bytes | None, bytes, list[tuple[str, bytes]]]
"""``(topic, id, key, value, headers)``: one record ready for ``produce``."""

_UNKNOWN_ID: Final = ""
"""Stands for a failed record whose id cannot be read back (it has no ``ce_id`` header)."""


@functools.cache
def _transport_codes() -> frozenset[int]:
    """librdkafka errors that say nothing about the record itself: the broker is
    unreachable, slow or restarting, or we gave up waiting (and purged)."""
    error = _kafka().KafkaError
    names = (
        "_MSG_TIMED_OUT",
        "_TIMED_OUT",
        "_TIMED_OUT_QUEUE",
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
        "_RESOLVE",
        "_PURGE_QUEUE",
        "_PURGE_INFLIGHT",
        "_DESTROY",
        "_QUEUE_FULL",
        "_FENCED",
        "_FATAL",
        "REQUEST_TIMED_OUT",
        "NETWORK_EXCEPTION",
        "LEADER_NOT_AVAILABLE",
        "NOT_LEADER_FOR_PARTITION",
        "BROKER_NOT_AVAILABLE",
        "NOT_ENOUGH_REPLICAS",
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
    )
    return frozenset(getattr(error, n) for n in names if hasattr(error, n))


class _Reports:
    """The producer-level delivery callback: collects the *failed* records of a batch.

    Producers run with ``delivery.report.only.error``, so a record the broker
    acknowledged costs no Python callback at all; a batch is complete when the
    producer's queue is empty, and what did not fail was delivered.
    """

    __slots__ = ("errors", "fatal", "transport_only")

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}
        self.fatal = False
        self.transport_only = True

    def reset(self) -> None:
        self.errors = {}
        self.fatal = False
        self.transport_only = True

    def failed(self, message_id: str, reason: str, *, transport: bool) -> None:
        self.errors.setdefault(message_id, reason)
        self.transport_only = self.transport_only and transport

    def __call__(self, err: Any, msg: Any) -> None:
        if err is None:  # only with a client that ignores delivery.report.only.error
            return
        if err.fatal():
            self.fatal = True
        transport = bool(err.retriable() or err.fatal() or err.code() in _transport_codes())
        self.failed(_record_id(msg), str(err), transport=transport)


def _record_id(msg: Any) -> str:
    for name, value in msg.headers() or ():
        if name == H_ID and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return _UNKNOWN_ID


def _new_producer(settings: dict[str, Any]) -> tuple[Any, _Reports]:
    reports = _Reports()
    config = {**settings, "delivery.report.only.error": True, "on_delivery": reports}
    return _kafka().Producer(config), reports


@dataclass(slots=True)
class _Batch:
    """What the broker said about one batch."""

    delivered: frozenset[str]
    errors: dict[str, str] = field(default_factory=dict)
    transport_only: bool = True
    fatal: bool = False


def _raw_records(records: Sequence[tuple[str, str, RawMessage]]) -> list[_Record]:
    return [(t, i, raw.key, raw.value, list(raw.headers)) for t, i, raw in records]


def _produce_and_wait(
    producer: Any, reports: _Reports, records: Sequence[_Record], timeout: float
) -> _Batch:
    """Produce ``(topic, id, key, value, headers)`` records in order, then wait for the broker.

    Stops producing at the first record librdkafka refuses outright, so no later
    record (possibly of the same key) overtakes it. Records still queued when
    the wait ends are purged (they fail with ``_PURGE_*``), so every record not
    reported as failed was acknowledged.
    """
    kafka = _kafka()
    reports.reset()
    produce = producer.produce
    deadline = time.monotonic() + timeout
    produced = 0
    for topic, message_id, key, value, headers in records:
        while True:
            try:
                produce(topic, value=value, key=key, headers=headers)
                produced += 1
                break
            except BufferError:  # local queue full: serve reports, then try again
                if time.monotonic() >= deadline:
                    reason = "local producer queue full until the timeout"
                    reports.failed(message_id, reason, transport=True)
                    break
                producer.poll(0.05)
            except (kafka.KafkaException, TypeError, ValueError) as exc:
                reports.failed(message_id, f"refused by the client: {exc}", transport=False)
                break
        if message_id in reports.errors:
            break
    # flush() sends at once (no linger) and serves delivery reports until the
    # queue is empty. The producer is used by one batch at a time, so that is
    # exactly this batch. message.timeout.ms <= timeout, so every record is
    # settled before this grace ends; whatever is not is purged.
    remaining = max(deadline - time.monotonic(), 0.0) + 5.0
    if producer.flush(remaining):
        with contextlib.suppress(Exception):
            producer.purge()
        producer.flush(1.0)
    errors = reports.errors
    ids = [r[1] for r in records[:produced]]
    if _UNKNOWN_ID in errors or len(producer):
        delivered: frozenset[str] = frozenset()  # cannot tell which: claim none
        for message_id in ids:
            errors.setdefault(message_id, errors.get(_UNKNOWN_ID, "not acknowledged"))
    else:
        delivered = frozenset(i for i in ids if i not in errors) if errors else frozenset(ids)
    return _Batch(delivered, errors, reports.transport_only, reports.fatal)


class KafkaPublisher:
    """`Publisher` for Kafka: idempotent producer, waits for every delivery report.

    Args:
        config: ``"host:9092"`` or a librdkafka producer config dict.
            ``enable.idempotence`` and ``acks=all`` are enforced;
            ``message.timeout.ms`` defaults to *timeout*.
        router: picks the topic per message (default `TopicRouter()`).
        codec: payload codec.
        timeout: seconds ``publish`` waits for acknowledgements before
            raising `PublishError` (with the ids that did get through).
        source: the CloudEvents ``source`` attribute.

    The record key is the message key, so a key always maps to the same
    partition and keeps its order (librdkafka's default partitioner hashes it
    with CRC32; set ``partitioner: murmur2_random`` to match Java producers).
    """

    system = "kafka"

    __slots__ = (
        "_codec",
        "_fatal",
        "_lock",
        "_producer",
        "_reports",
        "_router",
        "_settings",
        "closed",
        "source",
        "timeout",
    )

    def __init__(
        self,
        config: Mapping[str, Any] | str,
        *,
        router: Router | None = None,
        codec: Codec = _JSON,
        timeout: float = 30.0,
        source: str = "resilience",
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError("timeout", "must be > 0 seconds")
        self._settings = _producer_config(_config(config, "config"), timeout)
        self._settings.setdefault("error_cb", self._on_error)
        self._fatal = False
        self._producer, self._reports = _new_producer(self._settings)
        self._router = router or TopicRouter()
        self._codec = codec
        self._lock = threading.Lock()
        self.timeout = float(timeout)
        self.source = source
        self.closed = False

    def _on_error(self, error: Any) -> None:
        if error.fatal():  # e.g. the broker fenced our producer id: this instance is done
            self._fatal = True

    def _route(self, message: Message) -> str:
        topic = self._router(message)
        if not _TOPIC_NAME.match(topic) or topic in {".", ".."}:
            raise ConfigurationError(
                "router", f"{topic!r} is not a legal Kafka topic name ([a-zA-Z0-9._-], 1-249 chars)"
            )
        return topic

    @property
    def codec(self) -> Codec:
        """The payload codec `publish` encodes with."""
        return self._codec

    def publish(self, messages: Sequence[Message], /) -> None:
        if self.closed:
            raise PublishError("publisher is closed")
        encoded = encode_batch(messages, self._route, self._codec, self.source)
        if not encoded:
            return
        self._send(_raw_records([(t, m.id, raw) for t, m, raw in encoded]))

    def publish_encoded(
        self, records: Sequence[EncodedMessage], /, *, codec: Codec | None = None
    ) -> None:
        """Publish messages whose payload is already encoded (outbox rows), as `publish` does.

        ``value`` is sent as is, with the CloudEvents headers `publish` would
        write (``content-type`` from *codec*, default this publisher's codec),
        so a consumer cannot tell the two paths apart; the topic comes from the
        router (computed once per type for a `TopicRouter` template). Same
        guarantees and errors as `publish`. A relay uses it when available:
        it skips a payload decode and re-encode per event.
        """
        if self.closed:
            raise PublishError("publisher is closed")
        prepared = encode_encoded_batch(
            records,
            self._route,
            codec if codec is not None else self._codec,
            self.source,
            by_type=routes_by_type(self._router),
        )
        if prepared:
            self._send(prepared)

    def _send(self, records: list[_Record]) -> None:
        with self._lock:  # one batch at a time: reports are awaited per batch
            if self._fatal:
                self._replace_producer()
            batch = _produce_and_wait(self._producer, self._reports, records, self.timeout)
            # Ids, not records: a batch may carry one message twice (a redelivery).
            failed = not batch.delivered.issuperset(r[1] for r in records)
            if failed or batch.fatal or self._fatal:
                # After a failed batch the idempotent producer's state (producer
                # id, epoch, sequence numbers) may be unusable: some errors are
                # fatal, and brokers differ in how they take an epoch bump. A
                # fresh producer starts clean; anything the old one still holds
                # is purged, so it cannot land later unreported.
                self._replace_producer()
        if failed:
            delivered = batch.delivered
            missing = len({r[1] for r in records} - delivered)
            detail = "; ".join(f"{i}: {e}" for i, e in list(batch.errors.items())[:3])
            # A broker that is down, slow or restarting fails records through no
            # fault of theirs: say so, and a relay does not charge their attempts.
            error = BrokerUnavailableError if batch.transport_only else PublishError
            raise error(
                f"Kafka acknowledged {len(delivered)} of {len(delivered) + missing} messages "
                f"({missing} not acknowledged){': ' + detail if detail else ''}",
                delivered=delivered,
            )

    def _replace_producer(self) -> None:
        old, self._fatal = self._producer, False
        self._producer, self._reports = _new_producer(self._settings)
        try:
            old.purge()
            old.flush(0)
        except Exception:  # best effort: the old instance may be in a fatal state
            _log.debug("purging a failed Kafka producer failed", exc_info=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._producer.flush(self.timeout)


class AsyncKafkaPublisher(ThreadedAsyncPublisher):
    """`AsyncPublisher` for Kafka: a `KafkaPublisher` on a dedicated thread.

    confluent-kafka is a blocking client; running it on one worker thread
    keeps the event loop free while delivery reports are awaited.
    """

    __slots__ = ()

    def __init__(
        self,
        config: Mapping[str, Any] | str,
        *,
        router: Router | None = None,
        codec: Codec = _JSON,
        timeout: float = 30.0,
        source: str = "resilience",
    ) -> None:
        super().__init__(
            KafkaPublisher(config, router=router, codec=codec, timeout=timeout, source=source)
        )


@dataclass(frozen=True, slots=True)
class _Token:
    topic: str
    partition: int
    offset: int
    generation: int


@dataclass(slots=True)
class _Partition:
    """Offsets handed out and not yet committed, for one assigned partition."""

    generation: int
    received: deque[int] = field(default_factory=deque)
    acked: set[int] = field(default_factory=set)
    commit_to: int | None = None  # next offset to commit (last contiguous ack + 1)


class KafkaSubscription:
    """One member of a Kafka consumer group, committing only what was acked.

    * ``enable.auto.commit`` and ``enable.auto.offset.store`` are forced off;
      ``ack`` commits synchronously, per partition, the offset after the last
      record acked *in order* (a record acked before an earlier one waits).
    * On a rebalance, acked offsets of revoked partitions are committed first,
      then every unacked record of those partitions is dropped: the next owner
      receives them again from the committed offset. A late ``ack`` for a
      revoked partition is ignored (it is no longer ours to commit).
    * ``dead_letter`` writes the record, bytes untouched, to ``<topic>.dlq``
      with ``dlq-reason``, ``dlq-original-topic``, ``dlq-original-partition``
      and ``dlq-original-offset`` headers, waits for the broker's ack, then acks.
    * A new group starts at the earliest offset unless the config says otherwise.

    Kafka does not count deliveries: ``Delivery.delivery_count`` is always 1.

    Args:
        config: librdkafka consumer config (or bootstrap servers).
        topics: topic(s) to consume.
        group: the consumer group id.
        dlq_config: producer config for dead letters; defaults to the
            connection settings of *config*.
        timeout: seconds to wait for a commit or a dead letter's ack.
    """

    system = "kafka"

    __slots__ = (
        "_closed",
        "_consumer",
        "_dlq",
        "_dlq_config",
        "_generation",
        "_partitions",
        "commit_failures",
        "group",
        "timeout",
        "topics",
    )

    def __init__(
        self,
        config: Mapping[str, Any] | str,
        topics: str | Iterable[str],
        group: str,
        *,
        dlq_config: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> None:
        settings = _config(config, "config")
        names = (topics,) if isinstance(topics, str) else tuple(topics)
        if not names or not all(isinstance(t, str) and _TOPIC_NAME.match(t) for t in names):
            raise ConfigurationError("topics", "must be one or more legal Kafka topic names")
        if not isinstance(group, str) or not group:
            raise ConfigurationError("group", "must be a non-empty string")
        if settings.get("group.id", group) != group:
            raise ConfigurationError("config", "group.id conflicts with the group argument")
        if not timeout > 0:
            raise ConfigurationError("timeout", "must be > 0 seconds")
        settings.setdefault("auto.offset.reset", "earliest")
        settings.update(
            {"group.id": group, "enable.auto.commit": False, "enable.auto.offset.store": False}
        )
        self._dlq_config = _producer_config(
            dict(dlq_config)
            if dlq_config is not None
            else {k: v for k, v in settings.items() if k.startswith(_SHARED_PREFIXES)},
            timeout,
        )
        self.topics = names
        self.group = group
        self.timeout = float(timeout)
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._generation = 0
        self._dlq: tuple[Any, _Reports] | None = None
        self._closed = False
        self.commit_failures = 0
        """Commits that failed and were left for the next ack (observability)."""
        self._consumer = _kafka().Consumer(settings)
        self._consumer.subscribe(
            list(names), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    # -- rebalance callbacks (run inside consume(), on the caller's thread)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        del consumer
        for tp in partitions:
            self._generation += 1
            self._partitions[tp.topic, tp.partition] = _Partition(self._generation)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        del consumer
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._commit(revoked)  # a failure here only means the next owner redelivers more
        for key in revoked:
            self._partitions.pop(key, None)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        del consumer
        for tp in partitions:  # no longer ours: committing now would be refused
            self._partitions.pop((tp.topic, tp.partition), None)

    # -- the Subscription protocol

    def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        if not isinstance(max_messages, int) or max_messages < 1:
            raise ConfigurationError("max_messages", "must be an integer >= 1")
        if timeout < 0:
            raise ConfigurationError("timeout", "must be >= 0")
        self._check_open()
        kafka = _kafka()
        try:
            records = self._consumer.consume(num_messages=max_messages, timeout=timeout)
        except kafka.KafkaException as exc:
            raise MessagingError(f"Kafka consume failed: {exc}") from exc
        except RuntimeError as exc:  # confluent-kafka: "Consumer closed"
            raise SubscriptionClosedError(f"Kafka consumer unusable: {exc}") from exc
        out: list[Delivery] = []
        for record in records:
            error = record.error()
            if error is not None:
                if error.fatal():
                    raise SubscriptionClosedError(f"Kafka consumer failed fatally: {error}")
                continue  # partition EOF or transient (broker down): librdkafka recovers
            key = (record.topic(), record.partition())
            state = self._partitions.get(key)
            if state is None:  # assigned without a callback (should not happen): adopt it
                self._generation += 1
                state = self._partitions[key] = _Partition(self._generation)
            state.received.append(record.offset())
            headers = [(k, v if v is not None else b"") for k, v in record.headers() or ()]
            raw = RawMessage(key=record.key(), value=record.value() or b"", headers=headers)
            token = _Token(record.topic(), record.partition(), record.offset(), state.generation)
            out.append(Delivery(raw, record.topic(), token, 1))
        return out

    def ack(self, deliveries: Sequence[Delivery], /) -> None:
        self._check_open()
        touched: set[tuple[str, int]] = set()
        for delivery in deliveries:
            token = delivery.token
            if not isinstance(token, _Token):
                raise MessagingError(f"{delivery!r} was not received from Kafka")
            key = (token.topic, token.partition)
            state = self._partitions.get(key)
            if state is None or state.generation != token.generation:
                continue  # revoked since: the new owner redelivers it
            state.acked.add(token.offset)
            while state.received and state.received[0] in state.acked:
                offset = state.received.popleft()
                state.acked.discard(offset)
                state.commit_to = offset + 1
            touched.add(key)
        self._commit(touched)

    def dead_letter(self, delivery: Delivery, reason: str, /) -> None:
        self._check_open()
        token = delivery.token
        if not isinstance(token, _Token):
            raise MessagingError(f"{delivery!r} was not received from Kafka")
        if self._dlq is None:
            self._dlq = _new_producer(self._dlq_config)
        producer, reports = self._dlq
        topic = dead_letter_destination(token.topic)
        record = dead_letter_record(
            delivery.raw, reason, topic=token.topic, partition=token.partition, offset=token.offset
        )
        batch = _produce_and_wait(
            producer,
            reports,
            _raw_records([(topic, f"{token.partition}:{token.offset}", record)]),
            self.timeout,
        )
        if not batch.delivered:
            self._dlq = None  # start clean next time (it may be fenced)
            with contextlib.suppress(Exception):
                producer.purge()
            detail = "; ".join(batch.errors.values()) or "no acknowledgement before the timeout"
            raise MessagingError(
                f"could not dead-letter {token.topic}[{token.partition}]@{token.offset} to {topic}: {detail}"
            )
        self.ack([delivery])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._commit(set(self._partitions))
            try:
                self._consumer.close()  # leaves the group now, so the rebalance is immediate
            except (_kafka().KafkaException, RuntimeError) as exc:
                raise MessagingError(f"Kafka consumer did not close cleanly: {exc}") from exc
        finally:
            if self._dlq is not None:
                self._dlq[0].flush(self.timeout)

    # -- internals

    def _check_open(self) -> None:
        if self._closed:
            raise SubscriptionClosedError("the Kafka subscription is closed")

    def _commit(self, keys: Iterable[tuple[str, int]]) -> None:
        """Commit synchronously; on failure keep the offsets for the next attempt.

        A failed commit loses nothing: until it succeeds, a restart or a
        rebalance redelivers from the previous commit. So it is retried on
        the next ``ack`` / ``close`` instead of stopping the consumer.
        """
        kafka = _kafka()
        pending = []
        for key in keys:
            state = self._partitions.get(key)
            if state is not None and state.commit_to is not None:
                pending.append((key, state, state.commit_to))
        if not pending:
            return
        offsets = [kafka.TopicPartition(k[0], k[1], o) for k, _, o in pending]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if error is not None and hasattr(error, "fatal") and error.fatal():
                raise SubscriptionClosedError(f"Kafka commit failed fatally: {exc}") from exc
            self.commit_failures += 1
            return
        for _, state, offset in pending:
            if state.commit_to == offset:
                state.commit_to = None

    def __enter__(self) -> KafkaSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncKafkaSubscription(ThreadedAsyncSubscription):
    """`AsyncSubscription` for Kafka: a `KafkaSubscription` on a dedicated thread."""

    __slots__ = ()

    def __init__(
        self,
        config: Mapping[str, Any] | str,
        topics: str | Iterable[str],
        group: str,
        *,
        dlq_config: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(
            KafkaSubscription(config, topics, group, dlq_config=dlq_config, timeout=timeout)
        )
