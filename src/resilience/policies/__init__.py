"""Circuit breaker, retry, timeout, bulkhead, rate limiter, fallback and pipelines."""

from ._base import Policy, PolicyDecorator
from ._breaker import CircuitBreaker, CircuitBreakerEvent, CircuitBreakerListener
from ._breaker_config import CircuitBreakerConfig, CircuitState
from ._breaker_core import CircuitBreakerMetrics
from ._breaker_redis import RedisSharedState, SharedBreakerStatus, SharedState
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._deadline import (
    GRPC_TIMEOUT_METADATA,
    HTTP_DEADLINE_HEADER,
    MESSAGE_DEADLINE_HEADER,
    Deadline,
    check_deadline,
    current_deadline,
    deadline,
    deadline_from_grpc_metadata,
    deadline_from_http_headers,
    deadline_from_message,
    format_grpc_timeout,
    grpc_deadline_metadata,
    http_deadline_headers,
    message_with_deadline,
    parse_grpc_timeout,
    remaining,
)
from ._fallback import DEFAULT_FALLBACK_ON, Fallback
from ._pipeline import Pipeline
from ._ratelimit import LocalTokenBucket, RateLimiter, RedisTokenBucket, TokenBucket
from ._retry import (
    Retry,
    RetryDetails,
    RetryHook,
    retry_testing_mode,
    wait_backoff,
    wait_retry_after,
)
from ._timeout import Timeout

__all__ = [
    "DEFAULT_FALLBACK_ON",
    "GRPC_TIMEOUT_METADATA",
    "HTTP_DEADLINE_HEADER",
    "MESSAGE_DEADLINE_HEADER",
    "Bulkhead",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerEvent",
    "CircuitBreakerListener",
    "CircuitBreakerMetrics",
    "CircuitState",
    "Deadline",
    "Fallback",
    "LocalTokenBucket",
    "Pipeline",
    "Policy",
    "PolicyDecorator",
    "RateLimiter",
    "RedisSharedState",
    "RedisTokenBucket",
    "Retry",
    "RetryBudget",
    "RetryDetails",
    "RetryHook",
    "SharedBreakerStatus",
    "SharedState",
    "Timeout",
    "TokenBucket",
    "check_deadline",
    "current_deadline",
    "deadline",
    "deadline_from_grpc_metadata",
    "deadline_from_http_headers",
    "deadline_from_message",
    "format_grpc_timeout",
    "grpc_deadline_metadata",
    "http_deadline_headers",
    "message_with_deadline",
    "parse_grpc_timeout",
    "remaining",
    "retry_testing_mode",
    "wait_backoff",
    "wait_retry_after",
]
