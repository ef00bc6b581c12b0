"""``python -m examples.codepix bank --code 001 ...``: one bank as a process.

Every flag has an environment variable, so the same image runs BBX and CTD:

==================  ====================  =====================================
flag                environment           default
==================  ====================  =====================================
``--code``          ``BANK_CODE``         (required) ``001``, ``002``, ...
``--name``          ``BANK_NAME``         BBX for 001, CTD for 002
``--colour``        ``BANK_COLOUR``       the known bank's colour
``--database``      ``BANK_DATABASE_URL`` ``sqlite:///bank<code>.sqlite3``
``--kafka``         ``KAFKA_BOOTSTRAP``   an in-process broker (tries only)
``--kafka-config``  (repeat the flag)     librdkafka ``KEY=VALUE`` settings
``--codepix``       ``CODEPIX_GRPC``      ``127.0.0.1:50051``
``--http``          ``BANK_HTTP``         ``127.0.0.1:8<code>`` (8001, 8002)
==================  ====================  =====================================
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
from typing import Any

_log = logging.getLogger("codepix.bank")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bank's flags (see the module table)."""
    env = os.environ.get
    parser.add_argument("--code", default=env("BANK_CODE"), help="three-digit bank code")
    parser.add_argument("--name", default=env("BANK_NAME"), help="short name (BBX)")
    parser.add_argument("--colour", default=env("BANK_COLOUR"), help="page colour #rrggbb")
    parser.add_argument("--database", default=env("BANK_DATABASE_URL"), help="SQLAlchemy URL")
    parser.add_argument(
        "--codepix", default=env("CODEPIX_GRPC", "127.0.0.1:50051"), help="CodePix gRPC HOST:PORT"
    )
    parser.add_argument("--http", default=env("BANK_HTTP"), help="listen HOST:PORT")


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "127.0.0.1", int(port)))
    return sock


class HttpThread:
    """uvicorn serving *app* from a daemon thread on an already bound socket."""

    def __init__(self, app: Any, address: str) -> None:
        import uvicorn

        self.socket = _bind(address)
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.socket]}, daemon=True, name="http"
        )

    def start(self, timeout: float = 10.0) -> HttpThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def run(args: argparse.Namespace) -> int:
    """Run one bank until SIGTERM / Ctrl-C; exit status 2 for bad settings."""
    from examples.codepix.adapters.messaging import kafka_endpoints
    from examples.codepix.adapters.sql import create_engine
    from examples.codepix.bank.adapters.codepix_grpc import GrpcPixRegistry
    from examples.codepix.bank.adapters.sql import TO_CODEPIX
    from examples.codepix.bank.domain import profile_for
    from examples.codepix.bank.service import BankNode
    from examples.codepix.domain import CodePixError
    from resilience.messaging import InMemoryBroker, stop_on_signals

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        profile = profile_for(args.code or "", args.name, args.colour)
    except CodePixError as exc:
        _log.error("bad bank settings: %s", exc)
        return 2
    engine = create_engine(args.database or f"sqlite:///bank{profile.code}.sqlite3")
    registry = GrpcPixRegistry(args.codepix)
    if args.kafka:
        config = {"bootstrap.servers": args.kafka, **dict(args.kafka_config or ())}
        subscribe, publisher = kafka_endpoints(
            config,
            group=profile.topic,
            topics=(profile.topic,),
            router=TO_CODEPIX,
            source=profile.topic,
        )
    else:
        _log.warning("no --kafka given: using an in-process broker (CodePix cannot reach it)")
        broker = InMemoryBroker()
        publisher = broker.publisher(router=TO_CODEPIX)

        def subscribe() -> Any:
            return broker.subscribe((profile.topic,), profile.topic)

    node = BankNode(profile, engine, registry, subscribe=subscribe, publisher=publisher)
    http = HttpThread(node.web_app(), args.http or f"127.0.0.1:{8000 + int(profile.code)}")
    with stop_on_signals() as stop:
        node.start()
        http.start()
        _log.info("%s (%s) serving http://127.0.0.1:%d", profile.name, profile.code, http.port)
        try:
            stop.wait()
        finally:
            http.stop()
            node.stop()
            publisher.close()
            registry.close()
            engine.dispose()
    return 0
