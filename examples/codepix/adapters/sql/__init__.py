"""Persistence adapter: SQLAlchemy repositories and unit of work (SQLite and PostgreSQL)."""

from .unit_of_work import (
    DESTINATION_HEADER,
    INBOX,
    OUTBOX,
    ROUTER,
    OutboxSink,
    SessionUnitOfWork,
    SqlInbox,
    SqlUnitOfWork,
    create_engine,
    create_schema,
    route_to_bank,
    unit_of_work_factory,
)

__all__ = [
    "DESTINATION_HEADER",
    "INBOX",
    "OUTBOX",
    "ROUTER",
    "OutboxSink",
    "SessionUnitOfWork",
    "SqlInbox",
    "SqlUnitOfWork",
    "create_engine",
    "create_schema",
    "route_to_bank",
    "unit_of_work_factory",
]
