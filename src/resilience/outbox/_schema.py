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
    "ddl",
    "inbox_table",
    "lease_table",
    "outbox_table",
]

DEFAULT_OUTBOX_TABLE: Final = "resilience_outbox"
DEFAULT_INBOX_TABLE: Final = "resilience_inbox"
_MAX_NAME: Final = 200


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

    The relay's small lease table (``<name>_lease``, see `lease_table`) is added
    to *metadata* too, so ``create_all`` and migration autogenerate include it.
    """
    _check_name(name)
    if name in metadata.tables:
        return metadata.tables[name]
    lease_table(metadata, name)
    sql = _sa()
    pending = sql.text("sent_at IS NULL AND dead_at IS NULL")
    unsent = sql.text("sent_at IS NULL")
    ts = sql.DateTime(timezone=True)
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
        sql.Column("payload", sql.LargeBinary(), nullable=False),
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
        ),
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
        sql.Column("expires_at", sql.Float(), nullable=False),
    )
    return table


def ddl(
    dialect: str, *, outbox: str = DEFAULT_OUTBOX_TABLE, inbox: str = DEFAULT_INBOX_TABLE
) -> str:
    """``CREATE TABLE`` / ``CREATE INDEX`` statements for *dialect*, for migration tools.

    Args:
        dialect: ``"postgresql"`` or ``"sqlite"`` (the two databases the relay is tested on).
        outbox: the outbox table name.
        inbox: the inbox table name.
    """
    sql = _sa()
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialects = {
        "postgresql": "sqlalchemy.dialects.postgresql",
        "sqlite": "sqlalchemy.dialects.sqlite",
    }
    if dialect not in dialects:
        raise ConfigurationError("dialect", f"must be one of {sorted(dialects)}, got {dialect!r}")
    module = require(dialects[dialect], "sql")
    engine_dialect = module.dialect()
    metadata = sql.MetaData()
    tables = [
        outbox_table(metadata, outbox),
        lease_table(metadata, outbox),
        inbox_table(metadata, inbox),
    ]
    statements: list[str] = []
    for table in tables:
        statements.append(str(CreateTable(table).compile(dialect=engine_dialect)).strip() + ";")
        statements.extend(
            str(CreateIndex(index).compile(dialect=engine_dialect)).strip() + ";"
            for index in sorted(table.indexes, key=lambda i: str(i.name))
        )
    return "\n\n".join(statements) + "\n"
