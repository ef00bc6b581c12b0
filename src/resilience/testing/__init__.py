"""Helpers for testing code that uses resilience.

- `FakeClock`, `RecordingTelemetry`: pure in-memory, for unit tests.
- `KafkaBroker`, `postgres_database`, `TcpProxy`: real servers and real
  network faults, for integration tests.
"""

from ._clock import FakeClock
from ._services import (
    KafkaBroker,
    ServiceUnavailableError,
    TcpProxy,
    free_port,
    postgres_database,
    wait_for_port,
)
from ._telemetry import RecordingTelemetry

__all__ = [
    "FakeClock",
    "KafkaBroker",
    "RecordingTelemetry",
    "ServiceUnavailableError",
    "TcpProxy",
    "free_port",
    "postgres_database",
    "wait_for_port",
]
