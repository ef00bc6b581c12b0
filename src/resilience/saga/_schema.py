"""Table definitions (SQLAlchemy Core) for saga state, the saga log, timers and steps.

Imported on first use only: ``import resilience.saga`` must not import SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from resilience._errors import ConfigurationError
from resilience._optional import require

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["DEFAULT_SAGA_PREFIX", "SagaTables", "saga_tables"]

DEFAULT_SAGA_PREFIX: Final = "resilience_saga"
_ID: Final = 200


@dataclass(frozen=True, slots=True)
class SagaTables:
    """The four saga tables of one database (see `saga_tables`)."""

    instances: sa.Table
    log: sa.Table
    timers: sa.Table
    steps: sa.Table

    def all(self) -> list[sa.Table]:
        """Every table, in creation order."""
        return [self.instances, self.log, self.timers, self.steps]


def saga_tables(metadata: sa.MetaData, prefix: str = DEFAULT_SAGA_PREFIX) -> SagaTables:
    """Add (or find) the saga tables in *metadata*.

    - ``<prefix>``: one row per saga owned by this service: ``state``,
      ``version`` (the optimistic lock), ``data`` (JSON), timestamps.
    - ``<prefix>_log``: every event a saga saw here, with ``from_state``,
      ``to_state`` and the outcome (accepted / rejected / duplicate / ...).
    - ``<prefix>_timer``: persisted deadlines, fired by `SagaTimerScheduler`.
      ``fire_at`` is seconds since the epoch (by the database clock unless a
      clock is injected), so timers survive restarts and host clock skew.
    - ``<prefix>_step``: what each participant did per saga and step (``done``,
      ``compensated``, ``aborted``), so a compensation runs at most once, only
      after its step, and a step never runs after its compensation.
    """
    if not isinstance(prefix, str) or not prefix.replace("_", "").isalnum() or len(prefix) > 40:
        raise ConfigurationError(
            "prefix", f"must be letters, digits and underscores (at most 40), got {prefix!r}"
        )
    names = (prefix, f"{prefix}_log", f"{prefix}_timer", f"{prefix}_step")
    if all(n in metadata.tables for n in names):
        return SagaTables(*(metadata.tables[n] for n in names))
    sql: Any = require("sqlalchemy", "sql")
    ts = sql.DateTime(timezone=True)
    big = sql.BigInteger().with_variant(sql.Integer(), "sqlite")
    instances = sql.Table(
        names[0],
        metadata,
        sql.Column("saga_id", sql.String(_ID), primary_key=True),
        sql.Column("definition", sql.String(100), nullable=False),
        sql.Column("state", sql.String(100), nullable=False),
        sql.Column("version", sql.Integer(), nullable=False),
        sql.Column("data", sql.JSON(), nullable=True),
        sql.Column("created_at", ts, nullable=False),
        sql.Column("updated_at", ts, nullable=False),
        sql.Index(f"ix_{names[0]}_state", "definition", "state"),
    )
    log = sql.Table(
        names[1],
        metadata,
        sql.Column("id", big, primary_key=True, autoincrement=True),
        sql.Column("saga_id", sql.String(_ID), nullable=False),
        sql.Column("participant", sql.String(_ID), nullable=False),
        sql.Column("event_type", sql.String(_ID), nullable=False),
        sql.Column("message_id", sql.String(_ID), nullable=True),
        sql.Column("from_state", sql.String(100), nullable=True),
        sql.Column("to_state", sql.String(100), nullable=True),
        sql.Column("outcome", sql.String(20), nullable=False),
        sql.Column("detail", sql.Text(), nullable=True),
        sql.Column("trace_id", sql.String(64), nullable=True),
        sql.Column("at", ts, nullable=False),
        sql.Index(f"ix_{names[1]}_saga", "saga_id", "id"),
    )
    timers = sql.Table(
        names[2],
        metadata,
        sql.Column("id", big, primary_key=True, autoincrement=True),
        sql.Column("saga_id", sql.String(_ID), nullable=False),
        sql.Column("participant", sql.String(_ID), nullable=False),
        sql.Column("event_type", sql.String(_ID), nullable=False),
        sql.Column("fire_at", sql.Float(), nullable=False),
        sql.Column("attempts", sql.Integer(), nullable=False, server_default="0"),
        sql.Column("headers", sql.JSON(), nullable=True),
        sql.Column("created_at", ts, nullable=False),
        sql.Index(f"ix_{names[2]}_due", "fire_at"),
        sql.Index(f"ix_{names[2]}_saga", "saga_id"),
        # A fired timer's id becomes its message id in the inbox: ids must never be reused.
        sqlite_autoincrement=True,
    )
    steps = sql.Table(
        names[3],
        metadata,
        sql.Column("participant", sql.String(_ID), primary_key=True),
        sql.Column("saga_id", sql.String(_ID), primary_key=True),
        sql.Column("step", sql.String(_ID), primary_key=True),
        sql.Column("status", sql.String(20), nullable=False),
        sql.Column("updated_at", ts, nullable=False),
    )
    return SagaTables(instances, log, timers, steps)
