"""SQL store (SQLAlchemy 2): one upsert per claim, the database's clock, and transactions you share."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from resilience._errors import (
    ConfigurationError,
    IdempotencyLeaseLostError,
    IdempotencyRecordError,
)
from resilience._optional import require

from . import _core
from ._store import Claimed, ClaimOutcome, Completed, InProgress, Mismatch

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Engine, MetaData, Table

__all__ = ["SqlStore", "idempotency_table"]

DEFAULT_TABLE = "resilience_idempotency"

# How a renewal bounds its wait for a lock: (read the setting, set it to {}).
_WAIT_SETTINGS = {
    "mysql": ("SELECT @@innodb_lock_wait_timeout", "SET innodb_lock_wait_timeout = {}"),
    "sqlite": ("PRAGMA busy_timeout", "PRAGMA busy_timeout = {}"),
}


def idempotency_table(metadata: MetaData, name: str = DEFAULT_TABLE) -> Table:
    """Declare the records table on *metadata* (create it with ``metadata.create_all``
    or copy it into your migrations).

    Times are integers of milliseconds on the database's own clock. On
    MySQL/MariaDB the stored result is a ``LONGTEXT`` (``TEXT`` stops at 64 KB).
    """
    sa = require("sqlalchemy", "sql")
    from sqlalchemy.dialects.mysql import LONGTEXT

    table: Table = sa.Table(
        name,
        metadata,
        sa.Column("key_hash", sa.String(64), primary_key=True),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(1), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("lease_until", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
        sa.Column("result", sa.Text().with_variant(LONGTEXT(), "mysql"), nullable=True),
        sa.Column("checkpoints", sa.Text().with_variant(LONGTEXT(), "mysql"), nullable=False),
    )
    return table


class SqlStore:
    """Idempotency records in PostgreSQL, SQLite or MySQL/MariaDB, judged by the database's clock.

    Each operation is one statement in autocommit mode (one round trip): the
    claim is an ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` that takes an
    expired or released record over and otherwise returns it unchanged. MySQL
    and MariaDB have no ``RETURNING`` for an upsert, so there the claim is an
    ``INSERT … ON DUPLICATE KEY UPDATE`` and a ``SELECT … FOR UPDATE`` of the
    row in one short transaction.

    ``in_session(session)`` gives a view that writes through *your*
    ``Session``/``Connection`` without committing, so completing the key (or
    recording a checkpoint) commits with the business rows and outbox events,
    or rolls back with them.

    A renewal (the heartbeat) waits at most *renew_timeout* seconds for a lock
    or for the statement (PostgreSQL ``lock_timeout`` and ``statement_timeout``,
    SQLite's busy timeout) and then fails, to be retried on the next beat: the
    heartbeat thread is shared, and a renewal stuck behind a lock would stop
    every other call's renewals too.
    """

    __slots__ = ("_bind", "_dialect", "_sa", "engine", "renew_timeout", "table")

    def __init__(
        self, engine: Engine, table: Table | None = None, *, renew_timeout: float = 5.0
    ) -> None:
        self._sa = require("sqlalchemy", "sql")
        if not isinstance(engine, self._sa.Engine):
            raise ConfigurationError("engine", "must be a sqlalchemy.Engine")
        self._dialect = engine.dialect.name
        if self._dialect not in {"postgresql", "sqlite", "mysql"}:
            raise ConfigurationError(
                "engine",
                f"dialect {self._dialect!r} is not supported (postgresql, sqlite, mysql/mariadb)",
            )
        _core.positive("renew_timeout", renew_timeout)
        self.renew_timeout = renew_timeout
        self.engine = engine
        self.table = table if table is not None else idempotency_table(self._sa.MetaData())
        self._bind: Any = None

    def create_table(self) -> None:
        """Create the table if it does not exist (tests and quick starts; prefer migrations)."""
        self.table.create(self.engine, checkfirst=True)

    def in_session(self, session: Any) -> SqlStore:
        """A view of this store whose writes join *session*'s transaction (no commit)."""
        view = object.__new__(SqlStore)
        view._sa, view._dialect, view.engine, view.table, view.renew_timeout = (
            self._sa,
            self._dialect,
            self.engine,
            self.table,
            self.renew_timeout,
        )
        view._bind = session
        return view

    # ------------------------------------------------------------------ SQL pieces

    def _now(self) -> ColumnElement[Any]:
        sa = self._sa
        if self._dialect == "postgresql":
            expr = sa.func.extract("epoch", sa.func.clock_timestamp()) * 1000
        elif self._dialect == "mysql":
            expr = sa.func.unix_timestamp(sa.func.now(3)) * 1000
        else:
            expr = (sa.func.julianday("now") - 2440587.5) * 86400000.0
        return sa.cast(expr, sa.BigInteger)  # type: ignore[no-any-return]

    def _execute(self, stmt: Any) -> Any:
        if self._bind is not None:
            return self._bind.execute(stmt)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            result = conn.execute(stmt)
            if result.returns_rows:
                return _Buffered(result.all(), result.rowcount)
            return _Buffered([], result.rowcount)

    def _execute_bounded(self, stmt: Any, timeout: float) -> Any:
        """*stmt* in its own short transaction that waits at most *timeout* seconds."""
        if self._bind is not None:  # the caller's transaction, the caller's limits
            return self._bind.execute(stmt)
        ms = max(1, int(timeout * 1000))
        with self.engine.connect() as conn:
            if self._dialect == "postgresql":
                conn.exec_driver_sql(
                    f"SET LOCAL lock_timeout = {ms}; SET LOCAL statement_timeout = {ms}"
                )
                result = conn.execute(stmt)
            else:  # a session setting, given back before the connection returns to the pool
                read, write = _WAIT_SETTINGS[self._dialect]
                limit = max(1, round(timeout)) if self._dialect == "mysql" else ms  # mysql: seconds
                before = int(conn.exec_driver_sql(read).scalar())
                conn.exec_driver_sql(write.format(limit))
                try:
                    result = conn.execute(stmt)
                finally:
                    conn.exec_driver_sql(write.format(before))
            conn.commit()
            return _Buffered([], result.rowcount)

    @staticmethod
    def _hash(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def _owned(self, key: str, token: str) -> ColumnElement[bool]:
        c = self.table.c
        return self._sa.and_(  # type: ignore[no-any-return]
            c.key_hash == self._hash(key), c.token == token, c.state == "p"
        )

    def _update(self, key: str, token: str, *, timeout: float | None = None, **values: Any) -> None:
        stmt = self.table.update().where(self._owned(key, token)).values(**values)
        result = self._execute(stmt) if timeout is None else self._execute_bounded(stmt, timeout)
        if result.rowcount != 1:
            raise IdempotencyLeaseLostError(key)

    # ------------------------------------------------------------------ operations

    def claim(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        sa = self._sa
        if self._dialect == "mysql":
            return self._claim_mysql(key, fingerprint, token, lease_ttl, ttl)
        insert: Any
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        c = self.table.c
        now = self._now()
        ins = insert(self.table).values(**self._new_row(key, fingerprint, token, lease_ttl, ttl))
        ex = ins.excluded
        fresh, takeover = self._takeover(ex.fingerprint)
        stmt = ins.on_conflict_do_update(
            index_elements=[c.key_hash],
            set_={
                "token": sa.case((takeover, ex.token), else_=c.token),
                "state": sa.case((takeover, "p"), else_=c.state),
                "fingerprint": sa.case((fresh, ex.fingerprint), else_=c.fingerprint),
                "lease_until": sa.case((takeover, ex.lease_until), else_=c.lease_until),
                "expires_at": sa.case(
                    (fresh, ex.expires_at),
                    (sa.and_(takeover, c.expires_at < ex.lease_until), ex.lease_until),
                    else_=c.expires_at,
                ),
                "result": sa.case((fresh, None), else_=c.result),
                "checkpoints": sa.case((fresh, "{}"), else_=c.checkpoints),
            },
        ).returning(c.fingerprint, c.state, c.token, c.result, c.checkpoints, (c.lease_until - now))
        row = self._execute(stmt).one()
        return self._outcome(key, fingerprint, token, row)

    def _new_row(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> dict[str, Any]:
        now = self._now()
        lease_ms, ttl_ms = _ms(lease_ttl), _ms(ttl)
        return {
            "key_hash": self._hash(key),
            "key": key,
            "fingerprint": fingerprint,
            "state": "p",
            "token": token,
            "lease_until": now + lease_ms,
            "expires_at": now + max(ttl_ms, lease_ms),
            "result": None,
            "checkpoints": "{}",
        }

    def _takeover(self, new_fingerprint: Any) -> tuple[Any, Any]:
        """``(fresh, takeover)``: start the record over / hand it to the new claimer."""
        sa, c, now = self._sa, self.table.c, self._now()
        fresh = sa.or_(c.expires_at <= now, sa.and_(c.state == "r", c.checkpoints == "{}"))
        takeover = sa.or_(
            fresh,
            sa.and_(
                c.fingerprint == new_fingerprint,
                sa.or_(c.state == "r", sa.and_(c.state == "p", c.lease_until <= now)),
            ),
        )
        return fresh, takeover

    def _claim_mysql(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        """The upsert of `claim` for MySQL/MariaDB, then the row, in one transaction.

        MySQL applies ``ON DUPLICATE KEY UPDATE`` assignments left to right, each
        seeing the columns already assigned; the order below keeps every
        condition reading original values, and once ``token`` is assigned it
        witnesses the takeover (tokens are unique per claim).
        """
        from sqlalchemy.dialects.mysql import insert

        sa, c = self._sa, self.table.c
        ins = insert(self.table).values(**self._new_row(key, fingerprint, token, lease_ttl, ttl))
        new = ins.inserted
        fresh, takeover = self._takeover(new.fingerprint)
        taken = c.token == new.token
        stmt = ins.on_duplicate_key_update(
            [
                ("result", sa.case((fresh, None), else_=c.result)),
                ("token", sa.case((takeover, new.token), else_=c.token)),
                ("fingerprint", sa.case((fresh, new.fingerprint), else_=c.fingerprint)),
                ("checkpoints", sa.case((fresh, "{}"), else_=c.checkpoints)),
                (
                    "expires_at",
                    sa.case(
                        (fresh, new.expires_at),
                        (sa.and_(taken, c.expires_at < new.lease_until), new.lease_until),
                        else_=c.expires_at,
                    ),
                ),
                ("lease_until", sa.case((taken, new.lease_until), else_=c.lease_until)),
                ("state", sa.case((taken, "p"), else_=c.state)),
            ]
        )
        read = (
            sa.select(
                c.fingerprint,
                c.state,
                c.token,
                c.result,
                c.checkpoints,
                (c.lease_until - self._now()),
            )
            .where(c.key_hash == self._hash(key))
            .with_for_update()
        )
        if self._bind is not None:
            self._bind.execute(stmt)
            row = self._bind.execute(read).one()
        else:
            with self.engine.begin() as conn:
                conn.execute(stmt)
                row = conn.execute(read).one()
        return self._outcome(key, fingerprint, token, row)

    def _outcome(self, key: str, fingerprint: str, token: str, row: Any) -> ClaimOutcome:
        fp, state, owner, result, checkpoints, remaining = row
        if state == "p" and owner == token:
            try:
                loaded = json.loads(checkpoints)
            except (TypeError, ValueError) as exc:
                raise IdempotencyRecordError(key, f"corrupted checkpoints for key {key!r}") from exc
            if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
                raise IdempotencyRecordError(key, f"corrupted checkpoints for key {key!r}")
            return Claimed(token, loaded)
        if state not in {"p", "r", "d"} or (state == "d" and not isinstance(result, str)):
            raise IdempotencyRecordError(
                key, f"stored record for idempotency key {key!r} is corrupted (state {state!r})"
            )
        if fp != fingerprint:
            return Mismatch()
        if state == "d":
            return Completed(result)
        if state == "p":
            return InProgress(max(0, int(remaining)) / 1000)
        raise IdempotencyRecordError(key, f"released record for key {key!r} was not taken over")

    def complete(self, key: str, token: str, payload: str, ttl: float) -> None:
        self._update(
            key,
            token,
            state="d",
            result=payload,
            checkpoints="{}",
            expires_at=self._now() + _ms(ttl),
        )

    def release(self, key: str, token: str) -> None:
        self._update(key, token, state="r", lease_until=0)

    def renew(self, key: str, token: str, lease_ttl: float) -> None:
        sa, c = self._sa, self.table.c
        until = self._now() + _ms(lease_ttl)
        self._update(
            key,
            token,
            timeout=min(self.renew_timeout, lease_ttl / 3),
            lease_until=until,
            expires_at=sa.case((c.expires_at < until, until), else_=c.expires_at),
        )

    def checkpoint(self, key: str, token: str, name: str, data: str) -> None:
        sa, c = self._sa, self.table.c
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            merged: Any = sa.cast(
                sa.cast(c.checkpoints, JSONB).op("||")(sa.func.jsonb_build_object(name, data)),
                sa.Text,
            )
        elif self._dialect == "mysql":
            merged = sa.func.json_merge_patch(c.checkpoints, sa.func.json_object(name, data))
        else:
            merged = sa.func.json_patch(c.checkpoints, sa.func.json_object(name, data))
        self._update(key, token, checkpoints=merged)

    def purge_expired(self, batch_size: int = 1000) -> int:
        """Delete expired records in batches of *batch_size*; returns how many.

        Run it from cron or ``resilience idempotency purge``; batches keep
        each transaction short so it never blocks live claims for long.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError("batch_size", "must be a positive integer")
        sa, c = self._sa, self.table.c
        total = 0
        while True:
            if self._dialect == "mysql":  # no LIMIT inside IN (…) there; DELETE takes one
                stmt = (
                    self.table.delete()
                    .where(c.expires_at <= self._now())
                    .with_dialect_options(mysql_limit=batch_size)
                )
            else:
                doomed = sa.select(c.key_hash).where(c.expires_at <= self._now()).limit(batch_size)
                stmt = self.table.delete().where(c.key_hash.in_(doomed.scalar_subquery()))
            deleted = int(self._execute(stmt).rowcount)
            total += deleted
            if deleted < batch_size:
                return total

    def __repr__(self) -> str:
        return f"SqlStore(table={self.table.name!r}, dialect={self._dialect!r})"


class _Buffered:
    """Rows fetched before the connection went back to the pool."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise IdempotencyRecordError("", f"expected one row, got {len(self._rows)}")
        return self._rows[0]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
