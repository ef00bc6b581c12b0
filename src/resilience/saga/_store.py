"""`SagaStore`: saga state with an optimistic lock, the saga log, timers and step records.

Every method works inside the caller's transaction (a Session or Connection),
so a state change commits or rolls back with the inbox row, the business
writes and the outgoing events of the same handler.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from resilience._errors import (
    ConcurrentSagaUpdateError,
    ConfigurationError,
    IllegalTransitionError,
    SagaError,
)
from resilience._optional import require
from resilience.outbox._outbox import connection_of, database_now

from ._definition import Outcome, SagaDefinition
from ._schema import DEFAULT_SAGA_PREFIX, SagaTables, saga_tables

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

__all__ = ["LogLine", "SagaInstance", "SagaLogEntry", "SagaStore", "SagaTimer", "Transition"]

_MAX_DETAIL: Final = 2000
_ON_CONFLICT_DIALECTS: Final = frozenset({"postgresql", "sqlite"})
_LOG_COLUMNS: Final = (
    "saga_id",
    "participant",
    "event_type",
    "message_id",
    "from_state",
    "to_state",
    "outcome",
    "detail",
    "trace_id",
    "at",
)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _trace_id() -> str | None:
    """The current trace id (32 hex digits), so a log line can be joined to its trace."""
    from resilience.tracing._otel import api

    otel = api()
    if otel is None:
        return None
    try:
        context = otel.trace.get_current_span().get_span_context()
    except Exception:  # telemetry must never fail the saga's write
        return None
    return f"{context.trace_id:032x}" if context.is_valid else None


@dataclass(frozen=True, slots=True)
class Transition:
    """The result of applying one event to a saga (`SagaStore.apply`).

    ``outcome`` is ``"accepted"`` (declared transition, applied) or
    ``"ignored"`` (a timer after the saga ended). ``version`` is the new
    optimistic-lock version.
    """

    saga_id: str
    event_type: str
    from_state: str
    to_state: str
    version: int
    outcome: Outcome
    data: Any = None

    @property
    def entered(self) -> bool:
        """True when the saga moved to a different state."""
        return self.outcome == "accepted" and self.from_state != self.to_state


@dataclass(frozen=True, slots=True)
class LogLine:
    """A saga-log line that records a state or step change (see `SagaStore.claim_step`).

    Passed to the method making the change, so PostgreSQL writes both in one
    statement (a data-modifying CTE): the line exists exactly when the change
    happened, for one round trip instead of two.
    """

    event_type: str
    outcome: Outcome
    message_id: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class SagaInstance:
    """One saga as stored by its owning service."""

    saga_id: str
    definition: str
    state: str
    version: int
    data: Any
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SagaLogEntry:
    """One line of the saga log: an event, what it did, and when."""

    id: int
    saga_id: str
    participant: str
    event_type: str
    message_id: str | None
    from_state: str | None
    to_state: str | None
    outcome: str
    detail: str | None
    trace_id: str | None
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class SagaTimer:
    """A persisted deadline that has not fired yet."""

    id: int
    saga_id: str
    participant: str
    event_type: str
    fire_at: float
    attempts: int
    headers: Mapping[str, str]


class SagaStore:
    """Reads and writes the saga tables (`saga_tables`) in the caller's transaction.

    Args:
        metadata: the SQLAlchemy `MetaData` to add the tables to (usually the
            outbox's, so ``create_all`` creates everything at once).
        prefix: table name prefix.
        now: wall-clock seconds since the epoch, for timers. ``None`` (the
            default, and the right choice in production) uses the **database**
            clock, so every instance of a service agrees on when a timer is due
            whatever its host's clock says. Tests inject a fake clock.
    """

    __slots__ = ("_get", "_now", "_statements", "tables")

    def __init__(
        self,
        metadata: sa.MetaData,
        *,
        prefix: str = DEFAULT_SAGA_PREFIX,
        now: Callable[[], float] | None = None,
    ) -> None:
        sql = require("sqlalchemy", "sql")
        if not isinstance(metadata, sql.MetaData):
            raise ConfigurationError("metadata", "must be a sqlalchemy MetaData")
        if now is not None and not callable(now):
            raise ConfigurationError("now", "must be None or callable() -> epoch seconds")
        self.tables: SagaTables = saga_tables(metadata, prefix)
        self._now = now
        self._statements: dict[tuple[str, str, bool], Any] = {}
        t = self.tables.instances
        self._get = sql.select(t).where(t.c.saga_id == sql.bindparam("saga_id"))

    @property
    def injected_clock(self) -> bool:
        """Whether timers use an injected clock rather than the database's."""
        return self._now is not None

    def create_tables(self, bind: sa.Engine | sa.Connection) -> None:
        """Create the saga tables if missing (tests and demos; use migrations in production)."""
        first = self.tables.instances
        first.metadata.create_all(bind, tables=self.tables.all())

    # ------------------------------------------------------------------ time

    def now_expression(self, conn: sa.Connection | Session) -> Any:
        """The current time (epoch seconds) as a SQL expression or a number."""
        if self._now is not None:
            return float(self._now())
        return database_now(connection_of(conn).dialect.name)

    def now(self, conn: sa.Connection | Session) -> float:
        """The current time in epoch seconds, as timers see it."""
        value = self.now_expression(conn)
        if isinstance(value, float):
            return value
        sql = require("sqlalchemy", "sql")
        return float(connection_of(conn).execute(sql.select(value)).scalar_one())

    # ------------------------------------------------------------------ sagas

    def create(
        self,
        conn: sa.Connection | Session,
        definition: SagaDefinition,
        saga_id: str,
        *,
        data: Any = None,
        participant: str,
        message_id: str | None = None,
    ) -> SagaInstance:
        """Insert a new saga in the definition's initial state and log ``saga.started``."""
        if not isinstance(saga_id, str) or not saga_id or len(saga_id) > 200:
            raise ConfigurationError("saga_id", "must be a non-empty string of at most 200 chars")
        connection = connection_of(conn)
        if self.get(connection, saga_id) is not None:
            raise SagaError(saga_id, f"saga {saga_id!r} already exists")
        now = _utcnow()
        sql = require("sqlalchemy", "sql")
        try:
            connection.execute(
                self.tables.instances.insert().values(
                    saga_id=saga_id,
                    definition=definition.name,
                    state=definition.initial,
                    version=1,
                    data=data,
                    created_at=now,
                    updated_at=now,
                )
            )
        except sql.exc.IntegrityError as exc:  # a concurrent start of the same saga won
            raise SagaError(saga_id, f"saga {saga_id!r} already exists") from exc
        self.log(
            connection,
            saga_id,
            participant=participant,
            event_type="saga.started",
            outcome="accepted",
            message_id=message_id,
            to_state=definition.initial,
        )
        return SagaInstance(saga_id, definition.name, definition.initial, 1, data, now, now)

    def get(self, conn: sa.Connection | Session, saga_id: str) -> SagaInstance | None:
        """The saga, or None if this database has never seen it."""
        row = connection_of(conn).execute(self._get, {"saga_id": saga_id}).first()
        if row is None:
            return None
        return SagaInstance(
            row.saga_id,
            row.definition,
            row.state,
            row.version,
            row.data,
            _aware(row.created_at),
            _aware(row.updated_at),
        )

    def apply(
        self,
        conn: sa.Connection | Session,
        definition: SagaDefinition,
        saga_id: str,
        event_type: str,
        *,
        participant: str,
        message_id: str | None = None,
        timer: bool = False,
    ) -> Transition:
        """Move the saga along the transition *event_type* declares, or refuse.

        Reads the state and version, asks the definition, then updates with
        ``WHERE version = :read_version``: if another transaction moved the saga
        in between, no row matches and `ConcurrentSagaUpdateError` is raised
        (roll back and retry: the retry reads the new state). An undeclared
        transition raises `IllegalTransitionError` and changes nothing; the
        caller records it (`log`) in a transaction of its own, since this one
        rolls back. Entering a terminal state deletes the saga's pending timers.
        """
        connection = connection_of(conn)
        instance = self.get(connection, saga_id)
        if instance is None:
            raise SagaError(saga_id, f"saga {saga_id!r} is unknown here (event {event_type!r})")
        if instance.definition != definition.name:
            raise SagaError(
                saga_id,
                f"saga {saga_id!r} belongs to definition {instance.definition!r}, "
                f"not {definition.name!r}",
            )
        decision = definition.decide(instance.state, event_type, timer=timer)
        if decision.outcome == "rejected":
            raise IllegalTransitionError(saga_id, instance.state, event_type)
        line = LogLine(
            event_type, decision.outcome, message_id, decision.from_state, decision.to_state
        )
        new_version = instance.version
        if decision.outcome == "accepted":
            move = {
                "m_saga_id": saga_id,
                "m_version": instance.version,
                "m_state": decision.to_state,
                "m_new_version": instance.version + 1,
                "m_updated_at": _utcnow(),
            }
            if not self._change_logged(
                connection, "move", move, saga_id=saga_id, participant=participant, line=line
            ):
                raise ConcurrentSagaUpdateError(
                    saga_id,
                    f"saga {saga_id!r} was moved by another transaction while applying "
                    f"{event_type!r} (read version {instance.version}); retry",
                )
            new_version += 1
            if decision.entered and definition.is_terminal(decision.to_state):
                self.cancel_timers(connection, saga_id)
        else:
            self._write_log(connection, saga_id, participant, line)
        return Transition(
            saga_id,
            event_type,
            decision.from_state,
            decision.to_state,
            new_version,
            decision.outcome,
            instance.data,
        )

    # ------------------------------------------------------------------ log

    def log(
        self,
        conn: sa.Connection | Session,
        saga_id: str,
        *,
        participant: str,
        event_type: str,
        outcome: Outcome,
        message_id: str | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Append one line to the saga log (in the caller's transaction)."""
        line = LogLine(event_type, outcome, message_id, from_state, to_state, detail)
        self._write_log(connection_of(conn), saga_id, participant, line)

    def _write_log(
        self, connection: sa.Connection, saga_id: str, participant: str, line: LogLine
    ) -> None:
        stmt = self._statement("log", "")
        connection.execute(stmt, _log_values(saga_id, participant, line))

    def _change_logged(
        self,
        connection: sa.Connection,
        kind: str,
        params: dict[str, Any],
        *,
        saga_id: str,
        participant: str,
        line: LogLine | None,
    ) -> bool:
        """Run the change *kind* (``claim``, ``mark`` or ``move``) and, if it changed a
        row, write *line*; True if it changed a row.

        PostgreSQL: one statement, the change in a CTE whose RETURNING row feeds
        ``INSERT INTO log ... SELECT``. Elsewhere: the change, then the line.
        """
        dialect = connection.dialect.name
        if line is not None and dialect == "postgresql":
            stmt = self._statement(kind, dialect, logged=True)
            values = {f"log_{k}": v for k, v in _log_values(saga_id, participant, line).items()}
            return connection.execute(stmt, {**params, **values}).first() is not None
        changed = self._change(connection, kind, dialect, params)
        if changed and line is not None:
            self._write_log(connection, saga_id, participant, line)
        return changed

    def _change(
        self, connection: sa.Connection, kind: str, dialect: str, params: dict[str, Any]
    ) -> bool:
        stmt = self._statement(kind, dialect)
        if kind != "claim":
            return connection.execute(stmt, params).rowcount == 1
        if dialect in _ON_CONFLICT_DIALECTS:
            return connection.execute(stmt, params).first() is not None
        sql = require("sqlalchemy", "sql")
        try:
            with connection.begin_nested():
                connection.execute(stmt, params)
        except sql.exc.IntegrityError:
            return False
        return True

    def _statement(self, kind: str, dialect: str, *, logged: bool = False) -> Any:
        """Built once per kind and dialect (values come as parameters): building a
        statement costs more than running it, and the statement cache does the rest."""
        key = (kind, dialect, logged)
        stmt = self._statements.get(key)
        if stmt is None:
            built = self._pg_logged(kind) if logged else self._change_statement(kind, dialect)
            stmt = self._statements[key] = built
        return stmt

    def _change_statement(self, kind: str, dialect: str) -> Any:
        """The statement behind a change; with RETURNING for the ON CONFLICT dialects."""
        sql = require("sqlalchemy", "sql")
        p = sql.bindparam
        if kind == "log":
            return self.tables.log.insert()
        if kind == "move":
            t = self.tables.instances
            return (
                t.update()
                .where(t.c.saga_id == p("m_saga_id"), t.c.version == p("m_version"))
                .values(
                    state=p("m_state"), version=p("m_new_version"), updated_at=p("m_updated_at")
                )
            )
        s = self.tables.steps
        if kind == "mark":
            return (
                s.update()
                .where(
                    s.c.participant == p("s_participant"),
                    s.c.saga_id == p("s_saga_id"),
                    s.c.step == p("s_step"),
                    s.c.status == p("s_expected"),
                )
                .values(status=p("s_status"), updated_at=p("s_updated_at"))
            )
        values = {
            c: p(f"s_{c}") for c in ("participant", "saga_id", "step", "status", "updated_at")
        }
        if dialect in _ON_CONFLICT_DIALECTS:
            module = require(f"sqlalchemy.dialects.{dialect}", "sql")
            return module.insert(s).values(values).on_conflict_do_nothing().returning(s.c.step)
        return s.insert().values(values)

    def _pg_logged(self, kind: str) -> Any:
        sql = require("sqlalchemy", "sql")
        change = self._change_statement(kind, "postgresql")
        if kind != "claim":  # the claim returns its row already (ON CONFLICT DO NOTHING)
            table = self.tables.instances if kind == "move" else self.tables.steps
            change = change.returning(table.c.saga_id)
        changed = change.cte(f"saga_{kind}")
        log = self.tables.log
        row = sql.select(
            *(sql.bindparam(f"log_{c}", type_=log.c[c].type) for c in _LOG_COLUMNS)
        ).select_from(changed)
        return log.insert().from_select(list(_LOG_COLUMNS), row).returning(log.c.id)

    def history(self, conn: sa.Connection | Session, saga_id: str) -> list[SagaLogEntry]:
        """Every log line of *saga_id*, oldest first."""
        sql = require("sqlalchemy", "sql")
        t = self.tables.log
        rows = connection_of(conn).execute(
            sql.select(t).where(t.c.saga_id == saga_id).order_by(t.c.id)
        )
        return [
            SagaLogEntry(
                r.id,
                r.saga_id,
                r.participant,
                r.event_type,
                r.message_id,
                r.from_state,
                r.to_state,
                r.outcome,
                r.detail,
                r.trace_id,
                _aware(r.at),
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ timers

    def schedule(
        self,
        conn: sa.Connection | Session,
        saga_id: str,
        event_type: str,
        *,
        participant: str,
        delay: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Persist a timer: *event_type* is applied to *saga_id* after *delay* seconds.

        The current trace context is stored with it, so the timeout continues
        the saga's trace when it fires.
        """
        if not delay >= 0:
            raise ConfigurationError("delay", f"must be >= 0 seconds, got {delay!r}")
        from resilience.tracing import capture_context

        stored = {**capture_context(), **(headers or {})}
        connection = connection_of(conn)
        connection.execute(
            self.tables.timers.insert().values(
                saga_id=saga_id,
                participant=participant,
                event_type=event_type,
                fire_at=self.now_expression(connection) + float(delay),
                attempts=0,
                headers=stored or None,
                created_at=_utcnow(),
            )
        )

    def cancel_timers(self, conn: sa.Connection | Session, saga_id: str) -> int:
        """Delete the pending timers of *saga_id*; returns how many."""
        t = self.tables.timers
        result = connection_of(conn).execute(t.delete().where(t.c.saga_id == saga_id))
        return int(result.rowcount or 0)

    def timers(self, conn: sa.Connection | Session, saga_id: str | None = None) -> list[SagaTimer]:
        """Pending timers (of one saga, or all), earliest first."""
        sql = require("sqlalchemy", "sql")
        t = self.tables.timers
        query = sql.select(t).order_by(t.c.fire_at, t.c.id)
        if saga_id is not None:
            query = query.where(t.c.saga_id == saga_id)
        return [
            SagaTimer(
                r.id, r.saga_id, r.participant, r.event_type, r.fire_at, r.attempts, r.headers or {}
            )
            for r in connection_of(conn).execute(query)
        ]

    # ------------------------------------------------------------------ steps

    def step_status(
        self, conn: sa.Connection | Session, participant: str, saga_id: str, step: str
    ) -> str | None:
        """``done``, ``compensated``, ``aborted`` or None (never heard of)."""
        sql = require("sqlalchemy", "sql")
        t = self.tables.steps
        return (
            connection_of(conn)
            .execute(
                sql.select(t.c.status).where(
                    t.c.participant == participant, t.c.saga_id == saga_id, t.c.step == step
                )
            )
            .scalar_one_or_none()
        )

    def claim_step(
        self,
        conn: sa.Connection | Session,
        participant: str,
        saga_id: str,
        step: str,
        status: str,
        *,
        log: LogLine | None = None,
    ) -> str | None:
        """Record *status* for a step seen for the first time (and *log*, if given).

        Returns None when this call recorded it, else the status already there
        (and *log* is not written). On PostgreSQL a concurrent claim of the same
        step waits for the first transaction, then sees its row: the step and
        its compensation can never both believe they came first.
        """
        connection = connection_of(conn)
        values = {
            "s_participant": participant,
            "s_saga_id": saga_id,
            "s_step": step,
            "s_status": status,
            "s_updated_at": _utcnow(),
        }
        if self._change_logged(
            connection, "claim", values, saga_id=saga_id, participant=participant, line=log
        ):
            return None
        existing = self.step_status(connection, participant, saga_id, step)
        if existing is None:  # deleted in between: let the caller retry from scratch
            raise ConcurrentSagaUpdateError(saga_id, f"step {step!r} changed concurrently")
        return existing

    def mark_step(
        self,
        conn: sa.Connection | Session,
        participant: str,
        saga_id: str,
        step: str,
        *,
        expected: str,
        status: str,
        log: LogLine | None = None,
    ) -> bool:
        """Move a step from *expected* to *status* (and write *log*, if given);
        False, with nothing written, if it was not in *expected*."""
        values = {
            "s_participant": participant,
            "s_saga_id": saga_id,
            "s_step": step,
            "s_expected": expected,
            "s_status": status,
            "s_updated_at": _utcnow(),
        }
        return self._change_logged(
            connection_of(conn), "mark", values, saga_id=saga_id, participant=participant, line=log
        )

    def __repr__(self) -> str:
        return f"SagaStore(prefix={self.tables.instances.name!r})"


def _log_values(saga_id: str, participant: str, line: LogLine) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "participant": participant,
        "event_type": line.event_type,
        "message_id": line.message_id,
        "from_state": line.from_state,
        "to_state": line.to_state,
        "outcome": line.outcome,
        "detail": line.detail[:_MAX_DETAIL] if line.detail else None,
        "trace_id": _trace_id(),
        "at": _utcnow(),
    }
