"""Helpers for testing code that uses resilience.

- `FakeClock`, `RecordingTelemetry`: pure in-memory, for unit tests.
- `KafkaBroker`, `postgres_database`, `TcpProxy`: real servers and real
  network faults, for integration tests.
- `ChaosHarness`, `run_with_chaos`: run saga participants against the
  in-memory broker with duplicates, delays, reordering, drops and crashes, then
  check your invariants.
"""

from resilience.saga import ChaosHarness, ChaosOptions, ChaosReport, InjectedCrash, run_with_chaos

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
    "ChaosHarness",
    "ChaosOptions",
    "ChaosReport",
    "FakeClock",
    "InjectedCrash",
    "KafkaBroker",
    "RecordingTelemetry",
    "ServiceUnavailableError",
    "TcpProxy",
    "free_port",
    "postgres_database",
    "run_with_chaos",
    "wait_for_port",
]
