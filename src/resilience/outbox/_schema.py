"""Table definitions (SQLAlchemy Core) for the outbox, the inbox and the relay lease.

Imported on first use only: ``import resilience.outbox`` must not import SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from resilience._errors import ConfigurationError
from resilience._optional import require

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = [
    "DEFAULT_INBOX_TABLE",
    "DEFAULT_OUTBOX_TABLE",
    "KEY_LOCK_BUCKETS",
    "ddl",
    "inbox_table",
    "key_lock_table",
    "lease_table",
    "outbox_table",
]

DEFAULT_OUTBOX_TABLE: Final = "resilience_outbox"
DEFAULT_INBOX_TABLE: Final = "resilience_inbox"
_MAX_NAME: Final = 200
_MYSQL: Final = ("mysql", "mariadb")
KEY_LOCK_BUCKETS: Final = 1024
"""Rows of the MySQL/MariaDB key-lock table: a key locks row ``crc32(key) % 1024``."""


def _sa() -> Any:
    return require("sqlalchemy", "sql")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.replace("_", "").isalnum() or len(name) > 50:
        raise ConfigurationError(
            "name", f"must be letters, digits and underscores (at most 50), got {name!r}"
        )


def outbox_table(metadata: sa.MetaData, name: str = DEFAULT_OUTBOX_TABLE) -> sa.Table:
    """The outbox table, added to *metadata* (returned as is if already there).

    Columns: ``position`` (auto-increment, the publish order), ``message_id``
    (unique), ``type``, ``key``, ``destination``, ``payload`` (encoded bytes),
    ``headers`` (JSON, carries the trace context), ``occurred_at``, ``created_at``,
    ``attempts``, ``last_error``, ``available_at`` (NULL = now; set by backoff),
    ``sent_at`` (with ``on_sent="mark"``) and ``dead_at`` (dead-lettered).

    Partial indexes keep the relay's claim query fast however many sent or dead
    rows are kept: one on ``position`` over pending rows, one on ``(key,
    position)`` over unsent rows (the per-key ordering check).

    The relay's small lease table (``<name>_lease``, see `lease_table`) and the
    MySQL/MariaDB key-lock table (``<name>_key_locks``, see `key_lock_table`) are
    added to *metadata* too, so ``create_all`` and migration autogenerate include them.

    On MySQL/MariaDB the times keep microseconds (``DATETIME(6)``), the payload
    may be up to 4 GiB (``LONGBLOB``), and the indexes are not partial (the
    server has none).
    """
    _check_name(name)
    if name in metadata.tables:
        return metadata.tables[name]
    lease_table(metadata, name)
    key_lock_table(metadata, name)
    sql = _sa()
    mysql = require("sqlalchemy.dialects.mysql", "sql")
    pending = sql.text("sent_at IS NULL AND dead_at IS NULL")
    unsent = sql.text("sent_at IS NULL")
    ts = sql.DateTime(timezone=True)
    for dialect in _MYSQL:
        ts = ts.with_variant(mysql.DATETIME(fsp=6), dialect)
    table: sa.Table = sql.Table(
        name,
        metadata,
        sql.Column(
            "position",
            sql.BigInteger().with_variant(sql.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sql.Column("message_id", sql.String(_MAX_NAME), nullable=False, unique=True),
        sql.Column("type", sql.String(_MAX_NAME), nullable=False),
        sql.Column("key", sql.String(255), nullable=True),
        sql.Column("destination", sql.String(255), nullable=True),
        sql.Column(
            "payload",
            sql.LargeBinary()
            .with_variant(mysql.LONGBLOB(), "mysql")
            .with_variant(mysql.LONGBLOB(), "mariadb"),
            nullable=False,
        ),
        sql.Column("headers", sql.JSON(none_as_null=True), nullable=True),
        sql.Column("occurred_at", ts, nullable=False),
        sql.Column("created_at", ts, nullable=False),
        sql.Column("attempts", sql.Integer(), nullable=False, server_default="0"),
        sql.Column("last_error", sql.Text(), nullable=True),
        sql.Column("available_at", ts, nullable=True),
        sql.Column("sent_at", ts, nullable=True),
        sql.Column("dead_at", ts, nullable=True),
        sql.Index(
            f"ix_{name}_pending",
            "position",
            postgresql_where=pending,
            sqlite_where=pending,
        ).ddl_if(callable_=_partial_indexes),  # elsewhere the primary key does this job
        sql.Index(
            f"ix_{name}_key_unsent",
            "key",
            "position",
            postgresql_where=unsent,
            sqlite_where=unsent,
        ),
        sql.Index(f"ix_{name}_sent_at", "sent_at"),
        sql.Index(f"ix_{name}_dead_at", "dead_at"),
        # Positions must never be reused: a relay that lost its lease records
        # rows by position, and a reused one would be another, unpublished event.
        sqlite_autoincrement=True,
    )
    return table


def _partial_indexes(ddl: Any, target: Any, bind: Any, *, dialect: Any, **kw: Any) -> bool:
    return dialect.name not in _MYSQL


def inbox_table(metadata: sa.MetaData, name: str = DEFAULT_INBOX_TABLE) -> sa.Table:
    """The inbox table: one row per (consumer, message id) already processed.

    The primary key is what makes processing idempotent: a second insert of the
    same pair conflicts, and the duplicate is skipped. ``received_at`` drives
    retention (`Inbox.purge_older_than`).
    """
    _check_name(name)
    if name in metadata.tables:
        return metadata.tables[name]
    sql = _sa()
    table: sa.Table = sql.Table(
        name,
        metadata,
        sql.Column("consumer", sql.String(_MAX_NAME), primary_key=True),
        sql.Column("message_id", sql.String(_MAX_NAME), primary_key=True),
        sql.Column("received_at", sql.DateTime(timezone=True), nullable=False),
        sql.Index(f"ix_{name}_received_at", "received_at"),
    )
    return table


def lease_table(metadata: sa.MetaData, outbox_name: str = DEFAULT_OUTBOX_TABLE) -> sa.Table:
    """The relay lease (used on databases without SKIP LOCKED, e.g. SQLite).

    One row per outbox: the current holder and when its lease expires, in
    seconds since the epoch as measured by the *database* clock, so relays on
    hosts with skewed clocks still agree on who holds it.
    """
    _check_name(outbox_name)
    name = f"{outbox_name}_lease"
    if name in metadata.tables:
        return metadata.tables[name]
    sql = _sa()
    table: sa.Table = sql.Table(
        name,
        metadata,
        sql.Column("name", sql.String(_MAX_NAME), primary_key=True),
        sql.Column("holder", sql.String(_MAX_NAME), nullable=False),
        # Epoch seconds need a double: MySQL's FLOAT is single precision (2-minute steps).
        sql.Column("expires_at", sql.Float().with_variant(sql.Double(), *_MYSQL), nullable=False),
    )
    return table


def key_lock_table(metadata: sa.MetaData, outbox_name: str = DEFAULT_OUTBOX_TABLE) -> sa.Table:
    """Per-key ordering locks for MySQL/MariaDB: ``KEY_LOCK_BUCKETS`` rows, created full.

    MySQL has no transaction-scoped advisory lock, so `Outbox.add` locks the
    row ``crc32(key) % KEY_LOCK_BUCKETS`` (``SELECT … FOR UPDATE``) until the
    caller's transaction ends: two transactions writing events of one key then
    commit in position order. The rows are inserted when the table is created
    (``create_all`` and `ddl` both do it); unused on other databases.
    """
    _check_name(outbox_name)
    name = f"{outbox_name}_key_locks"
    if name in metadata.tables:
        return metadata.tables[name]
    sql = _sa()
    table: sa.Table = sql.Table(
        name,
        metadata,
        sql.Column("bucket", sql.Integer(), primary_key=True, autoincrement=False),
    )
    fill = sql.DDL(_fill_buckets_sql(name)).execute_if(dialect=_MYSQL)
    sql.event.listen(table, "after_create", fill)
    return table


def _fill_buckets_sql(name: str) -> str:
    # 32 x 32 rows: a recursive CTE of 1024 steps would pass MariaDB's default
    # max_recursive_iterations (1000).
    side = 32
    assert side * side == KEY_LOCK_BUCKETS
    return (
        f"INSERT INTO {name} (bucket) WITH RECURSIVE seq (n) AS "
        f"(SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < {side - 1}) "
        f"SELECT a.n * {side} + b.n FROM seq AS a CROSS JOIN seq AS b"
    )


def ddl(
    dialect: str, *, outbox: str = DEFAULT_OUTBOX_TABLE, inbox: str = DEFAULT_INBOX_TABLE
) -> str:
    """``CREATE TABLE`` / ``CREATE INDEX`` statements for *dialect*, for migration tools.

    Args:
        dialect: ``"postgresql"``, ``"sqlite"``, ``"mysql"`` or ``"mariadb"``.
        outbox: the outbox table name.
        inbox: the inbox table name.
    """
    sql = _sa()
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialects = {
        "postgresql": "sqlalchemy.dialects.postgresql",
        "sqlite": "sqlalchemy.dialects.sqlite",
        "mysql": "sqlalchemy.dialects.mysql",
        "mariadb": "sqlalchemy.dialects.mysql",
    }
    if dialect not in dialects:
        raise ConfigurationError("dialect", f"must be one of {sorted(dialects)}, got {dialect!r}")
    module = require(dialects[dialect], "sql")
    engine_dialect = module.dialect(is_mariadb=True) if dialect == "mariadb" else module.dialect()
    metadata = sql.MetaData()
    tables = [
        outbox_table(metadata, outbox),
        lease_table(metadata, outbox),
        inbox_table(metadata, inbox),
    ]
    if dialect in _MYSQL:
        tables.append(key_lock_table(metadata, outbox))
    statements: list[str] = []
    for table in tables:
        statements.append(str(CreateTable(table).compile(dialect=engine_dialect)).strip() + ";")
        statements.extend(
            str(CreateIndex(index).compile(dialect=engine_dialect)).strip() + ";"
            for index in sorted(table.indexes, key=lambda i: str(i.name))
            if dialect not in _MYSQL or not str(index.name).endswith("_pending")
        )
        if table.name.endswith("_key_locks"):
            statements.append(_fill_buckets_sql(str(table.name)) + ";")
    return "\n\n".join(statements) + "\n"
