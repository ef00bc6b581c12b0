"""``resilience saga show ID --url DBURL``: one saga's state, log, steps and timers.

Registration imports nothing optional; SQLAlchemy loads inside the handler.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from ._schema import DEFAULT_SAGA_PREFIX

__all__ = ["register"]


def _show(args: argparse.Namespace) -> int:
    from resilience._optional import require

    from ._store import SagaStore

    sql = require("sqlalchemy", "sql")
    url = str(args.url)
    if url.startswith("postgresql://"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sql.create_engine(url)
    try:
        store = SagaStore(sql.MetaData(), prefix=args.prefix)
        with engine.connect() as conn:
            instance = store.get(conn, args.saga_id)
            history = store.history(conn, args.saga_id)
            timers = store.timers(conn, args.saga_id)
            steps = conn.execute(
                sql.select(store.tables.steps).where(store.tables.steps.c.saga_id == args.saga_id)
            ).all()
    finally:
        engine.dispose()
    if instance is None and not history and not steps:
        print(f"saga {args.saga_id!r}: not found in this database")
        return 1
    if args.json:
        doc: dict[str, Any] = {
            "saga_id": args.saga_id,
            "state": instance.state if instance else None,
            "version": instance.version if instance else None,
            "definition": instance.definition if instance else None,
            "data": instance.data if instance else None,
            "log": [
                {
                    "at": e.at.isoformat(),
                    "participant": e.participant,
                    "event": e.event_type,
                    "message_id": e.message_id,
                    "from": e.from_state,
                    "to": e.to_state,
                    "outcome": e.outcome,
                    "detail": e.detail,
                    "trace_id": e.trace_id,
                }
                for e in history
            ],
            "steps": [
                {"participant": s.participant, "step": s.step, "status": s.status} for s in steps
            ],
            "timers": [{"event": t.event_type, "fire_at": t.fire_at} for t in timers],
        }
        print(json.dumps(doc, indent=2))
        return 0
    if instance is not None:
        print(
            f"saga {instance.saga_id} ({instance.definition}): {instance.state} "
            f"(version {instance.version})"
        )
    else:
        print(f"saga {args.saga_id} (participant records only)")
    for e in history:
        move = f"{e.from_state or '-'} -> {e.to_state or '-'}"
        detail = f"  [{e.detail}]" if e.detail else ""
        print(
            f"  {e.at:%Y-%m-%d %H:%M:%S.%f} {e.participant:<12} {e.event_type:<22} "
            f"{e.outcome:<9} {move}{detail}"
        )
    for s in steps:
        print(f"  step {s.participant}/{s.step}: {s.status}")
    for t in timers:
        when = dt.datetime.fromtimestamp(t.fire_at, dt.UTC)
        print(f"  timer {t.event_type} due {when:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def register(subparsers: Any) -> None:
    """Add ``saga show`` to the ``resilience`` command."""
    saga = subparsers.add_parser(
        "saga",
        help="inspect sagas (state, log, steps, timers)",
        description="Inspect the sagas a service owns, in that service's database.",
        epilog="example:\n  resilience saga show 0193c0de-7f1e-7a3b-9d2c-5e8f00000001 --url sqlite:///orders.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    saga.set_defaults(handler=lambda args: (saga.print_help(), 0)[1])
    commands = saga.add_subparsers(title="saga commands", metavar="COMMAND")
    show = commands.add_parser(
        "show",
        help="one saga's state, event log, steps and timers",
        description=(
            "Print one saga: its state and version, every event and transition in order"
            " (rejected ones included, with the reason), its steps and pending timers."
        ),
        epilog=(
            "examples:\n"
            "  resilience saga show ORDER_ID --url postgresql://app@db/orders\n"
            "  resilience saga show ORDER_ID --url sqlite:///orders.db --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("saga_id", metavar="ID")
    show.add_argument("--url", required=True, help="SQLAlchemy URL of the service's database")
    show.add_argument("--prefix", default=DEFAULT_SAGA_PREFIX, help="saga table prefix")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_show)
