"""Message envelope, codecs and broker transports (Kafka, Redis Streams, in-memory).

Optional clients (confluent-kafka, redis) load only when a transport using them
is constructed, so importing this package needs neither.
"""

from ._common import (
    DLQ_DEAD_LETTERED_AT,
    DLQ_DELIVERY_COUNT,
    DLQ_ORIGINAL_ID,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    DLQ_REASON,
    DLQ_SUFFIX,
    EncodedMessage,
    dead_letter_destination,
)
from ._consumer import (
    AsyncConsumer,
    Consumer,
    ConsumerStats,
    RetryBackoff,
    async_stop_on_signals,
    stop_on_signals,
)
from ._kafka import (
    AsyncKafkaPublisher,
    AsyncKafkaSubscription,
    KafkaPublisher,
    KafkaSubscription,
)
from ._memory import (
    AsyncInMemoryPublisher,
    AsyncInMemorySubscription,
    InMemoryBroker,
    InMemoryPublisher,
    InMemorySubscription,
)
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
from ._redis import (
    AsyncRedisStreamsPublisher,
    AsyncRedisStreamsSubscription,
    RedisStreamsPublisher,
    RedisStreamsSubscription,
)
from ._routing import TopicRouter
from ._threaded import ThreadedAsyncPublisher, ThreadedAsyncSubscription

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DLQ_DEAD_LETTERED_AT",
    "DLQ_DELIVERY_COUNT",
    "DLQ_ORIGINAL_ID",
    "DLQ_ORIGINAL_OFFSET",
    "DLQ_ORIGINAL_PARTITION",
    "DLQ_ORIGINAL_TOPIC",
    "DLQ_REASON",
    "DLQ_SUFFIX",
    "AsyncConsumer",
    "AsyncInMemoryPublisher",
    "AsyncInMemorySubscription",
    "AsyncKafkaPublisher",
    "AsyncKafkaSubscription",
    "AsyncPublisher",
    "AsyncRedisStreamsPublisher",
    "AsyncRedisStreamsSubscription",
    "AsyncSubscription",
    "Codec",
    "Consumer",
    "ConsumerStats",
    "Delivery",
    "EncodedMessage",
    "InMemoryBroker",
    "InMemoryPublisher",
    "InMemorySubscription",
    "JsonCodec",
    "KafkaPublisher",
    "KafkaSubscription",
    "Message",
    "Publisher",
    "RawMessage",
    "RedisStreamsPublisher",
    "RedisStreamsSubscription",
    "RetryBackoff",
    "Router",
    "Subscription",
    "ThreadedAsyncPublisher",
    "ThreadedAsyncSubscription",
    "TopicRouter",
    "async_stop_on_signals",
    "dead_letter_destination",
    "decode_message",
    "encode_message",
    "new_message_id",
    "stop_on_signals",
]
