"""``resilience outbox ...``: operate outboxes and run relays from the command line.

Registration imports nothing optional; each command imports SQLAlchemy (and the
broker client) only when it runs, so ``resilience --help`` works on a bare install.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Final

from resilience._errors import ConfigurationError, OutboxError
from resilience._optional import require

from ._schema import DEFAULT_INBOX_TABLE, DEFAULT_OUTBOX_TABLE

if TYPE_CHECKING:
    import sqlalchemy as sa

    from ._outbox import Outbox

__all__ = ["parse_duration", "register"]

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> dt.timedelta:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"250ms"`` or plain seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigurationError("duration", f"{text!r} is not like 7d, 12h, 30m, 45s or 250ms")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return dt.timedelta(seconds=value * _UNITS[unit])


def _duration_arg(text: str) -> dt.timedelta:
    try:
        return parse_duration(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 and ``mysql://`` / ``mariadb://`` PyMySQL here
    (the drivers the ``postgres`` and ``mysql`` extras install)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    for prefix in ("mysql://", "mariadb://"):
        if url.startswith(prefix):
            return prefix[:-3] + "+pymysql://" + url[len(prefix) :]
    return url


def _engine(args: argparse.Namespace) -> sa.Engine:
    sql = require("sqlalchemy", "sql")
    try:
        engine: sa.Engine = sql.create_engine(_normalise_url(args.url), pool_pre_ping=True)
    except sql.exc.ArgumentError as exc:
        raise ConfigurationError("--url", f"not a database URL: {exc}") from exc
    return engine


def _outbox(args: argparse.Namespace) -> Outbox:
    sql = require("sqlalchemy", "sql")
    from ._outbox import Outbox

    return Outbox(sql.MetaData(), name=args.table)


def _db_call(fn: Any, *args: Any) -> Any:
    sql = require("sqlalchemy", "sql")
    try:
        return fn(*args)
    except sql.exc.SQLAlchemyError as exc:
        raise OutboxError(f"database error: {str(exc).splitlines()[0]}") from exc


# --------------------------------------------------------------------------- commands


def _status(args: argparse.Namespace) -> int:
    engine, outbox = _engine(args), _outbox(args)

    def read() -> Any:
        with engine.connect() as conn:
            return outbox.stats(conn)

    stats = _db_call(read)
    engine.dispose()
    data = {
        "table": args.table,
        "pending": stats.pending,
        "oldest_pending_age_seconds": stats.oldest_pending_age,
        "dead": stats.dead,
        "sent_kept": stats.sent,
    }
    if args.json:
        print(json.dumps(data))
    else:
        age = "-" if stats.oldest_pending_age is None else f"{stats.oldest_pending_age:.1f}s"
        print(f"table:               {args.table}")
        print(f"pending:             {stats.pending}")
        print(f"oldest pending age:  {age}")
        print(f"dead-lettered:       {stats.dead}")
        print(f"sent (kept):         {stats.sent}")
    return 0


def _dead(args: argparse.Namespace) -> int:
    engine, outbox = _engine(args), _outbox(args)

    def read() -> Any:
        with engine.connect() as conn:
            return outbox.dead(conn, limit=args.limit)

    rows = _db_call(read)
    engine.dispose()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "position": r.position,
                        "message_id": r.message_id,
                        "type": r.type,
                        "key": r.key,
                        "attempts": r.attempts,
                        "last_error": r.last_error,
                        "created_at": r.created_at.isoformat(),
                        "dead_at": r.dead_at.isoformat(),
                    }
                    for r in rows
                ]
            )
        )
        return 0
    if not rows:
        print("no dead-lettered events")
        return 0
    for r in rows:
        print(
            f"{r.message_id}  {r.type}  key={r.key}  attempts={r.attempts}  "
            f"dead_at={r.dead_at.isoformat()}  error={r.last_error}"
        )
    return 0


def _requeue(args: argparse.Namespace) -> int:
    engine, outbox = _engine(args), _outbox(args)

    def write() -> int:
        with engine.begin() as conn:
            return outbox.requeue(conn, args.ids)

    count = _db_call(write)
    engine.dispose()
    print(f"requeued {count} of {len(args.ids)} event(s)")
    return 0 if count == len(args.ids) else 1


def _purge(args: argparse.Namespace) -> int:
    engine, outbox = _engine(args), _outbox(args)
    count = _db_call(
        lambda: outbox.purge(
            engine, older_than=args.older_than, dead=args.dead, batch_size=args.batch_size
        )
    )
    engine.dispose()
    print(f"deleted {count} row(s)")
    return 0


def _ddl(args: argparse.Namespace) -> int:
    from ._schema import ddl

    dialect = args.dialect
    if dialect is None:
        if args.url is None:
            raise ConfigurationError("--dialect", "give --dialect or --url")
        sql = require("sqlalchemy", "sql")
        dialect = sql.make_url(_normalise_url(args.url)).get_backend_name()
    print(ddl(dialect, outbox=args.table, inbox=args.inbox_table), end="")
    return 0


def _publisher(args: argparse.Namespace) -> Any:
    from resilience.messaging import TopicRouter

    router = TopicRouter(default=args.topic)
    if args.kafka:
        from resilience.messaging import KafkaPublisher

        return KafkaPublisher(args.kafka, router=router, timeout=args.publish_timeout)
    from resilience.messaging import RedisStreamsPublisher

    redis = require("redis", "redis")
    return RedisStreamsPublisher(redis.Redis.from_url(args.redis), router=router)


def _relay(args: argparse.Namespace) -> int:
    import logging

    from resilience._telemetry import LoggingTelemetry

    from ._core import RelayOptions
    from ._relay import Relay

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    options = RelayOptions(
        name=args.name,
        batch_size=args.batch_size,
        max_attempts=args.max_attempts,
        on_sent=args.on_sent,
        listen=not args.no_listen,
        dead_letter_blocks_key=args.dead_letter_blocks_key,
    )
    engine, outbox = _engine(args), _outbox(args)
    publisher = _publisher(args)
    relay = Relay(engine, outbox, publisher, options=options, telemetry=LoggingTelemetry())
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        del frame
        print(f"resilience outbox relay: signal {signum}, finishing the batch", file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        relay.run_forever(stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        publisher.close()
        engine.dispose()
    return 0


# --------------------------------------------------------------------------- registration


def _common(parser: argparse.ArgumentParser, *, url_required: bool = True) -> None:
    parser.add_argument(
        "--url",
        required=url_required,
        help="SQLAlchemy database URL (postgresql://... uses psycopg 3; sqlite:///path.db)",
    )
    parser.add_argument(
        "--table",
        default=DEFAULT_OUTBOX_TABLE,
        help=f"outbox table (default {DEFAULT_OUTBOX_TABLE})",
    )


def _sub(subparsers: Any, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def register(subparsers: Any) -> None:
    """Add ``outbox`` and its subcommands to the ``resilience`` command."""
    outbox = subparsers.add_parser(
        "outbox",
        help="inspect outboxes, requeue dead letters, purge, run a relay, print DDL",
        description="Operate a transactional outbox.",
        epilog="example:\n  resilience outbox status --url postgresql://app@db/orders",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = outbox.add_subparsers(title="commands", metavar="COMMAND")
    outbox.set_defaults(handler=lambda args: (outbox.print_help(), 0)[1])

    p = _sub(
        commands,
        "status",
        "pending count, age of the oldest pending event, dead letters",
        "resilience outbox status --url postgresql://app@db/orders --json",
    )
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_status)

    p = _sub(
        commands,
        "dead",
        "list dead-lettered events with their last error",
        "resilience outbox dead --url postgresql://app@db/orders --limit 20",
    )
    _common(p)
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_dead)

    p = _sub(
        commands,
        "requeue",
        "give dead-lettered events (by message id) a fresh set of attempts",
        "resilience outbox requeue --url postgresql://app@db/orders 01890a5d-ac96-774b-bcce-b302099a8057",
    )
    _common(p)
    p.add_argument("ids", nargs="+", metavar="ID", help="message ids (see `outbox dead`)")
    p.set_defaults(handler=_requeue)

    p = _sub(
        commands,
        "purge",
        "delete sent (and optionally dead) rows older than a duration, in small batches",
        "resilience outbox purge --url postgresql://app@db/orders --older-than 7d",
    )
    _common(p)
    p.add_argument(
        "--older-than", type=_duration_arg, required=True, help="e.g. 7d, 12h, 30m (required)"
    )
    p.add_argument("--dead", action="store_true", help="also delete dead-lettered rows")
    p.add_argument("--batch-size", type=int, default=1000, help="rows per transaction")
    p.set_defaults(handler=_purge)

    p = _sub(
        commands,
        "ddl",
        "print CREATE TABLE / CREATE INDEX statements for your migration tool",
        "resilience outbox ddl --dialect postgresql > migrations/0042_outbox.sql",
    )
    _common(p, url_required=False)
    p.add_argument(
        "--dialect", choices=["postgresql", "sqlite", "mysql", "mariadb"], help="instead of --url"
    )
    p.add_argument(
        "--inbox-table",
        default=DEFAULT_INBOX_TABLE,
        help=f"inbox table (default {DEFAULT_INBOX_TABLE})",
    )
    p.set_defaults(handler=_ddl)

    p = _sub(
        commands,
        "relay",
        "publish committed events to the broker until SIGTERM/SIGINT",
        "resilience outbox relay --url postgresql://app@db/orders --kafka broker:9092 --topic 'orders.{type_prefix}'",
    )
    _common(p)
    broker = p.add_mutually_exclusive_group(required=True)
    broker.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers")
    broker.add_argument("--redis", metavar="URL", help="Redis URL (Redis Streams)")
    p.add_argument(
        "--topic",
        default="{type_prefix}",
        help="destination template: {type}, {type_prefix}, {type_suffix} (default {type_prefix})",
    )
    p.add_argument("--name", default="outbox-relay", help="relay name in logs and telemetry")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--max-attempts", type=int, default=10)
    p.add_argument("--on-sent", choices=["delete", "mark"], default="delete")
    p.add_argument("--publish-timeout", type=float, default=30.0, help="seconds per batch")
    p.add_argument("--no-listen", action="store_true", help="poll only (no LISTEN/NOTIFY)")
    p.add_argument(
        "--dead-letter-blocks-key",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold back a key's later events while an earlier one is dead-lettered (default: on)",
    )
    p.set_defaults(handler=_relay)
