"""resilience: make distributed services survive their own failures.

The top-level namespace holds the errors and the names most code needs; each
capability lives in its own subpackage (`resilience.policies`,
`resilience.idempotency`, `resilience.messaging`, `resilience.outbox`,
`resilience.saga`, `resilience.tracing`, `resilience.testing`).

Importing this package imports nothing outside the standard library and
tenacity: Redis, Kafka, SQLAlchemy and OpenTelemetry load only when used.
"""

from ._clock import SYSTEM_CLOCK, Clock, MonotonicClock
from ._errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConcurrentSagaUpdateError,
    ConfigurationError,
    DeadlineExceededError,
    IdempotencyError,
    IdempotencyInProgressError,
    IdempotencyKeyMismatchError,
    IdempotencyPayloadTooLargeError,
    IdempotencyRecordError,
    IllegalTransitionError,
    MessageDecodeError,
    MessagingError,
    MissingExtraError,
    OutboxError,
    PolicyError,
    PublishError,
    RateLimitedError,
    ResilienceError,
    RetryBudgetExhaustedError,
    SagaError,
    TimeoutExceededError,
)
from ._telemetry import Event, LoggingTelemetry, Telemetry, TelemetryFanout
from ._version import __version__

__all__ = [
    "SYSTEM_CLOCK",
    "BulkheadFullError",
    "CircuitOpenError",
    "Clock",
    "ConcurrentSagaUpdateError",
    "ConfigurationError",
    "DeadlineExceededError",
    "Event",
    "IdempotencyError",
    "IdempotencyInProgressError",
    "IdempotencyKeyMismatchError",
    "IdempotencyPayloadTooLargeError",
    "IdempotencyRecordError",
    "IllegalTransitionError",
    "LoggingTelemetry",
    "MessageDecodeError",
    "MessagingError",
    "MissingExtraError",
    "MonotonicClock",
    "OutboxError",
    "PolicyError",
    "PublishError",
    "RateLimitedError",
    "ResilienceError",
    "RetryBudgetExhaustedError",
    "SagaError",
    "Telemetry",
    "TelemetryFanout",
    "TimeoutExceededError",
    "__version__",
]
