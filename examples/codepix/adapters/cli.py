"""The command-line adapter, and the process entrypoint.

Two kinds of commands share one parser:

- operator commands (``bank add``, ``account add``, ``key register``,
  ``key find``) drive the *same* use cases as gRPC: a second driving adapter,
  which is the proof that the application does not depend on its transport;
- service commands (``grpc``, ``kafka``, ``all``) run CodePix;
- ``bank --code 001 ...`` runs one bank (`examples.codepix.bank.process`);
- ``demo`` runs CodePix and two banks in one process (`examples.codepix.demo`).

Run ``python -m examples.codepix --help`` from the project root.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, Final, TextIO

from examples.codepix.adapters.sql import create_engine, create_schema, unit_of_work_factory
from examples.codepix.application import FindPixKey, OpenAccount, RegisterBank, RegisterPixKey
from examples.codepix.domain import CodePixError, PixKey

DEFAULT_DB: Final = "sqlite:///codepix.sqlite3"
EXIT_DOMAIN_ERROR: Final = 2
_log = logging.getLogger("codepix")


def _key_json(pix_key: PixKey) -> dict[str, Any]:
    account = pix_key.account
    return {
        "kind": str(pix_key.kind),
        "key": pix_key.key,
        "status": str(pix_key.status),
        "account": {
            "id": account.id,
            "number": account.number,
            "owner_name": account.owner_name,
            "bank": {"code": account.bank.code, "name": account.bank.name},
        },
    }


def _kafka_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _kafka_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--kafka",
        default=default,
        help="bootstrap servers HOST:PORT (default: an in-process broker, for local runs)",
    )
    parser.add_argument(
        "--kafka-config",
        type=_kafka_pair,
        action="append",
        metavar="KEY=VALUE",
        help="extra librdkafka setting, repeatable (e.g. session.timeout.ms=3000)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m examples.codepix`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.codepix", description="CodePix: Pix keys and transfers."
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy URL (default {DEFAULT_DB})")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, text in (
        ("grpc", "serve the key registry over gRPC"),
        ("kafka", "consume bank messages and relay the outbox"),
        ("all", "gRPC server, Kafka consumer and relay in one process"),
    ):
        service = commands.add_parser(name, help=text)
        service.add_argument("--grpc", default="127.0.0.1:50051", help="gRPC listen address")
        _kafka_arguments(service, None)

    bank_parser = commands.add_parser(
        "bank",
        help="run a bank (bank --code 001 ...), or admit one to CodePix (bank add CODE NAME)",
        description="Without a subcommand: run one bank (web UI, API, Kafka worker).",
    )
    from examples.codepix.bank.process import add_arguments

    add_arguments(bank_parser)
    _kafka_arguments(bank_parser, os.environ.get("KAFKA_BOOTSTRAP"))
    bank = bank_parser.add_subparsers(dest="action", required=False)
    bank_add = bank.add_parser("add", help="admit a bank")
    bank_add.add_argument("code")
    bank_add.add_argument("name")

    account = commands.add_parser("account", help="manage accounts").add_subparsers(
        dest="action", required=True
    )
    account_add = account.add_parser("add", help="make an account known")
    account_add.add_argument("bank_code")
    account_add.add_argument("account_id")
    account_add.add_argument("number")
    account_add.add_argument("owner_name")

    key = commands.add_parser("key", help="register and look up Pix keys").add_subparsers(
        dest="action", required=True
    )
    key_register = key.add_parser("register", help="bind a key to an account")
    key_register.add_argument("kind", help="cpf, email, phone or random")
    key_register.add_argument("key")
    key_register.add_argument("account_id")
    key_find = key.add_parser("find", help="look a key up")
    key_find.add_argument("kind")
    key_find.add_argument("key")

    demo = commands.add_parser("demo", help="CodePix and two banks in one process, with outages")
    demo.add_argument("--transfers", type=int, default=12, help="how many transfers to send")
    demo.add_argument("--workdir", default=None, help="keep the SQLite files here")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Run one command; operator commands print JSON and return 0, or 2 with the domain error."""
    args = build_parser().parse_args(argv)
    if args.command == "bank" and args.action is None:
        from examples.codepix.bank.process import run

        return run(args)
    if args.command == "demo":
        from examples.codepix.demo import run_demo

        return run_demo(transfers=args.transfers, workdir=args.workdir, out=out)
    engine = create_engine(args.db)
    try:
        create_schema(engine)
        uow = unit_of_work_factory(engine)
        if args.command in {"grpc", "kafka", "all"}:
            return _serve(args, engine, uow)
        try:
            result: dict[str, Any]
            if args.command == "bank":
                bank = RegisterBank(uow)(args.code, args.name)
                result = {"code": bank.code, "name": bank.name}
            elif args.command == "account":
                account = OpenAccount(uow)(
                    bank_code=args.bank_code,
                    account_id=args.account_id,
                    number=args.number,
                    owner_name=args.owner_name,
                )
                result = {"id": account.id, "bank_code": account.bank.code}
            elif args.action == "register":
                result = _key_json(RegisterPixKey(uow)(args.kind, args.key, args.account_id))
            else:
                result = _key_json(FindPixKey(uow)(args.kind, args.key))
        except CodePixError as exc:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), file=out)
            return EXIT_DOMAIN_ERROR
        print(json.dumps(result), file=out)
        return 0
    finally:
        engine.dispose()


def _serve(args: argparse.Namespace, engine: Any, uow: Any) -> int:
    from resilience.messaging import stop_on_signals

    from .grpc_api import build_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with stop_on_signals() as stop:
        worker = None
        if args.command in {"kafka", "all"}:
            worker = _worker(args, engine, uow).start()
            _log.info("consuming %s", ", ".join(_topics()))
        server = None
        health = None
        if args.command in {"grpc", "all"}:
            server, port, health = build_server(uow, args.grpc)
            server.start()
            _log.info("gRPC PixService listening on port %d", port)
        try:
            stop.wait()
        finally:
            if health is not None:
                health.enter_graceful_shutdown()
            if server is not None:
                server.stop(grace=5).wait()
            if worker is not None:
                worker.stop()
    return 0


def _topics() -> tuple[str, ...]:
    from .messaging import TOPICS

    return TOPICS


def _worker(args: argparse.Namespace, engine: Any, uow: Any) -> Any:
    from .messaging import GROUP, CodePixWorker, kafka_endpoints

    if args.kafka:
        subscribe, publisher = kafka_endpoints(
            {"bootstrap.servers": args.kafka, **dict(args.kafka_config or ())}
        )
        return CodePixWorker(engine, uow, subscribe(), publisher)
    from resilience.messaging import InMemoryBroker

    from .sql import ROUTER

    _log.warning("no --kafka given: using an in-process broker (messages stay in this process)")
    broker = InMemoryBroker()
    return CodePixWorker(
        engine, uow, broker.subscribe(_topics(), GROUP), broker.publisher(router=ROUTER)
    )


if __name__ == "__main__":  # pragma: no cover
    threading.current_thread().name = "codepix"
    sys.exit(main())
