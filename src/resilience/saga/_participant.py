"""`SagaParticipant`: one service's part of a choreographed saga.

Each handler runs in ONE database transaction with the inbox row (dedup), the
saga bookkeeping (state + version, step record, log line) and the outgoing
events (outbox rows): a step is atomic, applied once, and never loses the
events it emits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from resilience._errors import (
    ConcurrentSagaUpdateError,
    ConfigurationError,
    IllegalTransitionError,
    SagaError,
)
from resilience.messaging._message import Message
from resilience.outbox._inbox import Inbox
from resilience.outbox._outbox import Outbox

from ._definition import Outcome, SagaDefinition
from ._store import LogLine, SagaInstance, SagaStore, Transition

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from resilience.messaging import Router

__all__ = ["SagaParticipant", "StepContext", "StepHandler"]

_TIMER_PREFIX: Final = "timer:"

F = TypeVar("F", bound=Callable[["StepContext"], object])

StepHandler = Callable[["StepContext"], object]
"""A saga handler: takes a `StepContext`; may return None, a `Message` or several."""


class StepContext:
    """What a saga handler gets: the transaction, the event, and ways to answer.

    Attributes:
        session: the SQLAlchemy Session of the handler's transaction; do the
            business writes with it.
        message: the event being handled.
        saga_id: the saga it belongs to.
        participant: the name of the service handling it.
        transition: for the owning service, the state change the event made
            (None for participants without a definition).
    """

    __slots__ = (
        "_emitted",
        "_participant",
        "message",
        "participant",
        "saga_id",
        "session",
        "transition",
    )

    def __init__(
        self,
        owner: SagaParticipant,
        session: Session,
        message: Message,
        saga_id: str,
        transition: Transition | None = None,
    ) -> None:
        self._participant = owner
        self.session = session
        self.message = message
        self.saga_id = saga_id
        self.participant = owner.name
        self.transition = transition
        self._emitted: list[Message] = []

    @property
    def payload(self) -> Any:
        """The event's payload."""
        return self.message.payload

    @property
    def data(self) -> Any:
        """The saga's data as stored at ``start`` (owning service only)."""
        return self.transition.data if self.transition is not None else None

    @property
    def emitted(self) -> tuple[Message, ...]:
        """The events emitted so far by this handler."""
        return tuple(self._emitted)

    def emit(
        self,
        type: str,
        payload: Any = None,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        """Emit an event in this transaction (outbox); its key defaults to the saga id,
        so every event of one saga keeps its order on the broker."""
        message = Message(
            type=type,
            payload=payload,
            key=self.saga_id if key is None else key,
            headers=dict(headers or {}),
        )
        self._emitted.append(message)
        return message

    def schedule(self, event_type: str, delay: float) -> None:
        """Persist a timer: *event_type* is applied to this saga after *delay* seconds
        (unless the saga has ended by then)."""
        self._participant.schedule(self.session, self.saga_id, event_type, delay=delay)


@dataclass(frozen=True, slots=True)
class _Compensation:
    step: str
    fn: StepHandler


def _default_saga_id(message: Message) -> str | None:
    if message.key is not None:
        return message.key
    payload = message.payload
    if isinstance(payload, Mapping):
        value = payload.get("saga_id")
        return value if isinstance(value, str) else None
    return None


TIMER_MAX_ATTEMPTS: Final = 8
"""A timer whose handling keeps raising is dropped (and logged as rejected) after this many tries."""

TIMER_MAX_BACKOFF: Final = 300.0
"""Longest wait, in seconds, before a failing timer is tried again (2, 4, 8, ... capped here)."""


class SagaParticipant:
    """One service's part in a choreographed saga, declared with decorators.

    There is no orchestrator: every service owns its step. A participant
    reacts to events with a local transaction and answers with events::

        stock = SagaParticipant("stock", sessionmaker=Session, outbox=outbox, inbox=inbox)

        @stock.on("order.created", step="reserve")
        def reserve(ctx: StepContext) -> None:
            ...  # UPDATE stock ... WHERE available >= :qty
            ctx.emit("stock.reserved", {...})

        @stock.compensate("order.cancelled", step="reserve")
        def release(ctx: StepContext) -> None:
            ...  # give the reservation back

    The library records each step per saga, so a compensation runs at most
    once, only if its step ran, and a step that arrives after its compensation
    (events reordered) does not run at all.

    The service that owns the saga (Orders) passes a `SagaDefinition`: the
    events it declares move the persisted state machine (optimistic lock,
    illegal transitions rejected and logged), and `entered` hooks run when the
    saga reaches a state::

        @orders.entered("cancelled")
        def cancelled(ctx: StepContext) -> None:
            ctx.emit("order.cancelled", {...})

    ``participant.handle`` is the consumer handler (``Consumer(sub,
    participant.handle, permanent_errors=participant.permanent_errors)``).

    Args:
        name: the service name: the inbox consumer name, and the name in the saga log.
        sessionmaker: makes the Sessions handlers run in.
        outbox: where emitted events are written.
        inbox: deduplicates incoming events.
        definition: the state machine, for the service owning the saga.
        store: the saga tables; by default created in the outbox's MetaData.
        saga_id: extracts the saga id from an event (default: the message key,
            else ``payload["saga_id"]``).
        conflict_retries: times a handler is re-run at once after a
            `ConcurrentSagaUpdateError` before the error goes to the consumer
            (which retries with backoff).
    """

    __slots__ = (
        "_compensations",
        "_crash_hook",
        "_entered",
        "_inbox",
        "_outbox",
        "_saga_id",
        "_sessionmaker",
        "_steps",
        "conflict_retries",
        "definition",
        "name",
        "store",
    )

    def __init__(
        self,
        name: str,
        *,
        sessionmaker: Callable[[], Session],
        outbox: Outbox,
        inbox: Inbox,
        definition: SagaDefinition | None = None,
        store: SagaStore | None = None,
        saga_id: Callable[[Message], str | None] = _default_saga_id,
        conflict_retries: int = 3,
    ) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ConfigurationError("name", "must be a non-empty string of at most 200 chars")
        if not callable(sessionmaker):
            raise ConfigurationError("sessionmaker", "must be callable() -> Session")
        if not isinstance(outbox, Outbox):
            raise ConfigurationError("outbox", "must be a resilience.outbox.Outbox")
        if not isinstance(inbox, Inbox):
            raise ConfigurationError("inbox", "must be a resilience.outbox.Inbox")
        if definition is not None and not isinstance(definition, SagaDefinition):
            raise ConfigurationError("definition", "must be a SagaDefinition or None")
        if store is not None and not isinstance(store, SagaStore):
            raise ConfigurationError("store", "must be a SagaStore or None")
        if not callable(saga_id):
            raise ConfigurationError("saga_id", "must be callable(message) -> str | None")
        if not isinstance(conflict_retries, int) or conflict_retries < 0:
            raise ConfigurationError("conflict_retries", "must be an integer >= 0")
        self.name = name
        self.definition = definition
        self.store = store if store is not None else SagaStore(outbox.table.metadata)
        self.conflict_retries = conflict_retries
        self._sessionmaker = sessionmaker
        self._outbox = outbox
        self._inbox = inbox
        self._saga_id = saga_id
        self._steps: dict[str, tuple[str, StepHandler]] = {}
        self._compensations: dict[str, list[_Compensation]] = {}
        self._entered: dict[str, list[StepHandler]] = {}
        self._crash_hook: Callable[[Message], None] | None = None

    # ------------------------------------------------------------------ declaring

    def on(self, event_type: str, *, step: str | None = None) -> Callable[[F], F]:
        """Run the decorated function when *event_type* arrives.

        For the owning service and an event its definition declares, the
        function runs after the transition was applied (``ctx.transition``).
        Otherwise it is a **step** named *step* (default: the event type),
        recorded per saga so that its compensation can find it.
        """
        _check_type(event_type)

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationError("fn", "must be callable(ctx)")
            if event_type in self._steps:
                raise ConfigurationError("event_type", f"{event_type!r} already has a handler")
            self._steps[event_type] = (step or event_type, fn)
            return fn

        return register

    def compensate(self, event_type: str, *, step: str | None = None) -> Callable[[F], F]:
        """Run the decorated function when *event_type* says a later step failed.

        It undoes *step* (default: this participant's only step) at most once
        per saga and only if the step ran; if the step has not run yet, it is
        marked aborted instead, so a late arrival of its triggering event
        does nothing.
        """
        _check_type(event_type)
        if self.definition is not None and event_type in self.definition.events:
            raise ConfigurationError(
                "event_type",
                f"{event_type!r} moves the saga's state machine; react to the state it "
                "leads to with entered() instead",
            )

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationError("fn", "must be callable(ctx)")
            target = step
            if target is None:
                names = {s for s, _ in self._steps.values()}
                if len(names) != 1:
                    raise ConfigurationError(
                        "step",
                        f"name the step {event_type!r} compensates; this participant has "
                        f"{sorted(names) or 'no'} steps",
                    )
                target = names.pop()
            self._compensations.setdefault(event_type, []).append(_Compensation(target, fn))
            return fn

        return register

    def entered(self, state: str) -> Callable[[F], F]:
        """Run the decorated function when the saga enters *state* (owning service only).

        Typical use: emit ``order.confirmed`` / ``order.cancelled`` and update the
        order row, whatever event caused the move (an answer or a timeout).
        """
        if self.definition is None:
            raise ConfigurationError("definition", "entered() needs a SagaDefinition")
        if state not in self.definition.states:
            raise ConfigurationError("state", f"{state!r} is not a state of the definition")

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationError("fn", "must be callable(ctx)")
            self._entered.setdefault(state, []).append(fn)
            return fn

        return register

    # ------------------------------------------------------------------ introspection

    @property
    def event_types(self) -> frozenset[str]:
        """Every event type this participant handles (subscribe to these)."""
        types = set(self._steps) | set(self._compensations)
        if self.definition is not None:
            types |= self.definition.events
        return frozenset(types)

    @property
    def permanent_errors(self) -> tuple[type[BaseException], ...]:
        """Errors a retry cannot fix: pass to ``Consumer(permanent_errors=...)``."""
        return (IllegalTransitionError,)

    def destinations(self, router: Router) -> list[str]:
        """The topics / streams carrying this participant's events under *router*.

        The definition's timeout event is left out: timers fire locally
        (`SagaTimerScheduler`), never through the broker.
        """
        local = {self.definition.timeout_event} if self.definition is not None else set()
        return sorted({router(Message(type=t)) for t in self.event_types - local})

    @property
    def sessionmaker(self) -> Callable[[], Session]:
        """Makes the Sessions steps run in (for transactions of your own, e.g. `start`)."""
        return self._sessionmaker

    @property
    def outbox(self) -> Outbox:
        """The outbox emitted events go to (run a `Relay` on it)."""
        return self._outbox

    @property
    def inbox(self) -> Inbox:
        """The inbox deduplicating this participant's events."""
        return self._inbox

    # ------------------------------------------------------------------ owning service

    def start(
        self,
        session: Session,
        saga_id: str,
        *,
        data: Any = None,
        timeout: float | None = None,
        emit: Message | Iterable[Message] = (),
    ) -> SagaInstance:
        """Begin a saga in the caller's transaction (owning service only).

        Inserts it in the initial state (the semantic lock: a ``pending`` order
        is visibly not final), persists its deadline timer if *timeout* is
        given, and writes the opening events to the outbox, all atomically.
        """
        definition = self._require_definition()
        instance = self.store.create(session, definition, saga_id, data=data, participant=self.name)
        if timeout is not None:
            self.store.schedule(
                session, saga_id, definition.timeout_event, participant=self.name, delay=timeout
            )
        messages = [emit] if isinstance(emit, Message) else list(emit)
        self._outbox.add_many(session, messages)
        return instance

    def schedule(self, session: Session, saga_id: str, event_type: str, *, delay: float) -> None:
        """Persist a timer that applies *event_type* to *saga_id* after *delay* seconds."""
        if event_type not in self.event_types:
            raise ConfigurationError(
                "event_type", f"{self.name!r} has no handler or transition for {event_type!r}"
            )
        self.store.schedule(session, saga_id, event_type, participant=self.name, delay=delay)

    # ------------------------------------------------------------------ handling

    def handle(self, message: Message) -> bool:
        """Apply *message* once; True if it did something, False for a duplicate
        or an event type this participant does not handle.

        Conflicts (`ConcurrentSagaUpdateError`) are retried *conflict_retries*
        times at once, then raised for the consumer to retry. An illegal
        transition is logged as ``rejected`` (in a transaction of its own) and
        `IllegalTransitionError` is raised: dead-letter it.
        """
        if message.type not in self.event_types:
            return False
        saga_id = self._saga_id(message)
        if not saga_id:
            raise SagaError("", f"{self.name}: no saga id in message {message.id!r}")
        for attempt in itertools.count(1):
            try:
                with self._sessionmaker() as session, session.begin():
                    outcome = self._process(session, message, saga_id)
                return outcome != "duplicate"
            except ConcurrentSagaUpdateError:
                if attempt > self.conflict_retries:
                    raise
            except IllegalTransitionError as exc:
                self._record_rejection(message, saga_id, exc)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def fire_due_timer(self) -> Literal["fired", "none", "failed", "retrying"]:
        """Claim one due timer of this participant and apply its event; used by
        `SagaTimerScheduler`. The timer row is deleted in the same transaction,
        so it fires once even with several schedulers (SKIP LOCKED on PostgreSQL).

        A timer whose handling raises is not lost and does not hold back the
        others: it goes back with one more attempt and a backoff (``"retrying"``),
        and after `TIMER_MAX_ATTEMPTS` it is dropped with a ``rejected`` log entry.
        """
        from resilience.tracing import use_context

        sql = _sa()
        t = self.store.tables.timers
        with self._sessionmaker() as session, session.begin():
            query = (
                sql.select(t)
                .where(
                    t.c.participant == self.name, t.c.fire_at <= self.store.now_expression(session)
                )
                .order_by(t.c.fire_at, t.c.id)
                .limit(1)
            )
            if session.get_bind().dialect.name in {"postgresql", "mysql", "mariadb"}:
                query = query.with_for_update(skip_locked=True)
            row = session.execute(query).first()
            if row is None:
                return "none"
            message = Message(
                type=row.event_type,
                payload={"timer": row.id, "fire_at": row.fire_at},
                key=row.saga_id,
                id=f"{_TIMER_PREFIX}{self.name}:{row.id}",
                headers=dict(row.headers or {}),
            )
            if session.connection().execute(t.delete().where(t.c.id == row.id)).rowcount != 1:
                return "none"  # another scheduler fired it first (databases without SKIP LOCKED)

            def reject(detail: str, from_state: str | None = None) -> Literal["failed"]:
                # The timer is consumed (deleted above) and the rejection logged in
                # this same transaction: it will not fire again and again.
                self.store.log(
                    session,
                    row.saga_id,
                    participant=self.name,
                    event_type=message.type,
                    outcome="rejected",
                    message_id=message.id,
                    from_state=from_state,
                    detail=detail,
                )
                return "failed"

            try:
                with use_context(message.headers), session.begin_nested():
                    self._process(session, message, row.saga_id, timer=True)
            except IllegalTransitionError as exc:
                return reject(str(exc), exc.state)
            except Exception as exc:  # a bug in a hook or handler: retry later, never lose it
                attempts = int(row.attempts) + 1
                if attempts >= TIMER_MAX_ATTEMPTS:
                    return reject(
                        f"timer gave up after {attempts} attempts: {type(exc).__name__}: {exc}"
                    )
                backoff = min(2.0**attempts, TIMER_MAX_BACKOFF)
                now = self.store.now(session)
                session.connection().execute(
                    t.insert().values(
                        {**row._mapping, "attempts": attempts, "fire_at": now + backoff}
                    )
                )
                return "retrying"
        return "fired"

    def _process(
        self, session: Session, message: Message, saga_id: str, *, timer: bool = False
    ) -> Outcome:
        store = self.store
        if not self._inbox.record(session, self.name, message.id):
            store.log(
                session,
                saga_id,
                participant=self.name,
                event_type=message.type,
                outcome="duplicate",
                message_id=message.id,
            )
            return "duplicate"
        ctx = StepContext(self, session, message, saga_id)
        outcome: Outcome = "accepted"
        definition = self.definition
        if definition is not None and message.type in definition.events:
            transition = store.apply(
                session,
                definition,
                saga_id,
                message.type,
                participant=self.name,
                message_id=message.id,
                timer=timer,
            )
            ctx.transition = transition
            outcome = transition.outcome
            if transition.outcome == "accepted":
                step = self._steps.get(message.type)
                if step is not None:
                    _collect(ctx, step[1](ctx))
                if transition.entered:
                    for fn in self._entered.get(transition.to_state, ()):
                        _collect(ctx, fn(ctx))
        else:
            outcome = self._run_steps(ctx)
        if ctx._emitted:
            self._outbox.add_many(session, ctx._emitted)
        hook = self._crash_hook
        if hook is not None:
            hook(message)
        return outcome

    def _run_steps(self, ctx: StepContext) -> Outcome:
        store, session, message = self.store, ctx.session, ctx.message
        outcome: Outcome = "skipped"
        step = self._steps.get(message.type)
        # The log line of a claim or compensation is written with it (one statement
        # on PostgreSQL), before the handler runs: same transaction, same result.
        if step is not None:
            name, fn = step
            line = _line(message, "accepted", name, "done")
            existing = store.claim_step(session, self.name, ctx.saga_id, name, "done", log=line)
            if existing is None:
                _collect(ctx, fn(ctx))
                outcome = "accepted"
            else:
                self._log(ctx, "skipped", name, existing, f"step {name!r} is already {existing}")
        for comp in self._compensations.get(message.type, ()):
            line = _line(message, "aborted", comp.step, "aborted", "compensation before its step")
            existing = store.claim_step(
                session, self.name, ctx.saga_id, comp.step, "aborted", log=line
            )
            if existing is None:
                outcome = "aborted"
            elif existing == "done":
                if not store.mark_step(
                    session,
                    self.name,
                    ctx.saga_id,
                    comp.step,
                    expected="done",
                    status="compensated",
                    log=_line(message, "accepted", comp.step, "compensated"),
                ):
                    raise ConcurrentSagaUpdateError(ctx.saga_id, "step changed concurrently")
                _collect(ctx, comp.fn(ctx))
                outcome = "accepted"
            else:
                self._log(ctx, "skipped", comp.step, existing, f"step {comp.step!r} is {existing}")
        return outcome

    def _log(
        self,
        ctx: StepContext,
        outcome: Outcome,
        step: str,
        status: str,
        detail: str | None = None,
    ) -> None:
        self.store.log(
            ctx.session,
            ctx.saga_id,
            participant=self.name,
            event_type=ctx.message.type,
            outcome=outcome,
            message_id=ctx.message.id,
            to_state=f"{step}:{status}",
            detail=detail,
        )

    def _record_rejection(
        self, message: Message, saga_id: str, exc: IllegalTransitionError
    ) -> None:
        with self._sessionmaker() as session, session.begin():
            self.store.log(
                session,
                saga_id,
                participant=self.name,
                event_type=message.type,
                outcome="rejected",
                message_id=message.id,
                from_state=exc.state,
                detail=str(exc),
            )

    def _require_definition(self) -> SagaDefinition:
        if self.definition is None:
            raise ConfigurationError("definition", f"{self.name!r} does not own a saga definition")
        return self.definition

    def __repr__(self) -> str:
        return f"SagaParticipant({self.name!r}, events={sorted(self.event_types)})"


def _line(
    message: Message, outcome: Outcome, step: str, status: str, detail: str | None = None
) -> LogLine:
    """The saga-log line of a step record: ``to_state`` is ``step:status``."""
    return LogLine(message.type, outcome, message.id, to_state=f"{step}:{status}", detail=detail)


def _collect(ctx: StepContext, result: object) -> None:
    if result is None:
        return
    if isinstance(result, Message):
        ctx._emitted.append(result)
        return
    if isinstance(result, Iterable) and not isinstance(result, str | bytes | Mapping):
        for item in result:
            if not isinstance(item, Message):
                raise ConfigurationError("handler", f"returned {type(item).__name__}, not Message")
            ctx._emitted.append(item)
        return
    raise ConfigurationError(
        "handler", f"must return None, a Message or Messages, got {type(result).__name__}"
    )


def _check_type(event_type: str) -> None:
    if not isinstance(event_type, str) or not event_type or len(event_type) > 200:
        raise ConfigurationError("event_type", "must be a non-empty string of at most 200 chars")


def _sa() -> Any:
    from resilience._optional import require

    return require("sqlalchemy", "sql")
