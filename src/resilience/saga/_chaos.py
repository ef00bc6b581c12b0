"""`ChaosHarness`: run saga participants against the in-memory broker with injected chaos.

The point of a saga is what happens when things go wrong: events duplicated,
delayed, reordered, dropped and redelivered, handlers crashing half-way, a
participant never answering. The harness produces all of that, reproducibly
from a seed, through the real outbox relay, broker, inbox and timer paths, and
then checks the invariants the user states about the business.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from resilience._clock import Clock
from resilience._errors import ConcurrentSagaUpdateError, ConfigurationError, IllegalTransitionError
from resilience.messaging._memory import InMemoryBroker, InMemorySubscription
from resilience.messaging._message import Message, decode_message
from resilience.messaging._protocols import Delivery, Router
from resilience.messaging._routing import TopicRouter

from ._participant import SagaParticipant
from ._timers import SagaTimerScheduler

if TYPE_CHECKING:
    import sqlalchemy as sa

    from resilience.outbox import Relay

__all__ = ["ChaosHarness", "ChaosOptions", "ChaosReport", "InjectedCrash"]

Invariant = Callable[[], object]
"""A check that raises (e.g. ``AssertionError``) when the system is wrong."""


class _AdvancingClock(Clock, Protocol):
    def advance(self, seconds: float) -> None: ...


class InjectedCrash(Exception):
    """Raised inside a handler's transaction, after its writes and before commit."""


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    """How much chaos, as probabilities per delivery (all reproducible from *seed*).

    Attributes:
        duplicate: the delivery is handed to the handler twice.
        delay: the delivery is held back for 1..*max_delay_steps* steps.
        drop: the delivery is lost before the handler sees it; the broker
            redelivers it after its visibility timeout (at-least-once).
        crash: the handler raises `InjectedCrash` after doing its work but
            before commit; the transaction rolls back and the event comes again.
        reorder: pick deliveries in random order instead of arrival order.
        tick: seconds the saga clock advances per step, so timers can race
            with in-flight answers (0 = time moves only when everything is idle).
        seed: random seed; the same seed gives the same run.
        batch_size: records taken from the broker per subscription per step.
        max_steps: give up (raise) after this many steps: a livelock guard.
    """

    duplicate: float = 0.1
    delay: float = 0.1
    max_delay_steps: int = 20
    drop: float = 0.05
    crash: float = 0.05
    reorder: bool = True
    tick: float = 0.0
    seed: int | None = 0
    batch_size: int = 200
    max_steps: int = 10_000_000

    def __post_init__(self) -> None:
        for name in ("duplicate", "delay", "drop", "crash"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigurationError(name, f"must be a probability in [0, 1), got {value!r}")
        if not isinstance(self.max_delay_steps, int) or self.max_delay_steps < 1:
            raise ConfigurationError("max_delay_steps", "must be an integer >= 1")
        if not self.tick >= 0:
            raise ConfigurationError("tick", "must be >= 0 seconds")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigurationError("batch_size", "must be an integer >= 1")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ConfigurationError("max_steps", "must be an integer >= 1")


@dataclass(slots=True)
class ChaosReport:
    """What the run did: how much chaos was injected and what the sagas saw."""

    steps: int = 0
    handled: int = 0
    duplicates: int = 0
    delayed: int = 0
    dropped: int = 0
    crashes: int = 0
    conflicts: int = 0
    timers_fired: int = 0
    published: int = 0
    rejected: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Service:
    participant: SagaParticipant
    engine: sa.Engine
    relay: Relay
    subscription: InMemorySubscription
    timers: SagaTimerScheduler


@dataclass(slots=True)
class _InFlight:
    ready_at: int
    service: _Service
    delivery: Delivery
    message: Message


class ChaosHarness:
    """Drives saga participants through an `InMemoryBroker`, injecting chaos.

    Each `add`-ed participant gets its outbox relay (publishing to the broker),
    a consumer-group subscription to its events, and a timer scheduler. `run`
    then loops: relay committed events, receive, apply chaos, hand one
    delivery to its participant, ack on success; when everything is idle it
    makes the broker redeliver what was dropped, then moves the saga clock to
    the next timer and fires it. It stops when no event, redelivery or timer
    is left, and checks the invariants.

    Args:
        clock: the saga clock (a `resilience.testing.FakeClock`), the same one
            passed to the participants' ``SagaStore(now=clock.monotonic)``.
        options: how much chaos.
        router: message type to topic (default `TopicRouter()`).
    """

    __slots__ = (
        "_broker_clock",
        "_rng",
        "_services",
        "broker",
        "clock",
        "options",
        "report",
        "router",
    )

    def __init__(
        self,
        *,
        clock: _AdvancingClock,
        options: ChaosOptions | None = None,
        router: Router | None = None,
    ) -> None:
        if not callable(getattr(clock, "advance", None)):
            raise ConfigurationError("clock", "must be a FakeClock (needs advance())")
        from resilience.testing import FakeClock

        self.clock = clock
        self.options = options if options is not None else ChaosOptions()
        self.router: Router = router if router is not None else TopicRouter()
        self._broker_clock = FakeClock()
        self.broker = InMemoryBroker(
            partitions=4,
            visibility_timeout=5.0,
            session_timeout=1e9,
            clock=self._broker_clock,
        )
        self._rng = random.Random(self.options.seed)
        self._services: list[_Service] = []
        self.report = ChaosReport()

    def add(self, participant: SagaParticipant, engine: sa.Engine) -> None:
        """Run *participant* (whose tables live in *engine*'s database) in the harness."""
        from resilience.outbox import Relay

        if not isinstance(participant, SagaParticipant):
            raise ConfigurationError("participant", "must be a SagaParticipant")
        if participant.store.injected_clock is False:
            raise ConfigurationError(
                "participant",
                "its SagaStore must use the harness clock: SagaStore(now=clock.monotonic)",
            )
        relay = Relay(
            engine,
            participant.outbox,
            self.broker.publisher(router=self.router),
            name=f"{participant.name}-relay",
            listen=False,
            batch_size=500,
        )
        subscription = self.broker.subscribe(
            participant.destinations(self.router), participant.name
        )
        self._services.append(
            _Service(participant, engine, relay, subscription, SagaTimerScheduler(participant))
        )

    def run(
        self,
        *,
        invariants: Iterable[Invariant] = (),
        safety: Iterable[Invariant] = (),
        check_every: int = 500,
    ) -> ChaosReport:
        """Run until quiet, then check *invariants*; *safety* checks also run every
        *check_every* steps (things that must hold at every moment, such as stock
        never going negative). Returns the `ChaosReport`."""
        if not self._services:
            raise ConfigurationError("participants", "add() at least one participant first")
        safety_checks = list(safety)
        opts, rng, report = self.options, self._rng, self.report
        pool: list[_InFlight] = []
        dirty: set[int] = set(range(len(self._services)))
        step = 0
        while True:
            step += 1
            if step > opts.max_steps:
                raise RuntimeError(f"chaos run did not settle within {opts.max_steps} steps")
            if opts.tick:
                self.clock.advance(opts.tick)
                if step % 10 == 0 and self._fire_timers():
                    dirty.update(range(len(self._services)))
            moved = self._relay(dirty)
            dirty.clear()
            received = self._receive(pool, step)
            ready = [i for i, f in enumerate(pool) if f.ready_at <= step]
            if ready:
                index = rng.choice(ready) if opts.reorder else ready[0]
                flight = pool.pop(index)
                self._deliver(pool, flight, step)
                dirty.add(self._services.index(flight.service))
            elif pool:
                step = min(f.ready_at for f in pool) - 1  # only delayed ones: skip ahead
                continue
            elif not (moved or received):
                if not self._idle():
                    break
                dirty.update(range(len(self._services)))
            if safety_checks and step % check_every == 0:
                for check in safety_checks:
                    check()
        report.steps = step
        for check in [*safety_checks, *invariants]:
            check()
        return report

    # ------------------------------------------------------------------ steps

    def _relay(self, dirty: set[int]) -> bool:
        moved = False
        for index in sorted(dirty):
            service = self._services[index]
            while True:
                result = service.relay.run_once()
                self.report.published += result.published
                moved = moved or result.published > 0
                if result.claimed < service.relay.options.batch_size:
                    break
        return moved

    def _receive(self, pool: list[_InFlight], step: int) -> bool:
        opts, rng, report = self.options, self._rng, self.report
        received = False
        for service in self._services:
            for delivery in service.subscription.receive(opts.batch_size, 0.0):
                received = True
                if rng.random() < opts.drop:
                    report.dropped += 1  # never acked: the broker hands it out again later
                    continue
                message = decode_message(delivery.raw)
                copies = 2 if rng.random() < opts.duplicate else 1
                report.duplicates += copies - 1
                for _ in range(copies):
                    ready_at = step
                    if rng.random() < opts.delay:
                        report.delayed += 1
                        ready_at += rng.randint(1, opts.max_delay_steps)
                    pool.append(_InFlight(ready_at, service, delivery, message))
        return received

    def _deliver(self, pool: list[_InFlight], flight: _InFlight, step: int) -> None:
        opts, rng, report = self.options, self._rng, self.report
        participant = flight.service.participant
        crash = rng.random() < opts.crash
        if crash:
            participant._crash_hook = _crash
        try:
            from resilience.tracing import consumer_span

            with consumer_span(
                flight.message,
                system="in_memory",
                destination=flight.delivery.destination,
                consumer_group=participant.name,
            ):
                participant.handle(flight.message)
        except InjectedCrash:
            report.crashes += 1
            flight.ready_at = step + 1
            pool.append(flight)  # rolled back: the broker would hand it out again
            return
        except ConcurrentSagaUpdateError:
            report.conflicts += 1
            flight.ready_at = step + 1
            pool.append(flight)
            return
        except IllegalTransitionError as exc:
            report.rejected.append(str(exc))
        finally:
            participant._crash_hook = None
        report.handled += 1
        flight.service.subscription.ack([flight.delivery])

    def _idle(self) -> bool:
        """Nothing in flight: redeliver dropped records, else fire the next timer.
        Returns False when there is nothing left to do at all."""
        if any(
            self.broker.pending(s.participant.name, d)
            for s in self._services
            for d in s.subscription.destinations
        ):
            self._broker_clock.advance(self.broker.visibility_timeout)
            return True
        next_fire = self._next_timer()
        if next_fire is None:
            return False
        now = self.clock.monotonic()
        if next_fire > now:
            self.clock.advance(next_fire - now)
        self._fire_timers()
        return True

    def _next_timer(self) -> float | None:
        earliest: float | None = None
        for service in self._services:
            with service.engine.connect() as conn:
                timers = service.participant.store.timers(conn)
            if timers and (earliest is None or timers[0].fire_at < earliest):
                earliest = timers[0].fire_at
        return earliest

    def _fire_timers(self) -> int:
        fired = 0
        for service in self._services:
            result = service.timers.run_once()
            if result.failed:
                raise RuntimeError(f"{service.participant.name}: a saga timer failed to fire")
            fired += result.fired
        self.report.timers_fired += fired
        return fired


def _crash(message: Message) -> None:
    raise InjectedCrash(f"injected crash while handling {message.type} {message.id}")


def run_with_chaos(
    participants: Sequence[tuple[SagaParticipant, sa.Engine]],
    *,
    clock: _AdvancingClock,
    invariants: Iterable[Invariant] = (),
    safety: Iterable[Invariant] = (),
    options: ChaosOptions | None = None,
    router: Router | None = None,
    before: Callable[[ChaosHarness], Any] | None = None,
) -> ChaosReport:
    """One-call form of `ChaosHarness`: add *participants*, run *before* (e.g. start
    the sagas), run until quiet and check *invariants*."""
    harness = ChaosHarness(clock=clock, options=options, router=router)
    for participant, engine in participants:
        harness.add(participant, engine)
    if before is not None:
        before(harness)
    return harness.run(invariants=invariants, safety=safety)
