"""`SagaTimerScheduler`: fires persisted saga timers (deadlines) when they are due."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from resilience._clock import SYSTEM_CLOCK, Clock, MonotonicClock
from resilience._errors import ConcurrentSagaUpdateError, ConfigurationError
from resilience._telemetry import Event, LoggingTelemetry, Telemetry

from ._participant import SagaParticipant

__all__ = ["SagaTimerScheduler", "TimerRun"]

_log = logging.getLogger("resilience.saga")
_COMPONENT: Final = "saga_timers"


@dataclass(frozen=True, slots=True)
class TimerRun:
    """What one `SagaTimerScheduler.run_once` did."""

    fired: int = 0
    rejected: int = 0
    failed: int = 0


class SagaTimerScheduler:
    """Fires due saga timers through the participants that set them.

    A timer is a row (saga id, ``fire_at``, event type) written in the same
    transaction as the step that needed a deadline, so it survives crashes and
    restarts. Firing one claims it (``FOR UPDATE SKIP LOCKED`` on PostgreSQL:
    any number of schedulers share the work and each timer fires once),
    deletes it and applies its event through the participant's ordinary path
    (inbox, state machine, log, outbox) in ONE transaction. A timer whose saga
    has already ended is logged as ``ignored``.

    Due-ness uses the participant store's clock: the database clock by default
    (``SagaStore(now=None)``), an injected one in tests.

    Args:
        participants: the participants whose timers this scheduler fires.
        batch_size: timers fired per `run_once` at most.
        interval: seconds between runs when started as a thread.
        clock: sleeps between runs (a `FakeClock` in tests).
        telemetry: receives ``timer_failed`` events.
    """

    __slots__ = (
        "_clock",
        "_stop",
        "_telemetry",
        "_thread",
        "batch_size",
        "interval",
        "participants",
    )

    def __init__(
        self,
        participants: SagaParticipant | Sequence[SagaParticipant],
        *,
        batch_size: int = 100,
        interval: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        telemetry: Telemetry | None = None,
    ) -> None:
        group = [participants] if isinstance(participants, SagaParticipant) else list(participants)
        if not group or not all(isinstance(p, SagaParticipant) for p in group):
            raise ConfigurationError("participants", "must be one or more SagaParticipants")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError("batch_size", "must be an integer >= 1")
        if not interval > 0:
            raise ConfigurationError("interval", "must be > 0 seconds")
        self.participants = tuple(group)
        self.batch_size = batch_size
        self.interval = float(interval)
        self._clock = clock
        self._telemetry: Telemetry = telemetry if telemetry is not None else LoggingTelemetry()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> TimerRun:
        """Fire up to *batch_size* due timers per participant; never raises for one bad timer."""
        fired = rejected = failed = 0
        for participant in self.participants:
            for _ in range(self.batch_size):
                try:
                    result = participant.fire_due_timer()
                except ConcurrentSagaUpdateError:
                    failed += 1  # the timer stays; the next run retries it
                    break
                except Exception as exc:
                    failed += 1
                    self._telemetry.emit(
                        Event(
                            _COMPONENT,
                            participant.name,
                            "timer_failed",
                            {"error": f"{type(exc).__name__}: {exc}"},
                        )
                    )
                    break
                if result == "none":
                    break
                if result == "fired":
                    fired += 1
                elif result == "retrying":  # handling raised; the timer is back with a backoff
                    failed += 1
                    self._telemetry.emit(Event(_COMPONENT, participant.name, "timer_retry", {}))
                else:
                    rejected += 1
        return TimerRun(fired, rejected, failed)

    def run(self, stop: threading.Event | None = None) -> None:
        """Run until *stop* (or `stop`) is set, waiting *interval* between idle runs."""
        event = stop if stop is not None else self._stop
        while not event.is_set():
            if self._more_due(self.run_once()):
                continue
            if isinstance(self._clock, MonotonicClock):
                event.wait(self.interval)
            else:
                self._clock.sleep(self.interval)

    async def arun(self, stop: asyncio.Event) -> None:
        """`run` for asyncio services: each `run_once` (blocking SQL) runs on a worker
        thread, and the loop is free while it waits between runs."""
        while not stop.is_set():
            if self._more_due(await asyncio.to_thread(self.run_once)):
                continue
            if isinstance(self._clock, MonotonicClock):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
            else:
                await self._clock.asleep(self.interval)

    def _more_due(self, result: TimerRun) -> bool:
        """A full batch fired: more timers may be due, so run again at once."""
        return result.fired >= self.batch_size

    def start(self) -> None:
        """Run in a daemon thread until `stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="saga-timers", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread started by `start` and wait for it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("saga timer scheduler did not stop within %.1fs", timeout)

    def __repr__(self) -> str:
        return f"SagaTimerScheduler({[p.name for p in self.participants]})"
