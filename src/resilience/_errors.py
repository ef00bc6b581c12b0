"""The exception hierarchy.

Every error the library raises on purpose derives from `ResilienceError`, so
``except ResilienceError`` catches "the toolkit said no" without swallowing the
protected function's own exceptions, which always propagate unchanged.

```
ResilienceError
├── ConfigurationError (ValueError)           bad option, named field and reason
├── MissingExtraError (ImportError)           optional dependency not installed
├── PolicyError                               a resilience policy rejected the call
│   ├── CircuitOpenError                      .name .state .retry_after
│   ├── BulkheadFullError                     .name .max_concurrent
│   ├── RateLimitedError                      .name .retry_after
│   ├── RetryBudgetExhaustedError             .name
│   └── TimeoutExceededError (TimeoutError)   .timeout
│       └── DeadlineExceededError             the propagated deadline has passed
├── IdempotencyError                          .key
│   ├── IdempotencyInProgressError            .retry_after
│   ├── IdempotencyKeyMismatchError           same key, different payload
│   ├── IdempotencyRecordError                corrupted / unreadable stored record
│   ├── IdempotencyPayloadTooLargeError       result too large for the store
│   ├── IdempotencyLeaseLostError             this caller no longer owns the key (fencing)
│   └── IdempotentReplayedError               a stored final error, replayed .type_name .args
├── MessagingError
│   ├── MessageDecodeError                    garbage on the wire (dead-letter it)
│   ├── PublishError                          the broker did not acknowledge .delivered
│   │   └── BrokerUnavailableError            the transport's fault: back off, charge nothing
│   └── SubscriptionClosedError               closed, evicted or fatally failed: subscribe again
├── OutboxError
└── SagaError                                 .saga_id
    ├── IllegalTransitionError                .state .event
    └── ConcurrentSagaUpdateError             optimistic-lock conflict
```
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "BulkheadFullError",
    "CircuitOpenError",
    "ConcurrentSagaUpdateError",
    "ConfigurationError",
    "DeadlineExceededError",
    "IdempotencyError",
    "IdempotencyInProgressError",
    "IdempotencyKeyMismatchError",
    "IdempotencyLeaseLostError",
    "IdempotencyPayloadTooLargeError",
    "IdempotencyRecordError",
    "IdempotentReplayedError",
    "IllegalTransitionError",
    "MessageDecodeError",
    "MessagingError",
    "MissingExtraError",
    "OutboxError",
    "PolicyError",
    "PublishError",
    "RateLimitedError",
    "ResilienceError",
    "RetryBudgetExhaustedError",
    "SagaError",
    "SubscriptionClosedError",
    "TimeoutExceededError",
]


class ResilienceError(Exception):
    """Base class of every error raised by the toolkit itself."""


class ConfigurationError(ResilienceError, ValueError):
    """An option was invalid; raised at construction, never at call time."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class MissingExtraError(ResilienceError, ImportError):
    """An optional integration was used without its extra installed."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{module!r} is not installed; install it with: pip install 'resilience-toolkit[{extra}]'"
        )


class PolicyError(ResilienceError):
    """A policy refused or abandoned the call before the function could finish."""


class CircuitOpenError(PolicyError):
    """The circuit breaker is not letting calls through."""

    def __init__(self, name: str, state: str, retry_after: float) -> None:
        self.name = name
        self.state = state
        self.retry_after = retry_after
        hint = (
            "until it is reset"
            if retry_after == float("inf")
            else f"retry after {retry_after:.3f}s"
        )
        super().__init__(f"circuit {name!r} is {state}; {hint}")


class BulkheadFullError(PolicyError):
    """Every slot of the bulkhead was busy for longer than the allowed wait."""

    def __init__(self, name: str, max_concurrent: int) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        super().__init__(f"bulkhead {name!r} is full ({max_concurrent} concurrent calls)")


class RateLimitedError(PolicyError):
    """The rate limiter had no token for this call."""

    def __init__(self, name: str, retry_after: float) -> None:
        self.name = name
        self.retry_after = retry_after
        super().__init__(f"rate limiter {name!r} exhausted; retry after {retry_after:.3f}s")


class RetryBudgetExhaustedError(PolicyError):
    """A retry was needed but the shared retry budget had none left.

    The original failure is chained as ``__cause__``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"retry budget {name!r} exhausted; not retrying")


