"""Pieces every transport shares: batch encoding, partition hashing, dead-letter records."""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple

from resilience._errors import ConfigurationError, PublishError

from ._message import (
    H_CONTENT_TYPE,
    H_ID,
    H_SOURCE,
    H_SPEC,
    H_TIME,
    H_TYPE,
    Codec,
    Message,
    RawMessage,
    encode_message,
)
from ._protocols import Router
from ._routing import TopicRouter

__all__ = [
    "DLQ_DEAD_LETTERED_AT",
    "DLQ_DELIVERY_COUNT",
    "DLQ_ORIGINAL_ID",
    "DLQ_ORIGINAL_OFFSET",
    "DLQ_ORIGINAL_PARTITION",
    "DLQ_ORIGINAL_TOPIC",
    "DLQ_REASON",
    "DLQ_SUFFIX",
    "EncodedMessage",
    "dead_letter_destination",
    "dead_letter_record",
    "encode_batch",
    "encode_encoded_batch",
    "header",
    "partition_for",
    "routes_by_type",
]

DLQ_SUFFIX: Final = ".dlq"
"""Appended to a destination to name its dead-letter destination (``orders`` -> ``orders.dlq``)."""
DLQ_REASON: Final = "dlq-reason"
"""Header on a dead letter: why it could not be processed (decode error, last handler error)."""
DLQ_ORIGINAL_TOPIC: Final = "dlq-original-topic"
"""Header on a dead letter: the topic / stream it was consumed from, to replay it there."""
DLQ_ORIGINAL_PARTITION: Final = "dlq-original-partition"
"""Header on a dead letter: its partition (Kafka, in-memory), to find it in the original log."""
DLQ_ORIGINAL_OFFSET: Final = "dlq-original-offset"
"""Header on a dead letter: its offset in that partition (Kafka, in-memory)."""
DLQ_ORIGINAL_ID: Final = "dlq-original-id"
"""Header on a dead letter: its stream entry id (Redis Streams), in place of an offset."""
DLQ_DELIVERY_COUNT: Final = "dlq-delivery-count"
"""Header on a dead letter: how often the broker had handed it out, when the broker counts."""
DLQ_DEAD_LETTERED_AT: Final = "dlq-dead-lettered-at"
"""Header on a dead letter: when it was moved aside (ISO 8601, UTC)."""
_DLQ_HEADERS: Final = frozenset(
    {
        DLQ_REASON,
        DLQ_ORIGINAL_TOPIC,
        DLQ_ORIGINAL_PARTITION,
        DLQ_ORIGINAL_OFFSET,
        DLQ_ORIGINAL_ID,
        DLQ_DELIVERY_COUNT,
        DLQ_DEAD_LETTERED_AT,
    }
)
_MAX_REASON_CHARS: Final = 2000


class EncodedMessage(NamedTuple):
    """A message whose payload is already encoded, published without a decode/re-encode.

    An outbox row stores the payload as the codec's bytes; decoding it only for
    the transport to encode it again costs more than the broker round trip.
    Publishers that offer ``publish_encoded(records, codec=...)`` (`KafkaPublisher`)
    send ``value`` as is, with the same CloudEvents headers `publish` would write.
    A tuple, not a dataclass: a relay builds hundreds per batch.

    Attributes:
        id: the message id (``ce_id``).
        type: the message type (``ce_type``; routes the message).
        key: the aggregate id (record key), or None.
        value: the payload, encoded by the codec passed to ``publish_encoded``.
        headers: string headers (trace context...), or None.
        occurred_at: time of the business fact (``ce_time``): a timezone-aware
            datetime, or the same instant already written as ISO 8601 text
            (a relay reads it so from the database, and skips a parse and a
            format per event).
    """

    id: str
    type: str
    key: str | None
    value: bytes
    headers: Mapping[str, str] | None
    occurred_at: dt.datetime | str

    def to_message(self, codec: Codec) -> Message:
        """The equivalent `Message` (decodes the payload): for routers and fallbacks."""
        occurred_at = self.occurred_at
        return Message(
            type=self.type,
            payload=codec.decode(self.value) if self.value else None,
            key=self.key,
            id=self.id,
            headers=dict(self.headers or {}),
            occurred_at=dt.datetime.fromisoformat(occurred_at)
            if isinstance(occurred_at, str)
            else occurred_at,
        )


def routes_by_type(router: Router) -> bool:
    """Whether *router* picks a destination from the message type alone (so the
    destination of an `EncodedMessage` can be computed, and cached, per type)."""
    return isinstance(router, TopicRouter) and router._template is not None


