"""`AsyncSagaParticipant`: the asyncio driver of a `SagaParticipant`.

A saga step is one SQL transaction (inbox row, saga bookkeeping, business
writes, outbox rows) on a SQLAlchemy *sync* Session: that is what the outbox
and the inbox speak. So the async driver does not re-implement anything: it
runs the participant's own methods on a worker thread (``asyncio.to_thread``,
which copies the caller's contextvars, so the trace context and deadline of the
consumer span follow the step), the way `Relay.run` drives the relay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from resilience._errors import ConfigurationError
from resilience.messaging._message import Message

from ._participant import SagaParticipant

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from resilience.messaging import Router

__all__ = ["AsyncSagaParticipant"]

T = TypeVar("T")


class AsyncSagaParticipant:
    """Await a `SagaParticipant`'s steps from asyncio code without blocking the loop.

    Declare the steps on the `SagaParticipant` as usual (``@participant.on``,
    ``@participant.compensate``, ``@participant.entered``); handlers stay plain
    functions taking a `StepContext`, because they run inside the SQL
    transaction. Then hand the async face to an `AsyncConsumer`::

        asaga = AsyncSagaParticipant(stock)
        consumer = AsyncConsumer(
            subscription, asaga.handle, permanent_errors=asaga.permanent_errors
        )

    Every guarantee is the participant's: same dedup, same optimistic lock and
    immediate conflict retries, same errors (`IllegalTransitionError` is logged
    and raised, `ConcurrentSagaUpdateError` after *conflict_retries*).

    Cancelling the awaiting task does not stop a transaction already running on
    its thread; it commits or rolls back on its own. The message was not
    acked, so it comes again and the inbox turns the repeat into a no-op.

    Use a file or server database: an in-memory SQLite URL (``sqlite://``) gives
    each worker thread its own empty database unless the engine uses a
    ``StaticPool``.

    Args:
        participant: the participant to drive.
    """

    __slots__ = ("participant",)

    def __init__(self, participant: SagaParticipant) -> None:
        if not isinstance(participant, SagaParticipant):
            raise ConfigurationError("participant", "must be a SagaParticipant")
        self.participant = participant

    @property
    def name(self) -> str:
        """The participant's service name."""
        return self.participant.name

    @property
    def event_types(self) -> frozenset[str]:
        """Every event type the participant handles (subscribe to these)."""
        return self.participant.event_types

    @property
    def permanent_errors(self) -> tuple[type[BaseException], ...]:
        """Errors a retry cannot fix: pass to ``AsyncConsumer(permanent_errors=...)``."""
        return self.participant.permanent_errors

    def destinations(self, router: Router) -> list[str]:
        """The topics / streams carrying the participant's events under *router*."""
        return self.participant.destinations(router)

    async def handle(self, message: Message) -> bool:
        """`SagaParticipant.handle` on a worker thread: True if the event did something."""
        return await asyncio.to_thread(self.participant.handle, message)

    async def transaction(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one committed transaction on a worker thread.

        This is how async code starts a saga: the business row and
        ``participant.start(session, ...)`` commit together::

            def place(session: Session) -> SagaInstance:
                session.execute(orders.insert().values(order_id=oid, status="pending"))
                return participant.start(session, oid, timeout=30, emit=created)

            await asaga.transaction(place)
        """
        if not callable(fn):
            raise ConfigurationError("fn", "must be callable(session)")
        return await asyncio.to_thread(self._in_transaction, fn)

    def _in_transaction(self, fn: Callable[[Session], T]) -> T:
        with self.participant.sessionmaker() as session, session.begin():
            return fn(session)

    def __repr__(self) -> str:
        return f"AsyncSagaParticipant({self.participant!r})"
