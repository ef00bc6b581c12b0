"""The inbox: at-least-once delivery in, exactly-once effects out."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from resilience._errors import ConfigurationError, IdempotencyInProgressError
from resilience._optional import require
from resilience.messaging._message import Message

from ._outbox import connection_of
from ._schema import DEFAULT_INBOX_TABLE, inbox_table

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

__all__ = ["Inbox", "RedisInbox"]

T = TypeVar("T")
_MAX_CONSUMER: Final = 200

# Release the processing lease only if we still own it (the token matches).
_RELEASE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _check_consumer(consumer: str) -> None:
    if not isinstance(consumer, str) or not consumer or len(consumer) > _MAX_CONSUMER:
        raise ConfigurationError(
            "consumer", f"must be a non-empty string of at most {_MAX_CONSUMER} characters"
        )


class Inbox:
    """Records which messages a consumer has processed, in the consumer's own transaction.

    Brokers deliver at least once: after a crash or a rebalance the same message
    comes again. `Inbox.handler` inserts ``(consumer, message_id)`` and runs your
    handler in ONE database transaction. A duplicate conflicts on the primary key
    and is skipped; a handler that raises rolls back the inbox row too, so the
    redelivery runs it again. The effect is applied exactly once.

    Args:
        table: a table from `inbox_table`, or a `MetaData` to create it in.
        name: the table name when *table* is a MetaData.
    """

    __slots__ = ("_statements", "table")

    def __init__(self, table: sa.Table | sa.MetaData, *, name: str = DEFAULT_INBOX_TABLE) -> None:
        sql = require("sqlalchemy", "sql")
        if isinstance(table, sql.MetaData):
            table = inbox_table(table, name)
        if not isinstance(table, sql.Table) or {"consumer", "message_id", "received_at"} - set(
            table.c.keys()
        ):
            raise ConfigurationError("table", "must be an inbox table (see inbox_table)")
        self.table: sa.Table = table
        self._statements: dict[str, Any] = {}

    def create_table(self, bind: sa.Engine | sa.Connection) -> None:
        """Create the inbox table if missing (tests and demos; use migrations in production)."""
        self.table.metadata.create_all(bind, tables=[self.table])

    def record(self, conn: sa.Connection | Session, consumer: str, message_id: str) -> bool:
        """Insert ``(consumer, message_id)`` in the caller's transaction.

        Returns True the first time, False for a duplicate. On PostgreSQL a
        concurrent duplicate waits for the first transaction: False if it
        commits, True if it rolls back (then this one does the work).
        """
        _check_consumer(consumer)
        connection = connection_of(conn)
        values = {
            "consumer": consumer,
            "message_id": message_id,
            "received_at": dt.datetime.now(dt.UTC),
        }
        dialect = connection.dialect.name
        if dialect in {"postgresql", "sqlite"}:
            # Built once per dialect (values come as parameters): a handler calls
            # this per message, and building a statement costs more than running it.
            statement = self._statements.get(dialect)
            if statement is None:
                module = require(f"sqlalchemy.dialects.{dialect}", "sql")
                statement = self._statements[dialect] = (
                    module.insert(self.table)
                    .on_conflict_do_nothing()
                    .returning(self.table.c.message_id)
                )
            return connection.execute(statement, values).first() is not None
        sql = require("sqlalchemy", "sql")
        try:
            with connection.begin_nested():
                connection.execute(self.table.insert().values(values))
        except sql.exc.IntegrityError:
            return False
        return True

    def record_many(
        self, conn: sa.Connection | Session, consumer: str, message_ids: Sequence[str]
    ) -> set[str]:
        """Insert many ids in one statement; returns those seen for the first time."""
        _check_consumer(consumer)
        # Sorted: two consumers inserting overlapping batches take the unique-index
        # locks in the same order, so they wait for each other instead of deadlocking.
        unique = sorted(set(message_ids))
        if not unique:
            return set()
        connection = connection_of(conn)
        dialect = connection.dialect.name
        now = dt.datetime.now(dt.UTC)
        if dialect == "postgresql":
            # One statement with one array parameter, whatever the batch size: the
            # compiled form is cached, and the server parses one small statement.
            rows = connection.execute(
                self._pg_record_many(),
                {"consumer": consumer, "ids": unique, "now": now},
            )
            return set(rows.scalars().all())
        if dialect != "sqlite":
            return {m for m in unique if self.record(connection, consumer, m)}
        module = require(f"sqlalchemy.dialects.{dialect}", "sql")
        stmt = (
            module.insert(self.table)
            .values([{"consumer": consumer, "message_id": m, "received_at": now} for m in unique])
            .on_conflict_do_nothing()
            .returning(self.table.c.message_id)
        )
        return set(connection.execute(stmt).scalars().all())

    def _pg_record_many(self) -> Any:
        statement = self._statements.get("pg_record_many")
        if statement is None:
            sql = require("sqlalchemy", "sql")
            postgresql = require("sqlalchemy.dialects.postgresql", "sql")
            t = self.table
            ids = sql.func.unnest(sql.bindparam("ids", type_=postgresql.ARRAY(t.c.message_id.type)))
            source = sql.select(
                sql.bindparam("consumer", type_=t.c.consumer.type),
                ids,
                sql.bindparam("now", type_=t.c.received_at.type),
            )
            statement = (
                postgresql.insert(t)
                .from_select(["consumer", "message_id", "received_at"], source)
                .on_conflict_do_nothing()
                .returning(t.c.message_id)
            )
            self._statements["pg_record_many"] = statement
        return statement

    def seen(self, conn: sa.Connection | Session, consumer: str, message_id: str) -> bool:
        """Whether *consumer* has already processed *message_id*."""
        sql = require("sqlalchemy", "sql")
        t = self.table
        row = (
            connection_of(conn)
            .execute(
                sql.select(t.c.message_id).where(
                    t.c.consumer == consumer, t.c.message_id == message_id
                )
            )
            .first()
        )
        return row is not None

    def handler(
        self,
        *,
        consumer: str,
        sessionmaker: Callable[[], Session],
        fn: Callable[[Session, Message], object],
    ) -> Callable[[Message], bool]:
        """Wrap *fn(session, message)* so each message's effect happens exactly once.

        The returned ``handler(message)`` plugs into a consumer loop. It opens a
        session, records the message, calls *fn* with the session, and commits,
        all in one transaction; *fn* may also ``outbox.add(session, ...)`` so
        consuming, changing state and emitting follow-up events are atomic.
        It returns True when *fn* ran, False for a duplicate. Exceptions from
        *fn* roll everything back and propagate (the consumer retries later).
        """
        _check_consumer(consumer)
        if not callable(fn):
            raise ConfigurationError("fn", "must be callable(session, message)")
        if not callable(sessionmaker):
            raise ConfigurationError("sessionmaker", "must be a callable returning a Session")

        def handle(message: Message) -> bool:
            with sessionmaker() as session, session.begin():
                if not self.record(session, consumer, message.id):
                    return False
                fn(session, message)
                return True

        handle.__name__ = f"inbox_handler_{consumer}"
        return handle

    def batch_handler(
        self,
        *,
        consumer: str,
        sessionmaker: Callable[[], Session],
        fn: Callable[[Session, Message], object] | None = None,
        batch_fn: Callable[[Session, list[Message]], object] | None = None,
    ) -> Callable[[Sequence[Message]], int]:
        """Like `handler`, for a whole batch in ONE transaction (one round trip for the dedup).

        The returned ``handle(messages)`` records every id with one multi-row
        ``INSERT … ON CONFLICT DO NOTHING RETURNING``, then applies the effects of
        the messages seen for the first time (in order, once even if the batch
        holds one twice), commits, and returns how many ran. Give either *fn*
        (called per fresh message) or *batch_fn* (called once with the list of
        fresh messages, so the business write can be one bulk statement too:
        the fastest way to consume). If it raises, the whole batch rolls back
        and the exception propagates: redeliver the batch.
        """
        _check_consumer(consumer)
        if (fn is None) == (batch_fn is None):
            raise ConfigurationError("fn", "give exactly one of fn(session, message) or batch_fn")
        if not callable(fn if fn is not None else batch_fn):
            raise ConfigurationError(
                "fn" if fn is not None else "batch_fn", "must be callable(session, ...)"
            )

        def handle(messages: Sequence[Message]) -> int:
            with sessionmaker() as session, session.begin():
                fresh_ids = self.record_many(session, consumer, [m.id for m in messages])
                fresh: list[Message] = []
                for message in messages:
                    if message.id in fresh_ids:
                        fresh_ids.discard(message.id)
                        fresh.append(message)
                if fn is not None:
                    for message in fresh:
                        fn(session, message)
                elif fresh:
                    assert batch_fn is not None
                    batch_fn(session, fresh)
            return len(fresh)

        handle.__name__ = f"inbox_batch_handler_{consumer}"
        return handle

    def purge_older_than(
        self,
        engine: sa.Engine,
        age: dt.timedelta,
        *,
        consumer: str | None = None,
        batch_size: int = 1000,
        pause: float = 0.05,
    ) -> int:
        """Forget processed ids older than *age*, in small transactions; returns how many.

        Keep *age* well above the longest time a duplicate can arrive (broker
        retention plus the longest consumer outage): a duplicate older than the
        window would be applied again.
        """
        sql = require("sqlalchemy", "sql")
        if age < dt.timedelta(0):
            raise ConfigurationError("age", "must not be negative")
        if not 1 <= batch_size <= 100_000:
            raise ConfigurationError("batch_size", f"must be in 1..100000, got {batch_size!r}")
        t = self.table
        cutoff = dt.datetime.now(dt.UTC) - age
        conditions = [t.c.received_at < cutoff]
        if consumer is not None:
            conditions.append(t.c.consumer == consumer)
        total = 0
        while True:
            with engine.begin() as conn:
                keys = conn.execute(
                    sql.select(t.c.consumer, t.c.message_id).where(*conditions).limit(batch_size)
                ).all()
                if not keys:
                    return total
                conn.execute(
                    t.delete().where(
                        sql.tuple_(t.c.consumer, t.c.message_id).in_([tuple(k) for k in keys])
                    )
                )
            total += len(keys)
            if len(keys) < batch_size:
                return total
            time.sleep(pause)

    def __repr__(self) -> str:
        return f"Inbox(table={self.table.name!r})"


class RedisInbox:
    """An inbox in Redis, for handlers whose effects are not in your SQL database.

    Weaker than `Inbox`: the mark and the effect cannot share a transaction. The
    handler takes a processing lease (``SET NX PX``), runs, then marks the message
    done for *retention*. A duplicate that arrives while the first is running gets
    `IdempotencyInProgressError` (retry later); one that arrives after is skipped.
    If the process dies after the effect but before the mark (or runs longer than
    *lease*), the lease expires and a redelivery applies the effect again: use it
    with effects that are themselves idempotent or tolerate a rare repeat.

    Args:
        client: a ``redis.Redis`` client.
        prefix: key prefix (e.g. ``"inbox:"``).
        lease: seconds a message may be processing before another worker may retry it.
        retention: seconds a processed id is remembered.
    """

    __slots__ = ("_client", "_lease_ms", "_prefix", "_release", "_retention_ms")

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "inbox:",
        lease: float = 30.0,
        retention: float = 7 * 86400.0,
    ) -> None:
        if not lease > 0:
            raise ConfigurationError("lease", f"must be > 0, got {lease!r}")
        if not retention >= lease:
            raise ConfigurationError("retention", f"must be >= lease, got {retention!r}")
        if not isinstance(prefix, str):
            raise ConfigurationError("prefix", "must be a string")
        self._client = client
        self._prefix = prefix
        self._lease_ms = int(lease * 1000)
        self._retention_ms = int(retention * 1000)
        self._release = client.register_script(_RELEASE_LUA)

    def _key(self, consumer: str, message_id: str) -> str:
        return f"{self._prefix}{consumer}:{message_id}"

    def handler(self, *, consumer: str, fn: Callable[[Message], T]) -> Callable[[Message], bool]:
        """Wrap *fn(message)*; the wrapper returns True when *fn* ran, False for a duplicate."""
        _check_consumer(consumer)
        if not callable(fn):
            raise ConfigurationError("fn", "must be callable(message)")

        def handle(message: Message) -> bool:
            key = self._key(consumer, message.id)
            token = f"processing:{uuid.uuid4().hex}"
            if not self._client.set(key, token, nx=True, px=self._lease_ms):
                state = self._client.get(key)
                if state in {b"done", "done"}:
                    return False
                ttl_ms = self._client.pttl(key)
                raise IdempotencyInProgressError(
                    key, retry_after=max(ttl_ms, 0) / 1000 if isinstance(ttl_ms, int) else 1.0
                )
            try:
                fn(message)
            except BaseException:
                self._release(keys=[key], args=[token])
                raise
            self._client.set(key, "done", px=self._retention_ms)
            return True

        handle.__name__ = f"redis_inbox_handler_{consumer}"
        return handle

    def seen(self, consumer: str, message_id: str) -> bool:
        """Whether *message_id* is marked done for *consumer*."""
        state = self._client.get(self._key(consumer, message_id))
        return state in (b"done", "done")
