"""`Outbox`: write events in the caller's transaction; read, requeue and purge them."""

from __future__ import annotations

import datetime as dt
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from resilience._errors import ConfigurationError
from resilience._optional import require
from resilience.messaging._message import Codec, JsonCodec, Message

from ._schema import (
    DEFAULT_OUTBOX_TABLE,
    KEY_LOCK_BUCKETS,
    key_lock_table,
    lease_table,
    outbox_table,
)

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from resilience.messaging import Router

__all__ = ["DeadEvent", "Outbox", "OutboxStats"]

_MAX_KEY_LOCKS: Final = 32


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def database_now(dialect: str) -> Any:
    """The database's own clock in epoch seconds, as a SQL expression.

    Leases and timers are judged by this clock, never the caller's, so hosts
    with skewed clocks still agree on who holds a lease and which timer is due.
    """
    sql = require("sqlalchemy", "sql")
    if dialect == "sqlite":
        return sql.literal_column("((julianday('now') - 2440587.5) * 86400.0)")
    if dialect == "postgresql":
        return sql.literal_column("extract(epoch from clock_timestamp())")
    if dialect in {"mysql", "mariadb"}:
        return sql.literal_column("UNIX_TIMESTAMP(NOW(6))")
    return sql.literal(_utcnow().timestamp())  # no server clock we know how to read


def connection_of(conn: sa.Connection | Session) -> sa.Connection:
    """The `Connection` behind a Session (joining its transaction) or the Connection itself."""
    sql = require("sqlalchemy", "sql")
    if isinstance(conn, sql.Connection):
        return cast("sa.Connection", conn)
    orm = require("sqlalchemy.orm", "sql")
    if isinstance(conn, orm.Session):
        return cast("sa.Connection", conn.connection())
    raise ConfigurationError(
        "conn", f"must be a SQLAlchemy Connection or Session, got {type(conn).__name__}"
    )


MYSQL_DIALECTS: Final = frozenset({"mysql", "mariadb"})
SUPPORTED_DIALECTS: Final = frozenset({"postgresql", "sqlite", *MYSQL_DIALECTS})
"""Where per-key commit order is enforced: PostgreSQL takes a per-key advisory lock in
`Outbox.add`, MySQL/MariaDB a row of the key-lock table; SQLite serialises every
write transaction."""


def _unsupported(dialect: str) -> str:
    return (
        f"the outbox supports {sorted(SUPPORTED_DIALECTS)}, not {dialect!r}: on it, two "
        "transactions writing events of one key could commit in the opposite order of their "
        "positions, and a relay would publish them out of order"
    )


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """How far behind the relays are; export these as gauges and alert on them.

    Attributes:
        pending: events committed but not yet acknowledged by the broker.
        oldest_pending_age: seconds since the oldest pending event was written
            (None when nothing is pending). The best single lag signal.
        dead: dead-lettered events waiting for an operator (``resilience outbox dead``).
        sent: acknowledged events still kept (``on_sent="mark"``) until purged.
    """

    pending: int
    oldest_pending_age: float | None
    dead: int
    sent: int


@dataclass(frozen=True, slots=True)
class DeadEvent:
    """A dead-lettered outbox row, as shown to an operator."""

    position: int
    message_id: str
    type: str
    key: str | None
    attempts: int
    last_error: str | None
    created_at: dt.datetime
    dead_at: dt.datetime


