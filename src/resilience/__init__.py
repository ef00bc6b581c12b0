"""resilience: make distributed services survive their own failures.

The top-level namespace holds the errors and the names most code needs; each
capability lives in its own subpackage (`resilience.policies`,
`resilience.idempotency`, `resilience.messaging`, `resilience.outbox`,
`resilience.saga`, `resilience.tracing`, `resilience.testing`). The policies
are re-exported here because nearly every service uses them.

Importing this package imports nothing outside the standard library and
tenacity: Redis, Kafka, SQLAlchemy and OpenTelemetry load only when used.
"""

from ._clock import SYSTEM_CLOCK, Clock, MonotonicClock
from ._errors import (
    BrokerUnavailableError,
    BulkheadFullError,
    CircuitOpenError,
    ConcurrentSagaUpdateError,
    ConfigurationError,
    DeadlineExceededError,
    IdempotencyError,
    IdempotencyInProgressError,
    IdempotencyKeyMismatchError,
    IdempotencyLeaseLostError,
    IdempotencyPayloadTooLargeError,
    IdempotencyRecordError,
    IdempotentReplayedError,
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
    SubscriptionClosedError,
    TimeoutExceededError,
)
from ._telemetry import Event, LoggingTelemetry, Telemetry, TelemetryFanout
from ._version import __version__
from .idempotency import idempotent
from .policies import (
    DEFAULT_FALLBACK_ON,
    Bulkhead,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    Fallback,
    Pipeline,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
    deadline,
)

__all__ = [
    "DEFAULT_FALLBACK_ON",
    "SYSTEM_CLOCK",
    "BrokerUnavailableError",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "ConcurrentSagaUpdateError",
    "ConfigurationError",
    "DeadlineExceededError",
    "Event",
    "Fallback",
    "IdempotencyError",
    "IdempotencyInProgressError",
    "IdempotencyKeyMismatchError",
    "IdempotencyLeaseLostError",
    "IdempotencyPayloadTooLargeError",
    "IdempotencyRecordError",
    "IdempotentReplayedError",
    "IllegalTransitionError",
    "LoggingTelemetry",
    "MessageDecodeError",
    "MessagingError",
    "MissingExtraError",
    "MonotonicClock",
    "OutboxError",
    "Pipeline",
    "PolicyError",
    "PublishError",
    "RateLimitedError",
    "RateLimiter",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhaustedError",
    "SagaError",
    "SubscriptionClosedError",
    "Telemetry",
    "TelemetryFanout",
    "Timeout",
    "TimeoutExceededError",
    "__version__",
    "deadline",
    "idempotent",
]
