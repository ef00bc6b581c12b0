"""Choreographed sagas: multi-service transactions as events, with compensations and timeouts.

- `SagaParticipant` declares one service's part: ``@participant.on(event)``
  steps, ``@participant.compensate(event)`` undo, and for the owning service a
  `SagaDefinition` state machine with ``@participant.entered(state)`` hooks.
  Every handler runs in one transaction with the inbox and the outbox.
- `AsyncSagaParticipant` awaits the same steps from asyncio code (an
  `AsyncConsumer` handler); ``SagaTimerScheduler.arun`` fires timers there.
- `SagaStore` keeps saga state (optimistic lock), the saga log, timers and
  step records; `SagaTimerScheduler` fires persisted deadlines.
- `ChaosHarness` / `run_with_chaos` test a saga against duplicates, delays,
  reordering, drops and crashes, then check your invariants.

SQLAlchemy (extra ``sql``) is imported when these are first used, never by
``import resilience.saga``.
"""

from ._async import AsyncSagaParticipant
from ._chaos import ChaosHarness, ChaosOptions, ChaosReport, InjectedCrash, run_with_chaos
from ._definition import DEFAULT_TIMEOUT_EVENT, Decision, SagaDefinition
from ._participant import SagaParticipant, StepContext, StepHandler
from ._schema import DEFAULT_SAGA_PREFIX, SagaTables, saga_tables
from ._store import SagaInstance, SagaLogEntry, SagaStore, SagaTimer, Transition
from ._timers import SagaTimerScheduler, TimerRun

__all__ = [
    "DEFAULT_SAGA_PREFIX",
    "DEFAULT_TIMEOUT_EVENT",
    "AsyncSagaParticipant",
    "ChaosHarness",
    "ChaosOptions",
    "ChaosReport",
    "Decision",
    "InjectedCrash",
    "SagaDefinition",
    "SagaInstance",
    "SagaLogEntry",
    "SagaParticipant",
    "SagaStore",
    "SagaTables",
    "SagaTimer",
    "SagaTimerScheduler",
    "StepContext",
    "StepHandler",
    "TimerRun",
    "Transition",
    "run_with_chaos",
    "saga_tables",
]