class TimeoutExceededError(PolicyError, TimeoutError):
    """The call did not finish within its timeout."""

    def __init__(self, timeout: float, message: str | None = None) -> None:
        self.timeout = timeout
        super().__init__(message or f"call did not finish within {timeout:.3f}s")


class DeadlineExceededError(TimeoutExceededError):
    """The propagated deadline passed before (or while) the call ran."""


class IdempotencyError(ResilienceError):
    """An idempotency key could not be honoured as asked."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


class IdempotencyInProgressError(IdempotencyError):
    """Another call with the same key is still running."""

    def __init__(self, key: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(
            key,
            f"a call with idempotency key {key!r} is in progress; retry after {retry_after:.3f}s",
        )


class IdempotencyKeyMismatchError(IdempotencyError):
    """The key was reused with a different payload."""

    def __init__(self, key: str) -> None:
        super().__init__(key, f"idempotency key {key!r} was already used with a different payload")


class IdempotencyRecordError(IdempotencyError):
    """The stored record for a key is corrupted or unreadable; nothing was run."""


class IdempotencyPayloadTooLargeError(IdempotencyError):
    """The result is too large to be stored for replay."""


class IdempotencyLeaseLostError(IdempotencyError):
    """This caller's claim on the key is gone, so it may not write to the record.

    Raised when completing, checkpointing, renewing or releasing with an owner
    token that is no longer current: the lease expired and another caller took
    the key over, or the record was completed or purged. The stale owner must
    stop: its writes are fenced off so they cannot clobber the new owner's.
    """

    def __init__(self, key: str) -> None:
        super().__init__(key, f"lost the lease on idempotency key {key!r}; another owner holds it")


class IdempotentReplayedError(IdempotencyError):
    """The first call failed with a final error; this is its replay.

    Raised instead of the original exception when its class cannot be rebuilt
    safely (only classes named in ``final_errors`` are rebuilt), so a declined
    charge stays declined on every retry without running the charge again.
    ``type_name`` is ``module:qualname`` of the original, ``error_args`` its args.
    """

    def __init__(
        self, key: str, type_name: str, message: str, error_args: tuple[object, ...] = ()
    ) -> None:
        self.type_name = type_name
        self.error_message = message
        self.error_args = error_args
        super().__init__(key, f"replayed final error {type_name}: {message}")


class MessagingError(ResilienceError):
    """A message could not be encoded, decoded or delivered."""


class MessageDecodeError(MessagingError):
    """Bytes from the broker are not a valid message; route them to dead letters."""


class PublishError(MessagingError):
    """The broker did not acknowledge every message of a batch.

    ``delivered`` holds the ids the broker did acknowledge, so the caller can
    record those and retry only the rest.
    """

    def __init__(self, message: str, delivered: frozenset[str] = frozenset()) -> None:
        self.delivered = delivered
        super().__init__(message)


class BrokerUnavailableError(PublishError):
    """A `PublishError` that is the transport's fault, not the messages': the broker
    is unreachable, too slow or restarting, and the same records would go through
    once it is back.

    A relay backs off (and feeds its circuit breaker) on it without charging the
    messages' attempts, so an outage never dead-letters healthy events.
    ``delivered`` is filled as for any `PublishError`.
    """


class SubscriptionClosedError(MessagingError):
    """The subscription can no longer be used: closed, crashed, or its client failed fatally.

    Unlike other broker errors this is not retried by the consumer loop: only
    a new subscription can continue (its unacked records are redelivered).
    """


class OutboxError(ResilienceError):
    """The outbox or its relay failed in a way the caller must know about."""


class SagaError(ResilienceError):
    """A saga could not apply an event."""

    def __init__(self, saga_id: str, message: str) -> None:
        self.saga_id = saga_id
        super().__init__(message)


class IllegalTransitionError(SagaError):
    """The event would move the saga along a transition that was not declared."""

    def __init__(self, saga_id: str, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(
            saga_id, f"saga {saga_id!r}: event {event!r} is not allowed in state {state!r}"
        )


class ConcurrentSagaUpdateError(SagaError):
    """Another handler moved the saga first (optimistic lock)."""
