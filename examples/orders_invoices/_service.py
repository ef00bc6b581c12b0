"""What every service has: its own database, outbox, inbox, HTTP app and background loops."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from examples.orders_invoices._infra import HttpServer, Worker, service_app, sqlite_engine
from resilience.messaging import Consumer, InMemoryBroker, Message, RetryBackoff
from resilience.outbox import Inbox, Outbox, Relay

CONSUMER_BACKOFF = RetryBackoff(initial=0.05, maximum=0.5, jitter=0.05)


class Service:
    """One service of the system: a SQLite file, an outbox relayed to the broker,
    an inbox for exactly-once handling, a FastAPI app and its consumers.

    ``stop()`` / ``start()`` take the whole service down and up again (HTTP
    server, relay and consumers), which is how the demo plays an outage.
    """

    def __init__(self, name: str, workdir: Path, broker: InMemoryBroker) -> None:
        self.name = name
        self.broker = broker
        self.engine = sqlite_engine(workdir / f"{name}.db")
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine)
        self.metadata = sa.MetaData()
        self.outbox = Outbox(self.metadata)
        self.inbox = Inbox(self.metadata)
        self.app = service_app(name)
        self.server = HttpServer(self.app, name)
        self.workers: list[Worker] = []
        self.clients: list[httpx.Client] = []
        """HTTP clients to close when the system shuts down."""
        self._relay: Relay | None = None
        self._schema_ready = False

    @property
    def url(self) -> str:
        return self.server.url

    def consume(self, topics: str | Iterable[str], handler: Callable[[Message], object]) -> None:
        """Run *handler* for every message of *topics*, as consumer group ``self.name``."""
        destinations = topics if isinstance(topics, str) else tuple(topics)

        def loop(stop: threading.Event) -> None:
            consumer = Consumer(
                self.broker.subscribe(destinations, group=self.name),
                handler,
                name=self.name,
                backoff=CONSUMER_BACKOFF,
                dead_letter_after=200,
                poll_timeout=0.1,
            )
            consumer.run(stop)

        self.workers.append(Worker(f"consumer-{self.name}", loop))

    def setup(self) -> None:
        """Create the tables (the example's stand-in for migrations) and seed data."""
        self.metadata.create_all(self.engine)

    def start(self) -> None:
        if not self._schema_ready:
            self.setup()
            self._schema_ready = True
        self.server.start()
        self._relay = Relay(
            self.engine,
            self.outbox,
            self.broker.publisher(),
            name=f"{self.name}-relay",
            idle_max=0.2,
        ).start()
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        self.server.stop()

    def close(self) -> None:
        """Release the service's connections (after `stop`, for good)."""
        for client in self.clients:
            client.close()
        self.engine.dispose()

    def outbox_pending(self) -> int:
        with self.engine.connect() as conn:
            return self.outbox.stats(conn).pending

    def emit(self, session: Session, type_: str, payload: dict[str, object], key: str) -> None:
        """Write an event in the caller's transaction (delivered by the relay after commit)."""
        self.outbox.add(session, Message(type_, payload, key=key))
