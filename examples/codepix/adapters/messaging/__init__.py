"""Kafka driving adapter: consumer + inbox in, outbox + relay out (toolkit wiring)."""

from .worker import (
    GROUP,
    TOPICS,
    CodePixWorker,
    MessageHandler,
    Worker,
    WorkerOptions,
    kafka_endpoints,
)

__all__ = [
    "GROUP",
    "TOPICS",
    "CodePixWorker",
    "MessageHandler",
    "Worker",
    "WorkerOptions",
    "kafka_endpoints",
]
