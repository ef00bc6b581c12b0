"""Transactional outbox and inbox: events committed with the business change,
delivered at least once, applied once.

- `Outbox` writes events in the caller's database transaction.
- `Relay` publishes committed events to a broker, keeping per-key order,
  backing off, dead-lettering poison rows, several relays at once.
- `Inbox` (SQL) and `RedisInbox` make consumers apply each message once.

SQLAlchemy (extra ``sql``) is imported when these are first used, never by
``import resilience.outbox``.
"""

from ._core import Backoff, RelayOptions, plan_waves
from ._inbox import Inbox, RedisInbox
from ._outbox import DeadEvent, Outbox, OutboxStats
from ._relay import BatchResult, Relay
from ._schema import DEFAULT_INBOX_TABLE, DEFAULT_OUTBOX_TABLE, ddl, inbox_table, outbox_table

__all__ = [
    "DEFAULT_INBOX_TABLE",
    "DEFAULT_OUTBOX_TABLE",
    "Backoff",
    "BatchResult",
    "DeadEvent",
    "Inbox",
    "Outbox",
    "OutboxStats",
    "RedisInbox",
    "Relay",
    "RelayOptions",
    "ddl",
    "inbox_table",
    "outbox_table",
    "plan_waves",
]