def encode_encoded_batch(
    records: Sequence[EncodedMessage],
    router: Router,
    codec: Codec,
    source: str,
    *,
    by_type: bool = False,
) -> list[tuple[str, str, bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Route pre-encoded records and build their wire headers:
    ``(destination, id, key, value, headers)`` per record, headers exactly as
    `encode_message` writes them. A record that cannot be routed fails the batch
    up front (nothing was sent), like `encode_batch`. With *by_type* (see
    `routes_by_type`) the router runs once per message type.

    This runs once per relayed event, so the constant headers are built once
    per batch and the ``ce_type`` header once per type."""
    spec = (H_SPEC, b"1.0")
    source_header = (H_SOURCE, source.encode())
    content_type = (H_CONTENT_TYPE, codec.content_type.encode())
    # type -> (destination if it depends on the type alone, else None; ce_type header)
    per_type: dict[str, tuple[str | None, tuple[str, bytes]]] = {}
    out: list[tuple[str, str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
    append = out.append
    for record in records:
        record_id, record_type, key, value, headers, occurred_at = record
        entry = per_type.get(record_type)
        if entry is None:
            entry = per_type[record_type] = (
                _route(router, record, codec) if by_type else None,
                (H_TYPE, record_type.encode()),
            )
        destination, type_header = entry
        if destination is None:
            destination = _route(router, record, codec)
        wire = [
            spec,
            (H_ID, record_id.encode()),
            type_header,
            source_header,
            (
                H_TIME,
                (occurred_at if isinstance(occurred_at, str) else occurred_at.isoformat()).encode(),
            ),
            content_type,
        ]
        if headers:
            wire.extend([(k, v.encode()) for k, v in headers.items()])
        append((destination, record_id, key.encode() if key is not None else None, value, wire))
    return out


def _route(router: Router, record: EncodedMessage, codec: Codec) -> str:
    try:
        return router(record.to_message(codec))
    except (ConfigurationError, ValueError) as exc:
        raise PublishError(
            f"message {record.id!r} ({record.type}) cannot be published: {exc}"
        ) from exc


def dead_letter_destination(destination: str) -> str:
    """Where records that fail on *destination* go: ``<destination>.dlq``."""
    return destination + DLQ_SUFFIX


def encode_batch(
    messages: Sequence[Message], router: Router, codec: Codec, source: str
) -> list[tuple[str, Message, RawMessage]]:
    """Route and encode a whole batch before anything is sent.

    A payload that cannot be encoded fails the batch up front (nothing was
    sent, so ``delivered`` is empty), like a broker rejecting a record.
    """
    out: list[tuple[str, Message, RawMessage]] = []
    for message in messages:
        try:
            destination = router(message)
            raw = encode_message(message, codec, source=source)
        except ConfigurationError as exc:
            raise PublishError(
                f"message {message.id!r} ({message.type}) cannot be published: {exc}"
            ) from exc
        out.append((destination, message, raw))
    return out


def partition_for(key: bytes | None, partitions: int, fallback: int) -> int:
    """CRC32 of the key modulo the partition count (librdkafka's default
    ``consistent_random`` partitioner); keyless records use *fallback*."""
    if key is None:
        return fallback % partitions
    return zlib.crc32(key) % partitions


def header(raw: RawMessage, name: str) -> str | None:
    """The last value of header *name*, decoded leniently; None when absent."""
    found: bytes | None = None
    for key, value in raw.headers:
        if key == name:
            found = value
    return found.decode("utf-8", "replace") if found is not None else None


def dead_letter_record(
    raw: RawMessage,
    reason: str,
    *,
    topic: str,
    partition: int | None = None,
    offset: int | str | None = None,
    delivery_count: int | None = None,
) -> RawMessage:
    """The record written to the dead-letter destination: the original bytes,
    untouched, plus headers saying where it came from and why it failed."""
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[: _MAX_REASON_CHARS - 3] + "..."
    headers = [(k, v) for k, v in raw.headers if k not in _DLQ_HEADERS]
    headers.append((DLQ_REASON, reason.encode("utf-8", "replace")))
    headers.append((DLQ_ORIGINAL_TOPIC, topic.encode()))
    if partition is not None:
        headers.append((DLQ_ORIGINAL_PARTITION, str(partition).encode()))
    if offset is not None:
        headers.append(
            (
                DLQ_ORIGINAL_ID if isinstance(offset, str) else DLQ_ORIGINAL_OFFSET,
                str(offset).encode(),
            )
        )
    if delivery_count is not None:
        headers.append((DLQ_DELIVERY_COUNT, str(delivery_count).encode()))
    headers.append((DLQ_DEAD_LETTERED_AT, dt.datetime.now(dt.UTC).isoformat().encode()))
    return RawMessage(key=raw.key, value=raw.value, headers=headers)
