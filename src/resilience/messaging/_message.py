"""The message envelope and its wire form.

On the wire a message follows the CloudEvents *binary content mode* (the Kafka
protocol binding): the payload is the record value, the envelope travels in
headers (``ce_id``, ``ce_type``, ``ce_time``, ...), and W3C ``traceparent``
rides alongside. Any CloudEvents-aware consumer can read what we publish.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from resilience._errors import ConfigurationError, MessageDecodeError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Codec",
    "JsonCodec",
    "Message",
    "RawMessage",
    "decode_message",
    "encode_message",
    "new_message_id",
]

DEFAULT_MAX_MESSAGE_BYTES: Final = 1024 * 1024
"""Largest record value accepted when decoding (1 MiB, Kafka's default ``message.max.bytes``)."""

_MAX_ID_LENGTH: Final = 200
_MAX_TYPE_LENGTH: Final = 200

H_ID: Final = "ce_id"
H_TYPE: Final = "ce_type"
H_TIME: Final = "ce_time"
H_SOURCE: Final = "ce_source"
H_SPEC: Final = "ce_specversion"
H_CONTENT_TYPE: Final = "content-type"
_ENVELOPE_HEADERS: Final = frozenset({H_ID, H_TYPE, H_TIME, H_SOURCE, H_SPEC, H_CONTENT_TYPE})

_uuid7_lock = threading.Lock()
_uuid7_last = 0


def new_message_id() -> str:
    """A UUIDv7 string: unique, and sortable by creation time (RFC 9562).

    Monotonic within a process even when several ids share a millisecond.
    """
    global _uuid7_last  # noqa: PLW0603 - one process-wide counter is the point
    with _uuid7_lock:
        ms = time.time_ns() // 1_000_000
        # 48 bits of ms, then 12 bits of sequence in rand_a: bump when ms repeats.
        candidate = ms << 12
        if candidate <= _uuid7_last:
            candidate = _uuid7_last + 1
        _uuid7_last = candidate
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    ts_ms, seq = candidate >> 12, candidate & 0xFFF
    value = (ts_ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Message:
    """An event or command, as written to the outbox and delivered to consumers.

    Attributes:
        type: what happened, dotted by convention (``"order.created"``); routes the message.
        payload: the body; JSON-serialisable with the default codec.
        key: the aggregate id (``"order-42"``). Messages with the same key keep their order.
        id: unique per message; consumers deduplicate on it. UUIDv7 by default.
        headers: string metadata: trace context (``traceparent``), deadline, schema version.
        occurred_at: when the business fact happened (timezone-aware, UTC by default).
    """

    type: str
    payload: Any = None
    key: str | None = None
    id: str = field(default_factory=new_message_id)
    headers: Mapping[str, str] = field(default_factory=dict)
    occurred_at: dt.datetime = field(default_factory=_utcnow)

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type or len(self.type) > _MAX_TYPE_LENGTH:
            raise ConfigurationError(
                "type", f"must be a non-empty string of at most {_MAX_TYPE_LENGTH} characters"
            )
        if not isinstance(self.id, str) or not self.id or len(self.id) > _MAX_ID_LENGTH:
            raise ConfigurationError(
                "id", f"must be a non-empty string of at most {_MAX_ID_LENGTH} characters"
            )
        if self.key is not None and not isinstance(self.key, str):
            raise ConfigurationError("key", "must be a string or None")
        if self.occurred_at.tzinfo is None:
            raise ConfigurationError("occurred_at", "must be timezone-aware")
        for name, value in self.headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ConfigurationError(
                    "headers", f"names and values must be strings, got {name!r}: {value!r}"
                )
            if name in _ENVELOPE_HEADERS:
                raise ConfigurationError("headers", f"{name!r} is reserved for the envelope")

    def with_headers(self, **headers: str) -> Message:
        """A copy with *headers* added (or replaced)."""
        return dataclasses.replace(self, headers={**self.headers, **headers})


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message as a broker sees it: key, value and headers, all bytes."""

    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


@runtime_checkable
class Codec(Protocol):
    """Turns payloads into bytes and back."""

    @property
    def content_type(self) -> str: ...

    def encode(self, payload: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


def _json_default(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JsonCodec:
    """UTF-8 JSON. Dataclasses, datetimes, Decimals, UUIDs and Enums are encoded
    (as objects, ISO strings, strings, strings and values); they decode as plain JSON."""

    __slots__ = ()

    @property
    def content_type(self) -> str:
        return "application/json"

    def encode(self, payload: Any) -> bytes:
        return json.dumps(
            payload, default=_json_default, separators=(",", ":"), ensure_ascii=False
        ).encode()

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


_JSON: Final = JsonCodec()


def encode_message(
    message: Message, codec: Codec = _JSON, *, source: str = "resilience"
) -> RawMessage:
    """The wire form of *message* (CloudEvents binary mode)."""
    try:
        value = codec.encode(message.payload)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            "payload", f"cannot be encoded as {codec.content_type}: {exc}"
        ) from exc
    headers: list[tuple[str, bytes]] = [
        (H_SPEC, b"1.0"),
        (H_ID, message.id.encode()),
        (H_TYPE, message.type.encode()),
        (H_SOURCE, source.encode()),
        (H_TIME, message.occurred_at.isoformat().encode()),
        (H_CONTENT_TYPE, codec.content_type.encode()),
    ]
    headers.extend((k, v.encode()) for k, v in message.headers.items())
    return RawMessage(
        key=message.key.encode() if message.key is not None else None,
        value=value,
        headers=headers,
    )


def decode_message(
    raw: RawMessage, codec: Codec = _JSON, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Message:
    """Parse a broker record; anything malformed raises `MessageDecodeError`.

    Consumers catch that error and dead-letter the record: a poison message must
    never crash the consumer or be retried forever.
    """
    if len(raw.value) > max_bytes:
        raise MessageDecodeError(
            f"value is {len(raw.value)} bytes, over the {max_bytes}-byte limit"
        )
    try:
        headers = {name: value.decode() for name, value in raw.headers}
        key = raw.key.decode() if raw.key is not None else None
    except (UnicodeDecodeError, AttributeError) as exc:
        raise MessageDecodeError(f"headers or key are not UTF-8: {exc}") from exc
    message_id = headers.pop(H_ID, None)
    message_type = headers.pop(H_TYPE, None)
    if not message_id or not message_type:
        raise MessageDecodeError(f"missing {H_ID} or {H_TYPE} header")
    time_text = headers.pop(H_TIME, None)
    for name in (H_SPEC, H_SOURCE, H_CONTENT_TYPE):
        headers.pop(name, None)
    try:
        occurred_at = dt.datetime.fromisoformat(time_text) if time_text else _utcnow()
        if occurred_at.tzinfo is None:
            occurred_at = occurred_at.replace(tzinfo=dt.UTC)
        payload = codec.decode(raw.value) if raw.value else None
        return Message(
            type=message_type,
            payload=payload,
            key=key,
            id=message_id,
            headers=headers,
            occurred_at=occurred_at,
        )
    except (ValueError, ConfigurationError) as exc:  # JSONDecodeError is a ValueError
        raise MessageDecodeError(f"message {message_id!r} is malformed: {exc}") from exc
