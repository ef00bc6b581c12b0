"""The Kafka driving adapter: consume bank messages, apply them once, relay the outbox.

Wiring, all from the toolkit:

- a `resilience.messaging.Consumer` on ``transactions`` and
  ``transaction_confirmation``: decodes, retries failures with backoff,
  dead-letters poison messages (with the reason) and keeps running;
- the use cases record each message in the inbox in the same transaction as
  its effect, so redeliveries change nothing;
- a `resilience.outbox.Relay` publishes committed outbox rows to the banks'
  topics (``bank001``...), keyed by transaction id, trace context in headers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Self

import sqlalchemy as sa

from examples.codepix.adapters.sql import OUTBOX, ROUTER
from examples.codepix.application import (
    COMPLETED,
    CONFIRMATIONS_TOPIC,
    CONFIRMED,
    FAILED,
    PERMANENT_ERRORS,
    REQUESTED,
    TRANSACTIONS_TOPIC,
    CompleteTransaction,
    ConfirmTransaction,
    FailTransaction,
    FailureReport,
    MalformedMessageError,
    RegisterTransaction,
    StatusUpdate,
    TransferOutcome,
    TransferRequest,
    UnitOfWorkFactory,
)
from resilience import ConfigurationError
from resilience.messaging import (
    Consumer,
    Message,
    Publisher,
    RetryBackoff,
    Router,
    Subscription,
)
from resilience.outbox import Backoff, Outbox, Relay, RelayOptions

TOPICS: Final = (TRANSACTIONS_TOPIC, CONFIRMATIONS_TOPIC)
GROUP: Final = "codepix"


class MessageHandler:
    """Routes each incoming message to its use case by (type); unknown types are malformed."""

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._register = RegisterTransaction(uow)
        self._confirm = ConfirmTransaction(uow)
        self._complete = CompleteTransaction(uow)
        self._fail = FailTransaction(uow)

    def __call__(self, message: Message) -> TransferOutcome:
        if message.type == REQUESTED:
            return self._register(TransferRequest.from_payload(message.id, message.payload))
        if message.type == CONFIRMED:
            return self._confirm(StatusUpdate.from_payload(message.id, message.payload))
        if message.type == COMPLETED:
            return self._complete(StatusUpdate.from_payload(message.id, message.payload))
        if message.type == FAILED:
            return self._fail(FailureReport.from_payload(message.id, message.payload))
        raise MalformedMessageError(f"CodePix does not handle messages of type {message.type!r}")


DATABASE_DOWN: Final = (sa.exc.OperationalError, sa.exc.InterfaceError)
"""Errors that mean "the database is unreachable", not "this message is bad"."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Tuning for the consumer and the relay; the defaults suit production, tests shrink them.

    Attributes:
        dead_letter_after: handler attempts on an unexpected error (a bug)
            before the message is dead-lettered. The database being
            unreachable is not such an error: those failures (`DATABASE_DOWN`)
            are retried for as long as the outage lasts, so a transfer is never
            parked in the dead letters because its database was down.
        backoff: wait between those attempts.
        relay: `RelayOptions` for the outbox relay (max attempts, backoff...).
        poll_timeout: how long a receive waits; bounds shutdown latency.
    """

    dead_letter_after: int = 8
    backoff: RetryBackoff = field(default_factory=lambda: RetryBackoff(initial=0.2, maximum=5.0))
    relay: RelayOptions = field(
        default_factory=lambda: RelayOptions(
            name="codepix-relay", max_attempts=20, backoff=Backoff(initial=0.5, maximum=30.0)
        )
    )
    poll_timeout: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.dead_letter_after, int) or self.dead_letter_after < 1:
            raise ConfigurationError("dead_letter_after", "must be an integer >= 1")
        if not isinstance(self.backoff, RetryBackoff):
            raise ConfigurationError("backoff", "must be a RetryBackoff")
        if not isinstance(self.relay, RelayOptions):
            raise ConfigurationError("relay", "must be a RelayOptions")
        if not self.poll_timeout > 0:
            raise ConfigurationError("poll_timeout", "must be > 0 seconds")


class Worker:
    """A consumer thread and an outbox relay thread: the asynchronous half of a service.

    CodePix and the banks run the same pair; only the handler, the outbox and
    the names differ.

    Args:
        engine: the database holding the service's tables, outbox and inbox.
        outbox: where the service's handlers write outgoing messages.
        subscription: where incoming messages come from (Kafka or in-memory).
        handler: applies one message (idempotently: it records the inbox row).
        publisher: where outbox rows go.
        options: `WorkerOptions`.
        name: for telemetry and thread names.
    """

    def __init__(
        self,
        engine: sa.Engine,
        outbox: Outbox,
        subscription: Subscription,
        *,
        handler: Callable[[Message], object],
        publisher: Publisher,
        options: WorkerOptions | None = None,
        name: str,
    ) -> None:
        opts = options or WorkerOptions()
        self.name = name
        self.consumer = Consumer(
            subscription,
            handler,
            name=name,
            backoff=opts.backoff,
            dead_letter_after=opts.dead_letter_after,
            permanent_errors=PERMANENT_ERRORS,
            transient_errors=DATABASE_DOWN,
            poll_timeout=opts.poll_timeout,
        )
        self.relay = Relay(engine, outbox, publisher, options=opts.relay)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Start the relay and the consumer in background threads."""
        self.relay.start()
        self._thread = threading.Thread(
            target=self.consumer.run, args=(self._stop,), name=f"{self.name}-consumer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the message in hand, ack it, close the subscription, stop the relay."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.relay.stop(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class CodePixWorker(Worker):
    """CodePix's worker: bank messages in (`MessageHandler`), ``bank<code>`` topics out.

    Args:
        engine: the database holding CodePix's tables, outbox and inbox.
        uow: unit-of-work factory over that database.
        subscription: where bank messages come from (Kafka or in-memory).
        publisher: where outbox rows go (must route with `ROUTER`'s rule).
        options: `WorkerOptions`.
    """

    def __init__(
        self,
        engine: sa.Engine,
        uow: UnitOfWorkFactory,
        subscription: Subscription,
        publisher: Publisher,
        options: WorkerOptions | None = None,
    ) -> None:
        super().__init__(
            engine,
            OUTBOX,
            subscription,
            handler=MessageHandler(uow),
            publisher=publisher,
            options=options,
            name="codepix",
        )


def kafka_endpoints(
    bootstrap: str | Mapping[str, Any],
    *,
    group: str = GROUP,
    topics: tuple[str, ...] = TOPICS,
    router: Router = ROUTER,
    source: str = "codepix",
) -> tuple[Callable[[], Subscription], Publisher]:
    """A subscription factory and a publisher for a Kafka cluster.

    *bootstrap* is ``"host:9092"`` or a librdkafka consumer config (e.g. with
    faster group joins); the publisher reuses its connection settings. The
    defaults are CodePix's; a bank passes its own topic, group and router.
    """
    from resilience.messaging import KafkaPublisher, KafkaSubscription

    config = {"bootstrap.servers": bootstrap} if isinstance(bootstrap, str) else dict(bootstrap)
    config.pop("group.id", None)
    producer = {
        k: v for k, v in config.items() if k.startswith(("bootstrap.", "security.", "sasl."))
    }
    return (
        lambda: KafkaSubscription(config, topics, group),
        KafkaPublisher(producer, router=router, source=source),
    )
