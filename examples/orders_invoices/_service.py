"""What every service has: its own database, outbox, inbox, HTTP app and background loops.

A service declares the events it emits (``emits``) and marks its handlers with
`handles`; the consumer it runs, the topics it subscribes to and the message
catalogue in the docs are all derived from those declarations, so they cannot
disagree.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from examples.orders_invoices._environment import Environment
from examples.orders_invoices._infra import HttpServer, Worker, service_app
from examples.orders_invoices.events import EVENTS, Event, InvalidEventError, parse_event, topic_of
from resilience.messaging import Consumer, Message, Publisher, RetryBackoff
from resilience.outbox import Inbox, Outbox, Relay

CONSUMER_BACKOFF = RetryBackoff(initial=0.05, maximum=0.5, jitter=0.05)

H = TypeVar("H", bound=Callable[..., None])
Handler = Callable[[Any, Message, Any], None]


def handles(*events: type[Event]) -> Callable[[H], H]:
    """Mark a service method ``(self, message, event)`` as the handler of *events*."""

    def mark(method: H) -> H:
        method.__handles__ = events  # type: ignore[attr-defined]
        return method

    return mark


class Service:
    """One service of the system: a database, an outbox relayed to the broker,
    an inbox for exactly-once handling, a FastAPI app and its consumer.

    ``stop()`` / ``start()`` take the whole service down and up again (HTTP
    server, relay and consumer), which is how the demo plays an outage.
    """

    name: ClassVar[str]
    emits: ClassVar[tuple[type[Event], ...]] = ()
    """The events this service writes to its outbox."""
    consumes: ClassVar[dict[type[Event], Handler]] = {}
    """The events this service handles, and how: filled from the `handles` marks."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.consumes = {
            event: method
            for method in vars(cls).values()
            for event in getattr(method, "__handles__", ())
        }

    def __init__(self, env: Environment, *, threads: int | None = None) -> None:
        self.env = env
        self.engine = env.engine(self.name)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine)
        self.metadata = sa.MetaData()
        self.outbox = Outbox(self.metadata)
        self.inbox = Inbox(self.metadata)
        self.app = service_app(self.name)
        self.server = HttpServer(self.app, self.name, env.port(self.name), threads=threads)
        self.workers: list[Worker] = []
        if self.consumes:
            self.workers.append(Worker(f"consumer-{self.name}", self._consume))
        self.clients: list[httpx.Client] = []
        """HTTP clients to close when the system shuts down."""
        self._relay: Relay | None = None
        self._publisher: Publisher | None = None
        self._schema_ready = False

    @property
    def url(self) -> str:
        return self.server.url

    def setup(self) -> None:
        """Create the tables (the example's stand-in for migrations) and seed data."""
        self.metadata.create_all(self.engine)

    def start(self) -> None:
        if not self._schema_ready:
            self.setup()
            self._schema_ready = True
        self.server.start()
        if self.emits:
            self._publisher = self.env.publisher(self.name)
            self._relay = Relay(
                self.engine, self.outbox, self._publisher, name=f"{self.name}-relay", idle_max=0.2
            ).start()
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        self.server.stop()

    def close(self) -> None:
        """Release the service's connections (after `stop`, for good)."""
        for client in self.clients:
            client.close()
        self.engine.dispose()

    def outbox_pending(self) -> int:
        with self.engine.connect() as conn:
            return self.outbox.stats(conn).pending

    # ------------------------------------------------------------------ messaging

    def outgoing(self, event: Event) -> Message:
        """The message for *event*, refusing events this service does not declare."""
        if type(event) not in self.emits:
            raise TypeError(f"{self.name} does not declare {event.type} in its emits")
        return event.message()

    def emit(self, session: Session, event: Event) -> None:
        """Write *event* in the caller's transaction (delivered by the relay after commit)."""
        self.outbox.add(session, self.outgoing(event))

    def once(self, message: Message, apply: Callable[[Session], object]) -> bool:
        """Run *apply* in one transaction with *message*'s inbox row: its effect happens once."""
        with self.sessions.begin() as session:
            if not self.inbox.record(session, self.name, message.id):
                return False
            apply(session)
            return True

    def _consume(self, stop: threading.Event) -> None:
        topics = sorted({topic_of(event) for event in self.consumes})
        consumer = Consumer(
            self.env.subscription(self.name, topics),
            self._dispatch,
            name=self.name,
            backoff=CONSUMER_BACKOFF,
            dead_letter_after=200,
            permanent_errors=(InvalidEventError,),  # a retry cannot fix a bad payload
            poll_timeout=0.1,
        )
        consumer.run(stop)

    def _dispatch(self, message: Message) -> None:
        kind = EVENTS.get(message.type)
        handler = self.consumes.get(kind) if kind is not None else None
        if handler is None:
            return  # another service's event on a topic we share
        handler(self, message, parse_event(message))
