"""`Relay`: moves committed outbox rows to the broker, in order, at least once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import operator
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast

from resilience._clock import SYSTEM_CLOCK, Clock
from resilience._errors import (
    BrokerUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    OutboxError,
    PublishError,
)
from resilience._optional import require
from resilience._telemetry import Event, LoggingTelemetry, Telemetry
from resilience.messaging._common import EncodedMessage
from resilience.messaging._message import Codec, Message

from ._core import RelayOptions, plan_waves
from ._outbox import (
    MYSQL_DIALECTS,
    SUPPORTED_DIALECTS,
    Outbox,
    OutboxStats,
    _unsupported,
    database_now,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    from resilience.messaging import Publisher
    from resilience.policies import Policy

__all__ = ["BatchResult", "Relay"]

_COMPONENT: Final = "outbox_relay"
_log = logging.getLogger("resilience.outbox")
_MAX_ERROR_CHARS: Final = 2000
_PAUSE_SLICE: Final = 0.1
_SKIP_LOCKED_DIALECTS: Final = frozenset({"postgresql", *MYSQL_DIALECTS})
# ce_time as the database writes it: ISO 8601 in UTC, what datetime.isoformat() gives.
_PG_ISO_UTC: Final = '\'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\''
# Errors a publisher may raise that are the transport's fault, not the messages'.
_TRANSPORT_ERRORS: Final = (BrokerUnavailableError, ConnectionError, TimeoutError)
# The floor of a claim that may see every position (the smallest BIGINT).
_NO_FLOOR: Final = -(2**63)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Row(NamedTuple):
    """A claimed row: the relay's bookkeeping around the message as stored.

    Tuples all the way down (built with ``tuple.__new__``, no Python-level
    constructor): a relay builds 500 per batch. The payload stays as stored
    (the codec's bytes): publishers with ``publish_encoded`` send it as is; a
    `Message` is built only for the others.
    """

    position: int
    key: str | None
    prev: int | None
    attempts: int
    destination: str | None
    message: EncodedMessage  # occurred_at as ISO 8601 text (UTC): the ce_time header as is

    @property
    def message_id(self) -> str:
        return self.message.id

    @property
    def type(self) -> str:
        return self.message.type

    def to_message(self, codec: Codec) -> Message:
        return self.message.to_message(codec)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one `Relay.run_once` did.

    Attributes:
        claimed: rows read from the table.
        published: rows the broker acknowledged (deleted or marked sent).
        failed: rows whose publish failed (backed off or dead-lettered).
        dead: rows dead-lettered by this batch.
        waiting: claimed rows left alone because an earlier row of their key is
            not yet acknowledged (held by another relay, or failed in this batch).
        lease_held: False when another relay holds the lease (lease mode).
        retry_after: set when the circuit breaker refused the batch.
        error: the last publish error, if any.
    """

    claimed: int = 0
    published: int = 0
    failed: int = 0
    dead: int = 0
    waiting: int = 0
    lease_held: bool = True
    retry_after: float | None = None
    error: str | None = None


@dataclass(slots=True)
class _Outcome:
    delivered: list[_Row]
    failed: list[_Row]
    error: str | None = None
    retry_after: float | None = None
    transport: bool = False  # the failure is the broker's, not the rows': charge nothing


@dataclass(slots=True)
class _Claim:
    """A claimed batch and the open transaction that holds its rows locked."""

    conn: sa.Connection
    txn: sa.RootTransaction
    rows: list[_Row]
    # Every unsent row up to the last claimed one was in this batch or the one in
    # flight when it was claimed: the next claim may start after it (see `_claim_rows`).
    exact: bool = False

    def close(self, *, commit: bool) -> None:
        try:
            if self.txn.is_active:
                if commit:
                    self.txn.commit()
                else:
                    self.txn.rollback()
        finally:
            self.conn.close()


class _Published(NamedTuple):
    """A batch the broker has answered for, not yet recorded."""

    claim: _Claim
    outcome: _Outcome
    waiting: int


class _PgStatement:
    """A claim query compiled once for psycopg and run on the driver's binary cursor.

    Rows come back as plain tuples: no `Row` objects, no result processors, and
    binary transfer (no hex decoding of the payload). 500 rows per batch make
    that the relay's largest saving after pipelining.
    """

    __slots__ = ("_params", "_sql")

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self._sql: str = compiled.string
        self._params: dict[str, Any] = dict(compiled.params)  # LIMIT values and the like

    def fetch(self, conn: sa.Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with _driver_connection(conn) as raw, raw.cursor(binary=True) as cursor:
            cursor.execute(self._sql, {**self._params, **params})
            return cast("list[tuple[Any, ...]]", cursor.fetchall())


class _PgRollover(_PgStatement):
    """Record a delivered batch, commit, and open the next transaction: one round trip.

    Client-side binding (psycopg's ``ClientCursor``) is what lets one
    ``execute`` carry several statements; the parameters are the relay's own
    (a text array of positions, a timestamp), never user input.
    """

    __slots__ = ()

    def __init__(self, statement: Any, dialect: Any) -> None:
        super().__init__(statement, dialect)
        self._sql += "; COMMIT; BEGIN"

    def run(self, conn: sa.Connection, params: dict[str, Any]) -> None:
        psycopg = require("psycopg", "postgres")
        with _driver_connection(conn) as raw, psycopg.ClientCursor(raw) as cursor:
            cursor.execute(self._sql, {**self._params, **params})


@contextlib.contextmanager
def _driver_connection(conn: sa.Connection) -> Iterator[Any]:
    """The psycopg connection under *conn*; invalidated, as SQLAlchemy would, if it broke."""
    raw: Any = conn.connection.dbapi_connection
    try:
        yield raw
    except Exception:
        if raw.closed or raw.broken:
            conn.invalidate()
        raise


def _iso_utc(value: dt.datetime) -> str:
    """ISO 8601 in UTC (MySQL and SQLite hand back naive datetimes; we store UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC).isoformat()
    return value.astimezone(dt.UTC).isoformat()


class _PgListener:
    """A LISTEN connection that ends an idle wait as soon as a NOTIFY arrives."""

    def __init__(self, url: sa.URL, channel: str) -> None:
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._channel = channel
        self._conn: Any = None

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Wait up to *timeout*; True if woken by a notification."""
        psycopg = require("psycopg", "postgres")
        clock_deadline = SYSTEM_CLOCK.monotonic() + timeout
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=3)
                quoted = self._channel.replace('"', '""')
                self._conn.execute(f'LISTEN "{quoted}"')
            while not stop.is_set():
                remaining = clock_deadline - SYSTEM_CLOCK.monotonic()
                if remaining <= 0:
                    return False
                for _ in self._conn.notifies(timeout=min(remaining, 0.25), stop_after=1):
                    return True
            return False
        except psycopg.Error:
            self.close()
            remaining = clock_deadline - SYSTEM_CLOCK.monotonic()
            if remaining > 0:
                stop.wait(remaining)
            return False

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class Relay:
    """Publishes committed outbox rows to a broker, at least once, keeping per-key order.

    Each batch is claimed in a transaction: with ``FOR UPDATE SKIP LOCKED`` on
    PostgreSQL and MySQL/MariaDB (any number of relays share the work), or under a lease row
    judged by the database clock elsewhere (SQLite: one active relay, others
    stand by). A key's row is published only after the key's earlier rows are
    acknowledged (see `plan_waves`), so order per key holds across relays.
    Failed rows back off (``available_at``) and are dead-lettered after
    ``max_attempts``; the optional *breaker* stops hammering a broker that is down.

    Run it as a thread (`start` / `stop`), as an asyncio task (``await
    relay.run(stop_event)``), or as a process (``resilience outbox relay``).

    Args:
        engine: SQLAlchemy engine of the database holding the outbox.
        outbox: the `Outbox` events are written to.
        publisher: a `resilience.messaging.Publisher` (blocks until acknowledged).
            If it also has ``publish_encoded`` (`KafkaPublisher` does) and encodes
            with the outbox codec's content type, rows are published from their
            stored bytes, without a decode and re-encode per event.
        options: a `RelayOptions`; keyword *overrides* replace single fields.
        breaker: a policy (e.g. `resilience.policies.CircuitBreaker`) wrapped
            around every publish; while it is open nothing is attempted or charged.
        telemetry: receives `resilience.Event` s (failures, dead letters, lease changes).
        clock: used for relay-level backoff pauses.
        system: ``messaging.system`` for trace spans; guessed from the publisher.
    """

    def __init__(
        self,
        engine: sa.Engine,
        outbox: Outbox,
        publisher: Publisher,
        *,
        options: RelayOptions | None = None,
        breaker: Policy | None = None,
        telemetry: Telemetry | None = None,
        clock: Clock = SYSTEM_CLOCK,
        system: str | None = None,
        **overrides: Any,
    ) -> None:
        sql = require("sqlalchemy", "sql")
        if not isinstance(engine, sql.Engine):
            raise ConfigurationError("engine", "must be a sqlalchemy Engine")
        if not isinstance(outbox, Outbox):
            raise ConfigurationError("outbox", "must be a resilience.outbox.Outbox")
        if not callable(getattr(publisher, "publish", None)):
            raise ConfigurationError("publisher", "must have publish(messages)")
        base = options if options is not None else RelayOptions()
        try:
            self.options = dataclasses.replace(base, **overrides) if overrides else base
        except TypeError as exc:
            raise ConfigurationError("options", str(exc)) from exc
        self._engine = engine
        self._outbox = outbox
        self._publisher = publisher
        self._breaker = breaker
        self._telemetry: Telemetry = telemetry if telemetry is not None else LoggingTelemetry()
        self._clock = clock
        self._system = system or _guess_system(publisher)
        self._publish_encoded = _encoded_path(publisher, outbox.codec)
        dialect = engine.dialect.name
        if dialect not in SUPPORTED_DIALECTS:
            raise ConfigurationError("engine", _unsupported(dialect))
        mode = self.options.claim_mode
        if mode == "auto":
            mode = "skip_locked" if dialect in _SKIP_LOCKED_DIALECTS else "lease"
        self._mode = mode
        self._holder = (
            f"{self.options.name}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self._has_lease = False
        self._listener = (
            _PgListener(engine.url, outbox.channel)
            if self.options.listen and dialect == "postgresql"
            else None
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # MySQL/MariaDB: read committed (no gap locks; each statement sees what is
        # committed when it starts, which `_claim_rows` relies on).
        self._read_committed = dialect in MYSQL_DIALECTS
        # Claim the next batch while the broker acknowledges this one: PostgreSQL
        # only. InnoDB can make a claim wait on locks its own relay's batch in
        # flight holds on index entries (SKIP LOCKED skips rows, not every lock).
        self._overlap = mode == "skip_locked" and dialect == "postgresql"
        self._claim_query = self._build_claim_query()
        self._heads_query = self._build_claim_query(heads_only=True)
        self._unsent_query = sql.select(
            self._build_unsent_count(sql.bindparam("top", type_=sql.BigInteger()))
        )
        # PostgreSQL: the claim and its count in one statement.
        self._counted_query = (
            self._build_counted(self._claim_query) if dialect == "postgresql" else None
        )
        self._prev_query = self._build_prev_query()
        self._done_statement = self._build_done_statement()
        # PostgreSQL: the claim runs on the driver's binary cursor (rows as plain
        # tuples, the time already formatted), the relay's hottest statement.
        self._pg_statements = (
            {
                q: _PgStatement(q, engine.dialect)
                for q in (self._counted_query, self._heads_query, self._unsent_query)
            }
            if dialect == "postgresql"
            else None
        )
        self._pg_rollover = (
            _PgRollover(self._done_statement, engine.dialect) if self._overlap else None
        )

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def claim_mode(self) -> str:
        """``"skip_locked"`` or ``"lease"``, as resolved for this database."""
        return self._mode

    # ------------------------------------------------------------------ one batch

    def run_once(self) -> BatchResult:
        """Claim one batch, publish it and record the outcome; the unit every driver repeats."""
        if self._mode == "lease":
            return self._run_once_leased()
        claim = self._open_claim()
        if claim is None:
            return BatchResult()
        try:
            outcome, waiting = self._publish(claim.rows)
            dead = self._record(claim.conn, outcome)
        except BaseException:
            claim.close(commit=False)
            raise
        claim.close(commit=True)
        return self._finish(claim.rows, outcome, dead, waiting)

    def _settle(self, claim: _Claim, outcome: _Outcome) -> list[_Row]:
        """Record a published batch's outcome and commit it (releasing its rows)."""
        try:
            dead = self._record(claim.conn, outcome)
        except BaseException:
            claim.close(commit=False)
            raise
        claim.close(commit=True)
        return dead

    def drain(self, limit: int | None = None) -> BatchResult:
        """Publish what is pending now, batch after batch, and return the totals.

        Stops when nothing more is publishable, at the first failed batch, or
        once *limit* rows were claimed. `run_forever` repeats this between its
        waits; call it directly from a cron job, a script or a test.
        """
        if limit is not None and limit < 1:
            raise ConfigurationError("limit", f"must be >= 1 or None, got {limit!r}")
        return self._drain(limit, threading.Event())

    def _drain(self, limit: int | None, stop: threading.Event) -> BatchResult:
        if not self._overlap:
            batches: list[BatchResult] = []
            claimed = 0
            while not stop.is_set() and (limit is None or claimed < limit):
                batch = self.run_once()
                batches.append(batch)
                claimed += batch.claimed
                if _ends_drain(batch) or batch.claimed < self.options.batch_size:
                    break
        else:
            batches = self._drain_overlapped(limit, stop)
        if len(batches) == 1:
            return batches[0]
        last = batches[-1] if batches else BatchResult()
        return dataclasses.replace(
            last,
            claimed=sum(b.claimed for b in batches),
            published=sum(b.published for b in batches),
            waiting=sum(b.waiting for b in batches),
        )

    def _drain_overlapped(self, limit: int | None, stop: threading.Event) -> list[BatchResult]:
        """Drain a backlog on PostgreSQL, one batch's database work overlapping another's publish.

        While the broker acknowledges batch N, a helper thread commits the outcome
        of batch N-1 and claims batch N+1 on another connection (skipping N's
        locked rows). Per-key order holds as with several relays: a row of N+1
        whose key's previous row is in N has that row as ``prev``, so it waits,
        and is released only once the broker acknowledged that row. A crash
        loses nothing: a row is deleted (or marked) only after its acknowledgement.

        When N's claim was exact (every unsent row up to N's last position was in
        N or in the batch before it), N+1's claim starts after N's last position:
        SKIP LOCKED then has no locked rows of N to step over, which halves the
        claim's cost. Rows it passes over (committed late below that position,
        left waiting by N-1, held by another relay) are unsent and below N+1's
        last position, so N+1's count is not exact and N+2's claim starts from
        the beginning again: a row is passed over by one claim at most. Ordering
        does not depend on the floor: `prev` is computed over the whole table.
        """
        claim = self._open_claim()
        if claim is None:
            return [BatchResult()]
        batches: list[BatchResult] = []
        claimed = 0
        helper: ThreadPoolExecutor | None = None
        upcoming: Future[tuple[list[_Row], _Claim | None]] | None = None
        # Published and not yet settled: its connection claims the batch after next.
        pending: _Published | None = None
        current: _Claim | None = None  # being published, or published and not yet handed on
        try:
            while claim is not None:
                claimed += len(claim.rows)
                more = (
                    len(claim.rows) >= self.options.batch_size
                    and not stop.is_set()
                    and (limit is None or claimed < limit)
                )
                previous, pending = pending, None
                if more or previous is not None:
                    helper = helper or ThreadPoolExecutor(1, f"relay-{self.name}")
                    upcoming = helper.submit(
                        self._settle_and_claim, previous, claim if more else None
                    )
                current, claim = claim, None
                outcome, waiting = self._publish(current.rows)
                dead, following = upcoming.result() if upcoming else ([], None)
                upcoming = None
                if previous is not None:
                    batches.append(
                        self._finish(previous.claim.rows, previous.outcome, dead, previous.waiting)
                    )
                if following is not None and _ends_drain(outcome):
                    following.close(commit=False)
                    following = None
                if following is None:
                    settled, current = current, None
                    batches.append(
                        self._finish(settled.rows, outcome, self._settle(settled, outcome), waiting)
                    )
                else:
                    following.rows = _released(following.rows, outcome.delivered)
                    pending, current, claim = _Published(current, outcome, waiting), None, following
        finally:
            if helper is not None:
                # Unwinding after an error: let the helper finish, release what it claimed.
                with contextlib.suppress(BaseException):
                    left = upcoming.result()[1] if upcoming else None
                    if left is not None:
                        left.close(commit=False)
                helper.shutdown(wait=True)
            # Published but not recorded: released unsent, so delivered again later.
            for unsettled in (current, pending.claim if pending else None):
                if unsettled is not None:
                    with contextlib.suppress(BaseException):
                        unsettled.close(commit=False)
        return batches

    def _settle_and_claim(
        self, published: _Published | None, in_flight: _Claim | None
    ) -> tuple[list[_Row], _Claim | None]:
        """Settle *published* (if any) and claim the batch after *in_flight* (if any).

        On PostgreSQL, a fully delivered batch's connection goes on to claim the
        next batch: ``DELETE; COMMIT; BEGIN`` is one round trip, and the claim
        runs in the transaction it opened. A batch with failures settles as usual.
        """
        rollover = self._pg_rollover
        if (
            rollover is not None
            and published is not None
            and in_flight is not None
            and not published.outcome.failed
        ):
            return [], self._roll_over(rollover, published, in_flight)
        dead = self._settle(published.claim, published.outcome) if published is not None else []
        return dead, self._open_claim(in_flight) if in_flight is not None else None

    def _roll_over(
        self, rollover: _PgRollover, published: _Published, in_flight: _Claim
    ) -> _Claim | None:
        claim = published.claim
        try:
            rollover.run(claim.conn, self._done_params(published.outcome))
            rows, exact = self._claim(claim.conn, in_flight)
        except BaseException:
            claim.close(commit=False)
            raise
        if not rows:
            claim.close(commit=False)
            return None
        return _Claim(claim.conn, claim.txn, rows, exact)

    def _open_claim(self, in_flight: _Claim | None = None) -> _Claim | None:
        conn = self._engine.connect()
        try:
            if self._read_committed:
                conn.execution_options(isolation_level="READ COMMITTED")
            txn = conn.begin()
            rows, exact = self._claim(conn, in_flight)
        except BaseException:
            conn.close()
            raise
        if not rows:
            txn.rollback()
            conn.close()
            return None
        return _Claim(conn, txn, rows, exact)

    def _run_once_leased(self) -> BatchResult:
        with self._engine.begin() as conn:
            held = self._acquire_lease(conn)
            rows = self._claim(conn)[0] if held else []
        self._note_lease(held)
        if not held:
            return BatchResult(lease_held=False)
        if not rows:
            return BatchResult()
        outcome, waiting = self._publish(rows)
        with self._engine.begin() as conn:
            dead = self._record(conn, outcome)
        return self._finish(rows, outcome, dead, waiting)

    def _finish(
        self, rows: Sequence[_Row], outcome: _Outcome, dead: list[_Row], waiting: int
    ) -> BatchResult:
        if outcome.failed:
            self._emit(
                "publish_failed",
                count=len(outcome.failed),
                delivered=len(outcome.delivered),
                error=outcome.error,
                transport=outcome.transport,
            )
        for row in dead:
            self._emit(
                "dead_lettered",
                message_id=row.message_id,
                position=row.position,
                key=row.key,
                attempts=row.attempts + 1,
                error=outcome.error,
            )
        return BatchResult(
            claimed=len(rows),
            published=len(outcome.delivered),
            failed=len(outcome.failed),
            dead=len(dead),
            waiting=waiting,
            retry_after=outcome.retry_after,
            error=outcome.error,
        )

    def _build_claim_query(self, *, heads_only: bool = False) -> Any:
        sql = require("sqlalchemy", "sql")
        t = self._outbox.table
        occurred = t.c.occurred_at
        if self._engine.dialect.name == "postgresql":
            occurred = sql.func.to_char(
                sql.func.timezone("UTC", t.c.occurred_at), sql.literal_column(_PG_ISO_UTC)
            )
        query = (
            sql.select(
                t.c.position,
                t.c.message_id,
                t.c.type,
                t.c.key,
                t.c.destination,
                t.c.payload,
                t.c.headers,
                occurred,
                t.c.attempts,
            )
            .where(
                t.c.sent_at.is_(None),
                t.c.dead_at.is_(None),
                sql.or_(t.c.available_at.is_(None), t.c.available_at <= sql.bindparam("now")),
            )
            .order_by(t.c.position)
            .limit(self.options.batch_size)
        )
        if self._overlap:
            # Overlapped claims start after the batch in flight (see `_drain_overlapped`).
            query = query.where(t.c.position > sql.bindparam("floor", type_=sql.BigInteger()))
        if heads_only:
            # Only rows with no earlier unsent row of their key: candidates that are
            # likely publishable (their `prev` is still computed as for any row).
            earlier = t.alias("earlier")
            head = sql.select(earlier.c.position).where(*self._prev_conditions(t, earlier))
            query = query.where(sql.or_(t.c.key.is_(None), ~head.exists()))
        if self._mode == "skip_locked":
            query = query.with_for_update(skip_locked=True, of=t)
        return query

    def _prev_conditions(self, t: sa.Table, earlier: Any) -> list[Any]:
        """*earlier* is an unsent row of *t*'s key before it: one that must be
        acknowledged first (a dead row counts while it blocks its key)."""
        conditions = [
            earlier.c.key == t.c.key,
            earlier.c.position < t.c.position,
            earlier.c.sent_at.is_(None),
        ]
        if not self.options.dead_letter_blocks_key:
            conditions.append(earlier.c.dead_at.is_(None))
        return conditions

    def _build_unsent_count(self, top: Any) -> Any:
        """How many rows up to position *top* must be acknowledged before later rows
        of their key, counted up to ``cap``: when that is just the rows we hold,
        `prev` is found among them. Bounded by ``LIMIT`` so that it stays one short
        index range whatever the table statistics say."""
        sql = require("sqlalchemy", "sql")
        t = self._outbox.table
        pending = (
            sql.select(t.c.position)
            .where(t.c.sent_at.is_(None), t.c.dead_at.is_(None), t.c.position <= top)
            .order_by(t.c.position)
            .limit(sql.bindparam("cap", type_=sql.Integer()))
            .subquery("pending")
        )
        count = sql.select(sql.func.count()).select_from(pending).scalar_subquery()
        if not self.options.dead_letter_blocks_key:
            return count
        dead = (
            sql.select(t.c.position)
            .where(t.c.dead_at.is_not(None), t.c.sent_at.is_(None), t.c.position <= top)
            .limit(1)
            .subquery("dead")
        )
        return count + sql.select(sql.func.count()).select_from(dead).scalar_subquery()

    def _build_counted(self, claim: Any) -> Any:
        """*claim* with the unsent count up to its last row as a last column: one round
        trip. Both read one snapshot, which sees every earlier row of a claimed
        row's key (committed before it) that was not yet sent."""
        sql = require("sqlalchemy", "sql")
        claimed = claim.cte("claimed")
        top = sql.select(sql.func.max(claimed.c.position)).scalar_subquery()
        # No ORDER BY: re-sorting 500 wide rows costs the server more than
        # `_claim_rows` checking the order the claim produced them in.
        return sql.select(claimed, self._build_unsent_count(top).label("unsent"))

    def _build_prev_query(self) -> Any:
        """``(position, prev)`` of claimed rows: each one's nearest earlier unsent row of its key."""
        sql = require("sqlalchemy", "sql")
        t = self._outbox.table
        earlier = t.alias("earlier")
        # One backward step in the (key, position) index per row. PostgreSQL picks
        # that index once the table has statistics; see "Operating" in
        # docs/messaging/outbox.md about ANALYZE.
        prev = (
            sql.select(earlier.c.position)
            .where(*self._prev_conditions(t, earlier))
            .order_by(earlier.c.key.desc(), earlier.c.position.desc())
            .limit(1)
            .scalar_subquery()
        )
        return sql.select(t.c.position, prev).where(
            t.c.position.in_(sql.bindparam("positions", expanding=True)), t.c.key.is_not(None)
        )

    def _build_done_statement(self) -> Any:
        sql = require("sqlalchemy", "sql")
        t = self._outbox.table
        if self._engine.dialect.name == "postgresql":
            # One text parameter ('{1,2,3}') cast to an array: cheaper to pass than
            # an IN list of 500 parameters, or a list the driver dumps item by item.
            postgresql = require("sqlalchemy.dialects.postgresql", "sql")
            param = sql.cast(
                sql.bindparam("positions", type_=sql.Text()), postgresql.ARRAY(sql.BigInteger())
            )
            condition = t.c.position == sql.any_(param)
        else:
            condition = t.c.position.in_(sql.bindparam("positions", expanding=True))
        if self.options.on_sent == "delete":
            return t.delete().where(condition)
        return (
            t.update()
            .where(condition)
            .values(sent_at=sql.bindparam("now"), attempts=t.c.attempts + 1)
        )

    def _claim(
        self, conn: sa.Connection, in_flight: _Claim | None = None
    ) -> tuple[list[_Row], bool]:
        """The next batch, and whether it is exact (see `_claim_rows`)."""
        now = _utcnow()
        params: dict[str, Any] = {"now": now}
        held: Sequence[_Row] = ()
        if self._overlap:
            params["floor"] = _NO_FLOOR
            if in_flight is not None:
                held = in_flight.rows
                if in_flight.exact:
                    params["floor"] = in_flight.rows[-1].position
        if self._counted_query is not None:
            # Any cap above what can be ours will do: the batch and the one in flight.
            params["cap"] = self.options.batch_size + len(held) + 1
            claimed, exact = self._claim_rows(conn, self._counted_query, params, held, counted=True)
        else:
            claimed, exact = self._claim_rows(conn, self._claim_query, params, held)
        half = len(claimed) // 2
        # Rows with no earlier unsent row of their key are always publishable: when
        # they are half the batch, skip planning the waves just to count.
        if len(claimed) == self.options.batch_size and sum(r.prev is None for r in claimed) < half:
            publishable = sum(len(w) for w in plan_waves(claimed))
            if publishable < half:
                # The batch is mostly rows waiting behind an earlier row of their key
                # (backing off, or held by another relay): one hot key could starve
                # every other key this way. Also claim the heads of other keys.
                seen = {r.position for r in claimed}
                extra = [
                    r
                    for r in self._claim_rows(conn, self._heads_query, params, held)[0]
                    if r.position not in seen
                ]
                if extra:
                    claimed = sorted(claimed + extra, key=lambda r: r.position)
                    exact = False
        return claimed, exact

    def _claim_rows(
        self,
        conn: sa.Connection,
        query: Any,
        params: dict[str, Any],
        in_flight: Sequence[_Row],
        *,
        counted: bool = False,
    ) -> tuple[list[_Row], bool]:
        """Lock a batch, then find each row's ``prev`` (see `plan_waves`).

        The claim is a locking read; `prev` comes from the same statement's
        snapshot (*counted*: the count is the query's last column) or a later one. Any
        earlier row of a claimed row's key committed before it (writers lock
        the key), so that statement sees it unless it was sent meanwhile: the
        answer is exact or errs on the side of waiting. Usually no row up to
        the batch's last position is unsent except the batch itself and the
        batch *in_flight* (this relay's, being published: locked, still unsent),
        as one cheap count says, and each row's `prev` is its key's previous row
        among those; otherwise one indexed lookup per row finds it. The count
        matching is what the returned flag says ("exact").
        """
        rows: Sequence[Any] = self._fetch(conn, query, params)
        if not rows:
            return [], False
        if counted and not all(map(operator.lt, (r[0] for r in rows), (r[0] for r in rows[1:]))):
            rows = sorted(rows, key=operator.itemgetter(0))
        # Column order: position, message_id, type, key, destination, payload,
        # headers, occurred_at, attempts (see _build_claim_query)[, unsent count].
        top = rows[-1][0]
        held = [(r.position, r.key) for r in in_flight if r.position <= top]
        expected = len(rows) + len(held)
        prevs: dict[int, int | None]
        if counted:
            unsent = rows[0][-1]
        else:
            unsent = self._fetch(conn, self._unsent_query, {"top": top, "cap": expected + 1})[0][0]
        exact = unsent == expected
        if exact:
            # Every unsent row up to `top` is in the batch or in flight.
            prevs = {}
            last: dict[str, int] = {}
            chain = [(r[0], r[3]) for r in rows]
            if held:
                mine = {position for position, _ in chain}
                chain = sorted(held + chain) if held[-1][0] > chain[0][0] else held + chain
            for position, key in chain:
                if key is not None:
                    if not held or position in mine:
                        prevs[position] = last.get(key)
                    last[key] = position
        else:
            keyed = [r[0] for r in rows if r[3] is not None]
            prevs = dict(self._fetch(conn, self._prev_query, {"positions": keyed})) if keyed else {}
        new = tuple.__new__
        get = prevs.get
        batch = [
            new(
                _Row,
                (
                    position,
                    key,
                    get(position),
                    attempts,
                    destination,
                    new(
                        EncodedMessage,
                        (
                            message_id,
                            type_,
                            key,
                            payload,
                            headers,
                            occurred if isinstance(occurred, str) else _iso_utc(occurred),
                        ),
                    ),
                ),
            )
            for (
                position,
                message_id,
                type_,
                key,
                destination,
                payload,
                headers,
                occurred,
                attempts,
                *_,  # the count, when *counted*
            ) in rows
        ]
        return batch, exact

    def _fetch(self, conn: sa.Connection, statement: Any, params: dict[str, Any]) -> Sequence[Any]:
        raw = self._pg_statements.get(statement) if self._pg_statements else None
        if raw is not None:
            return raw.fetch(conn, params)
        return conn.execute(statement, params).all()

    def _publish(self, rows: Sequence[_Row]) -> tuple[_Outcome, int]:
        waves = plan_waves(rows)
        planned = sum(len(w) for w in waves)
        if self.options.ordering == "pipelined" and len(waves) > 1:
            chosen = {r.position for w in waves for r in w}
            waves = [[r for r in rows if r.position in chosen]]  # position order
        outcome = _Outcome(delivered=[], failed=[])
        for wave in waves:
            try:
                self._send(wave)
            except CircuitOpenError as exc:
                outcome.retry_after = exc.retry_after
                outcome.error = str(exc)
                break
            except PublishError as exc:
                acked = exc.delivered
                outcome.delivered.extend(r for r in wave if r.message_id in acked)
                outcome.failed.extend(r for r in wave if r.message_id not in acked)
                outcome.error = str(exc) or type(exc).__name__
                outcome.transport = isinstance(exc, _TRANSPORT_ERRORS)
                break
            except Exception as exc:  # a transport that raised something else: same handling
                outcome.failed.extend(wave)
                outcome.error = f"{type(exc).__name__}: {exc}"
                outcome.transport = isinstance(exc, _TRANSPORT_ERRORS)
                break
            outcome.delivered.extend(wave)
        waiting = len(rows) - planned
        return outcome, waiting

    def _send(self, wave: Sequence[_Row]) -> None:
        codec = self._outbox.codec
        if self.options.tracing and _tracing_configured():
            from resilience.tracing import producer_span

            messages = [r.to_message(codec) for r in wave]
            with contextlib.ExitStack() as stack:
                for i, row in enumerate(wave):
                    wire = stack.enter_context(
                        producer_span(
                            messages[i],
                            system=self._system,
                            destination=row.destination or row.type,
                        )
                    )
                    if wire:
                        messages[i] = messages[i].with_headers(**wire)
                self._call_publish(messages)
        elif self._publish_encoded is not None:
            # The stored bytes go out as they are: no decode, Message, re-encode per event.
            records = [r.message for r in wave]
            if self._breaker is not None:
                self._breaker.call(self._publish_encoded, records, codec=codec)
            else:
                self._publish_encoded(records, codec=codec)
        else:
            self._call_publish([r.to_message(codec) for r in wave])

    def _call_publish(self, messages: list[Message]) -> None:
        if self._breaker is not None:
            self._breaker.call(self._publisher.publish, messages)
        else:
            self._publisher.publish(messages)

    def _done_params(self, outcome: _Outcome, now: dt.datetime | None = None) -> dict[str, Any]:
        positions: Any = [r.position for r in outcome.delivered]
        if self._engine.dialect.name == "postgresql":
            positions = "{" + ",".join(map(str, positions)) + "}"
        return {"positions": positions, "now": now or _utcnow()}

    def _record(self, conn: sa.Connection, outcome: _Outcome) -> list[_Row]:
        sql = require("sqlalchemy", "sql")
        t = self._outbox.table
        now = _utcnow()
        if outcome.delivered:
            conn.execute(self._done_statement, self._done_params(outcome, now))
        dead: list[_Row] = []
        if outcome.failed and outcome.transport:
            # The broker is down or slow: not the rows' fault. The relay backs off
            # (and its breaker counts the failure); the rows keep their attempts.
            conn.execute(
                t.update()
                .where(t.c.position == outcome.failed[0].position)
                .values(last_error=(outcome.error or "")[:_MAX_ERROR_CHARS])
            )
        elif outcome.failed:
            error = (outcome.error or "")[:_MAX_ERROR_CHARS]
            params = []
            # Charge the earliest failed row only: a poison row must not use up the
            # attempts of its batch-mates (many publishers stop at the first refusal),
            # and a broker outage then spends attempts one row at a time.
            for row in outcome.failed[:1]:
                attempts = row.attempts + 1
                is_dead = attempts >= self.options.max_attempts
                if is_dead:
                    dead.append(row)
                params.append(
                    {
                        "b_position": row.position,
                        "b_attempts": attempts,
                        "b_error": error,
                        "b_available": None
                        if is_dead
                        else now + dt.timedelta(seconds=self.options.backoff.delay(attempts)),
                        "b_dead": now if is_dead else None,
                    }
                )
            conn.execute(
                t.update()
                .where(t.c.position == sql.bindparam("b_position"))
                .values(
                    attempts=sql.bindparam("b_attempts"),
                    last_error=sql.bindparam("b_error"),
                    available_at=sql.bindparam("b_available"),
                    dead_at=sql.bindparam("b_dead"),
                ),
                params,
            )
        return dead

    # ------------------------------------------------------------------ lease

    def _db_now(self) -> Any:
        return database_now(self._engine.dialect.name)

    def _acquire_lease(self, conn: sa.Connection) -> bool:
        sql = require("sqlalchemy", "sql")
        lease = self._outbox.lease_table
        now = self._db_now()
        ttl = self.options.lease_ttl
        updated = conn.execute(
            lease.update()
            .where(
                lease.c.name == self._outbox.channel,
                sql.or_(lease.c.holder == self._holder, lease.c.expires_at < now),
            )
            .values(holder=self._holder, expires_at=now + ttl)
        )
        if updated.rowcount:  # MariaDB has no UPDATE ... RETURNING
            return True
        exists = conn.execute(
            sql.select(lease.c.holder).where(lease.c.name == self._outbox.channel)
        ).first()
        if exists is not None:
            return False
        try:
            with conn.begin_nested():
                conn.execute(
                    lease.insert().values(
                        name=self._outbox.channel, holder=self._holder, expires_at=now + ttl
                    )
                )
        except sql.exc.IntegrityError:
            return False
        return True

    def _release_lease(self) -> None:
        if self._mode != "lease" or not self._has_lease:
            return
        lease = self._outbox.lease_table
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    lease.update()
                    .where(lease.c.name == self._outbox.channel, lease.c.holder == self._holder)
                    .values(expires_at=0.0)
                )
        except Exception:  # best effort: the lease expires by itself anyway
            _log.debug("releasing the relay lease failed", exc_info=True)
        self._has_lease = False

    def _note_lease(self, held: bool) -> None:
        if held != self._has_lease:
            self._has_lease = held
            self._emit("lease_acquired" if held else "lease_lost", holder=self._holder)

    # ------------------------------------------------------------------ drivers

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Repeat `run_once` until *stop* is set, waiting when idle and backing off on failures."""
        stop = stop if stop is not None else self._stop
        opts = self.options
        idle = opts.idle_min
        failures = 0
        self._emit("started", mode=self._mode, holder=self._holder)
        try:
            while not stop.is_set():
                try:
                    result = self._drain(None, stop)
                except Exception as exc:  # database unreachable, connection dropped...
                    failures += 1
                    self._emit(
                        "batch_failed", error=f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
                    )
                    self._pause(opts.failure_backoff.delay(failures), stop)
                    continue
                if result.retry_after is not None:
                    self._emit("circuit_open", retry_after=result.retry_after)
                    self._pause(max(result.retry_after, opts.idle_min), stop)
                    continue
                if result.failed:
                    failures += 1
                    self._pause(opts.failure_backoff.delay(failures), stop)
                    continue
                failures = 0
                if result.published:
                    idle = opts.idle_min
                    continue
                if result.waiting:
                    self._wait(opts.idle_min, stop)  # another relay holds earlier rows
                    continue
                self._wait(idle, stop)
                idle = min(idle * 2, opts.idle_max)
        finally:
            self._release_lease()
            if self._listener is not None:
                self._listener.close()
            self._emit("stopped", holder=self._holder)

    def _wait(self, timeout: float, stop: threading.Event) -> None:
        if self._listener is not None:
            self._listener.wait(timeout, stop)
        else:
            stop.wait(timeout)

    def _pause(self, seconds: float, stop: threading.Event) -> None:
        deadline = self._clock.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return
            self._clock.sleep(min(remaining, _PAUSE_SLICE))

    def start(self) -> Relay:
        """Run in a daemon thread until `stop`."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_forever, args=(self._stop,), name=f"relay-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish its batch and exit; waits up to *timeout* seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if (
                self._thread.is_alive()
            ):  # still finishing a batch: a new start() must not overlap it
                raise OutboxError(f"relay {self.options.name!r} did not stop within {timeout}s")
            self._thread = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until *stop* is set, without blocking the event loop (the work runs in a thread)."""
        flag = threading.Event()

        async def bridge() -> None:
            await stop.wait()
            flag.set()

        watcher = asyncio.create_task(bridge())
        try:
            await asyncio.to_thread(self.run_forever, flag)
        finally:
            flag.set()
            watcher.cancel()

    def lag(self) -> OutboxStats:
        """Current `OutboxStats` (pending, oldest pending age, dead)."""
        with self._engine.connect() as conn:
            return self._outbox.stats(conn)

    def _emit(self, kind: str, **attributes: Any) -> None:
        try:
            self._telemetry.emit(Event(_COMPONENT, self.name, kind, attributes))
        except Exception:  # telemetry must never stop the relay
            _log.exception("telemetry sink failed")

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Relay(name={self.name!r}, mode={self._mode!r}, table={self._outbox.table.name!r})"


def _ends_drain(batch: BatchResult | _Outcome) -> bool:
    """A failed, refused or fully waiting batch ends a drain: no backlog is going through."""
    if isinstance(batch, _Outcome):
        return bool(batch.failed) or batch.retry_after is not None or not batch.delivered
    return bool(batch.failed) or batch.retry_after is not None or not batch.published


def _released(rows: list[_Row], delivered: Sequence[_Row]) -> list[_Row]:
    """*rows* (claimed while *delivered* was in flight) with ``prev`` cleared where it
    names a row the broker has now acknowledged: that row was their key's nearest
    unsent one, so nothing of the key is left to wait for."""
    done = {r.position for r in delivered}
    return [r._replace(prev=None) if r.prev in done else r for r in rows]


def _tracing_configured() -> bool:
    """Whether spans would be recorded: a tracer provider is installed (globally or
    in `resilience.tracing.TracingOptions`). Without one, a span per message is pure cost."""
    import sys

    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    from resilience.tracing import current_options

    if current_options().tracer_provider is not None:
        return True
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _encoded_path(publisher: object, codec: Codec) -> Callable[..., None] | None:
    """``publisher.publish_encoded`` when it can send the outbox's stored bytes as they
    are: it exists, and the publisher encodes with the same content type (else the
    relay keeps transcoding through `Message`, as a publisher-side codec asks)."""
    method = getattr(publisher, "publish_encoded", None)
    if not callable(method):
        return None
    own = getattr(publisher, "codec", None)
    if own is not None and getattr(own, "content_type", None) != codec.content_type:
        return None
    return cast("Callable[..., None]", method)


def _guess_system(publisher: object) -> str:
    explicit = getattr(publisher, "system", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    name = type(publisher).__name__.lower()
    for system in ("kafka", "redis", "memory"):
        if system in name:
            return "in_memory" if system == "memory" else system
    return "unknown"
