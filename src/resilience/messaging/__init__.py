"""Message envelope, codecs and broker transports (Kafka, Redis Streams, in-memory)."""

from ._message import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Codec,
    JsonCodec,
    Message,
    RawMessage,
    decode_message,
    encode_message,
    new_message_id,
)
from ._protocols import (
    AsyncPublisher,
    AsyncSubscription,
    Delivery,
    Publisher,
    Router,
    Subscription,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AsyncPublisher",
    "AsyncSubscription",
    "Codec",
    "Delivery",
    "JsonCodec",
    "Message",
    "Publisher",
    "RawMessage",
    "Router",
    "Subscription",
    "decode_message",
    "encode_message",
    "new_message_id",
]