class Outbox:
    """Events written in the same database transaction as the business change.

    ``outbox.add(session, message)`` inserts a row through the caller's Session or
    Connection, so the event commits (or rolls back) with the order it describes;
    a `Relay` publishes committed rows afterwards. Publishing straight to the
    broker instead would either lose the event (crash after commit) or announce
    an order that never existed (rollback after publish).

    Args:
        table: a table from `outbox_table`, or a `MetaData` to create it in.
        name: the table name when *table* is a MetaData.
        router: computes the ``destination`` column (informational: the
            publisher routes); e.g. the same `TopicRouter` the publisher uses.
        codec: encodes payloads when the event is written (a payload that cannot
            be encoded fails the business transaction, not the relay, later).
        serialize_keys: on PostgreSQL (a transaction-scoped advisory lock) and
            MySQL/MariaDB (a row of the key-lock table), lock each key before
            inserting, so two transactions writing events for the same key
            commit in position order (see "ordering" in the docs). Turn it off
            only if a key's events never come from concurrent transactions.
        notify: on PostgreSQL, ``pg_notify`` the relay's channel (delivered at
            commit) so a listening relay wakes at once.
        capture_trace: stamp each message with the current W3C trace context.
    """

    __slots__ = ("_capture_trace", "_codec", "_notify", "_router", "_serialize_keys", "table")

    def __init__(
        self,
        table: sa.Table | sa.MetaData,
        *,
        name: str = DEFAULT_OUTBOX_TABLE,
        router: Router | None = None,
        codec: Codec | None = None,
        serialize_keys: bool = True,
        notify: bool = True,
        capture_trace: bool = True,
    ) -> None:
        sql = require("sqlalchemy", "sql")
        if isinstance(table, sql.MetaData):
            table = outbox_table(table, name)
        if not isinstance(table, sql.Table):
            raise ConfigurationError("table", "must be a sqlalchemy Table or MetaData")
        missing = {"position", "message_id", "key", "payload", "sent_at", "dead_at"} - set(
            table.c.keys()
        )
        if missing:
            raise ConfigurationError(
                "table", f"{table.name!r} is not an outbox table (missing {sorted(missing)})"
            )
        if router is not None and not callable(router):
            raise ConfigurationError("router", "must be callable(message) -> str")
        self.table: sa.Table = table
        self._router = router
        self._codec: Codec = codec if codec is not None else JsonCodec()
        self._serialize_keys = serialize_keys
        self._notify = notify
        self._capture_trace = capture_trace

    @property
    def codec(self) -> Codec:
        """The payload codec (the relay decodes with it)."""
        return self._codec

    @property
    def channel(self) -> str:
        """The PostgreSQL NOTIFY channel relays listen on."""
        return str(self.table.name)

    @property
    def lease_table(self) -> sa.Table:
        """The lease table used by relays in lease mode (created next to the outbox)."""
        return lease_table(self.table.metadata, str(self.table.name))

    @property
    def key_lock_table(self) -> sa.Table:
        """The per-key lock table `add` uses on MySQL/MariaDB (created next to the outbox)."""
        return key_lock_table(self.table.metadata, str(self.table.name))

    def create_tables(self, bind: sa.Engine | sa.Connection) -> None:
        """Create the outbox, lease and key-lock tables if missing (tests and demos;
        use migrations, e.g. `ddl`, in production)."""
        tables = [self.table, self.lease_table]
        if bind.dialect.name in MYSQL_DIALECTS:
            tables.append(self.key_lock_table)
        self.table.metadata.create_all(bind, tables=tables)

    # ------------------------------------------------------------------ writing

    def add(self, conn: sa.Connection | Session, message: Message) -> None:
        """Write *message* in the caller's transaction; it is published after commit."""
        self.add_many(conn, (message,))

    def add_many(self, conn: sa.Connection | Session, messages: Iterable[Message]) -> None:
        """Write several messages in the caller's transaction, in the given order."""
        batch = list(messages)
        if not batch:
            return
        rows = [self._row(m) for m in batch]
        connection = connection_of(conn)
        dialect = connection.dialect.name
        if dialect == "postgresql":
            self._pg_prepare(connection, [r["key"] for r in rows])
        elif dialect in MYSQL_DIALECTS:
            if self._serialize_keys:
                self._mysql_lock_keys(connection, [r["key"] for r in rows])
        elif dialect not in SUPPORTED_DIALECTS:
            raise ConfigurationError("conn", _unsupported(dialect))
        connection.execute(self.table.insert(), rows)

    def _row(self, message: Message) -> dict[str, Any]:
        if not isinstance(message, Message):
            raise ConfigurationError("message", f"must be a Message, got {type(message).__name__}")
        headers = dict(message.headers)
        if self._capture_trace:
            from resilience.tracing import capture_context

            for name, value in capture_context().items():
                headers.setdefault(name, value)
        try:
            payload = self._codec.encode(message.payload)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                "payload", f"cannot be encoded as {self._codec.content_type}: {exc}"
            ) from exc
        destination = self._router(message) if self._router is not None else None
        return {
            "message_id": message.id,
            "type": message.type,
            "key": message.key,
            "destination": destination,
            "payload": payload,
            "headers": headers or None,
            "occurred_at": message.occurred_at,
            "created_at": _utcnow(),
            "attempts": 0,
        }

    def _pg_prepare(self, connection: sa.Connection, keys: Sequence[str | None]) -> None:
        sql = require("sqlalchemy", "sql")
        distinct = sorted({k for k in keys if k is not None})
        if self._serialize_keys and distinct:
            if len(distinct) > _MAX_KEY_LOCKS:
                # A bulk write: one exclusive outbox-wide lock instead of thousands of
                # per-key locks (which would exhaust max_locks_per_transaction).
                connection.execute(
                    sql.text("SELECT pg_advisory_xact_lock(hashtext(:all), 0)"),
                    {"all": self.channel + ":all"},
                )
            else:
                # Shared outbox-wide lock (excludes bulk writers), then the keys,
                # sorted so that two transactions cannot deadlock on them.
                connection.execute(
                    sql.text(
                        "SELECT pg_advisory_xact_lock_shared(hashtext(:all), 0), "
                        "(SELECT count(*) FROM (SELECT pg_advisory_xact_lock(hashtext(:ns), hashtext(k)) "
                        "FROM (SELECT k FROM unnest(CAST(:keys AS text[])) AS u(k) ORDER BY k) s) l)"
                    ),
                    {"all": self.channel + ":all", "ns": self.channel, "keys": distinct},
                )
        if self._notify:
            connection.execute(sql.text("SELECT pg_notify(:ch, '')"), {"ch": self.channel})

    def _mysql_lock_keys(self, connection: sa.Connection, keys: Sequence[str | None]) -> None:
        """Lock the key-lock rows of *keys* until the caller's transaction ends.

        InnoDB row locks are transactional, unlike ``GET_LOCK``: they go away at
        commit or rollback, which the caller (not the outbox) decides. Buckets
        are locked in ascending order, so two writers cannot deadlock on them.
        """
        sql = require("sqlalchemy", "sql")
        buckets = sorted({zlib.crc32(k.encode()) % KEY_LOCK_BUCKETS for k in keys if k is not None})
        if not buckets:
            return
        locks = self.key_lock_table
        locked = connection.execute(
            sql.select(locks.c.bucket)
            .where(locks.c.bucket.in_(buckets))
            .order_by(locks.c.bucket)
            .with_for_update()
        ).all()
        if len(locked) != len(buckets):
            raise ConfigurationError(
                "table",
                f"{locks.name!r} is missing or not filled: create it with Outbox.create_tables, "
                "metadata.create_all or `resilience outbox ddl --dialect mysql`",
            )

    # ------------------------------------------------------------------ reading

    def decode(self, row: Any) -> Message:
        """Rebuild the `Message` stored in an outbox row."""
        occurred = _aware(row.occurred_at)
        assert occurred is not None
        return Message(
            type=row.type,
            payload=self._codec.decode(row.payload),
            key=row.key,
            id=row.message_id,
            headers=row.headers or {},
            occurred_at=occurred,
        )

    def stats(self, conn: sa.Connection | Session) -> OutboxStats:
        """Pending count, age of the oldest pending event, dead and kept-sent counts."""
        sql = require("sqlalchemy", "sql")
        t = self.table
        connection = connection_of(conn)
        pending_cond = sql.and_(t.c.sent_at.is_(None), t.c.dead_at.is_(None))
        row = connection.execute(
            sql.select(sql.func.count(), sql.func.min(t.c.created_at)).where(pending_cond)
        ).one()
        dead = connection.execute(
            sql.select(sql.func.count()).where(t.c.dead_at.is_not(None))
        ).scalar_one()
        sent = connection.execute(
            sql.select(sql.func.count()).where(t.c.sent_at.is_not(None))
        ).scalar_one()
        oldest = _aware(row[1])
        age = max((_utcnow() - oldest).total_seconds(), 0.0) if oldest is not None else None
        return OutboxStats(
            pending=int(row[0]), oldest_pending_age=age, dead=int(dead), sent=int(sent)
        )

    def dead(self, conn: sa.Connection | Session, *, limit: int = 100) -> list[DeadEvent]:
        """Dead-lettered events, oldest first."""
        sql = require("sqlalchemy", "sql")
        t = self.table
        rows = connection_of(conn).execute(
            sql.select(
                t.c.position,
                t.c.message_id,
                t.c.type,
                t.c.key,
                t.c.attempts,
                t.c.last_error,
                t.c.created_at,
                t.c.dead_at,
            )
            .where(t.c.dead_at.is_not(None))
            .order_by(t.c.position)
            .limit(limit)
        )
        return [
            DeadEvent(
                position=r.position,
                message_id=r.message_id,
                type=r.type,
                key=r.key,
                attempts=r.attempts,
                last_error=r.last_error,
                created_at=_aware(r.created_at) or _utcnow(),
                dead_at=_aware(r.dead_at) or _utcnow(),
            )
            for r in rows
        ]

    def requeue(self, conn: sa.Connection | Session, message_ids: Sequence[str]) -> int:
        """Give dead-lettered events (by message id) a fresh set of attempts; returns how many.

        A requeued event keeps its position, so it is published before any later
        event of its key that is still pending.
        """
        sql = require("sqlalchemy", "sql")
        if not message_ids:
            return 0
        t = self.table
        result = connection_of(conn).execute(
            t.update()
            .where(t.c.message_id.in_(list(message_ids)), t.c.dead_at.is_not(None))
            .values(dead_at=None, attempts=0, available_at=None, last_error=sql.null())
        )
        return int(result.rowcount)

    def purge(
        self,
        engine: sa.Engine,
        *,
        older_than: dt.timedelta,
        dead: bool = False,
        batch_size: int = 1000,
        pause: float = 0.05,
    ) -> int:
        """Delete sent rows (and dead rows if *dead*) older than *older_than*.

        Deletes in transactions of at most *batch_size* rows with *pause*
        seconds between them, so a large purge never holds long locks or
        floods replication. Returns the number of rows deleted.
        """
        sql = require("sqlalchemy", "sql")
        if not 1 <= batch_size <= 100_000:
            raise ConfigurationError("batch_size", f"must be in 1..100000, got {batch_size!r}")
        if older_than < dt.timedelta(0):
            raise ConfigurationError("older_than", "must not be negative")
        t = self.table
        cutoff = _utcnow() - older_than
        condition = sql.and_(t.c.sent_at.is_not(None), t.c.sent_at < cutoff)
        if dead:
            condition = sql.or_(condition, sql.and_(t.c.dead_at.is_not(None), t.c.dead_at < cutoff))
        total = 0
        while True:
            with engine.begin() as conn:
                positions = (
                    conn.execute(
                        sql.select(t.c.position)
                        .where(condition)
                        .order_by(t.c.position)
                        .limit(batch_size)
                    )
                    .scalars()
                    .all()
                )
                if not positions:
                    return total
                conn.execute(t.delete().where(t.c.position.in_(positions)))
            total += len(positions)
            if len(positions) < batch_size:
                return total
            time.sleep(pause)

    def __repr__(self) -> str:
        return f"Outbox(table={self.table.name!r})"
