"""``resilience idempotency purge``: delete expired records from a SQL store.

Redis needs no purge (records carry native TTLs). Registration imports nothing
optional; SQLAlchemy is imported when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``idempotency`` command group to the ``resilience`` CLI."""
    group = subparsers.add_parser(
        "idempotency",
        help="operate idempotency records",
        description="Operate idempotency records kept in a SQL database (Redis expires its own).",
        epilog="example:\n  resilience idempotency purge --url postgresql://app@db/payments",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(title="idempotency commands", metavar="COMMAND")
    purge = commands.add_parser(
        "purge",
        help="delete expired idempotency records from a SQL database",
        description=(
            "Delete records whose result TTL has passed, in batches so the table is never"
            " locked for long. Run it from cron or a scheduler."
        ),
        epilog=(
            "examples:\n"
            "  resilience idempotency purge --url postgresql://app@db/payments\n"
            "  resilience idempotency purge --url sqlite:///payments.db --table my_keys"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    purge.add_argument("--url", required=True, help="SQLAlchemy database URL")
    purge.add_argument("--table", default="resilience_idempotency", help="records table name")
    purge.add_argument("--batch-size", type=int, default=1000, help="rows deleted per statement")
    purge.set_defaults(handler=_purge)
    group.set_defaults(handler=lambda _args: _help(group))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _purge(args: argparse.Namespace) -> int:
    from resilience._optional import require

    sa = require("sqlalchemy", "sql")
    from ._sql import SqlStore, idempotency_table

    engine = sa.create_engine(args.url)
    try:
        store = SqlStore(engine, idempotency_table(sa.MetaData(), name=args.table))
        deleted = store.purge_expired(batch_size=args.batch_size)
    finally:
        engine.dispose()
    print(f"purged {deleted} expired idempotency records from {args.table}")
    return 0
