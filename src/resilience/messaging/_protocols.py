"""What a transport must provide. Kept small so adding a broker is a small job.

Publishing is batch-first because the outbox relay moves batches; consuming is
split into a transport-specific `Subscription` (receive / ack) and one shared
consumer loop that does decoding, retries and dead-lettering for every broker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._message import Message, RawMessage

__all__ = [
    "AsyncPublisher",
    "AsyncSubscription",
    "Delivery",
    "Publisher",
    "Router",
    "Subscription",
]

Router = Callable[[Message], str]
"""Picks the destination (topic / stream) for a message."""


@runtime_checkable
class Publisher(Protocol):
    """Sends messages to a broker and waits for the broker's acknowledgement."""

    def publish(self, messages: Sequence[Message], /) -> None:
        """Return only once every message is acknowledged by the broker.

        Messages sharing a key are delivered in the order given. On failure
        raise `PublishError`; its ``delivered`` attribute lists the ids that were
        acknowledged, so a relay can record them and retry only the rest.
        """

    def close(self) -> None:
        """Flush and release connections."""


@runtime_checkable
class AsyncPublisher(Protocol):
    """`Publisher` for asyncio code."""

    async def publish(self, messages: Sequence[Message], /) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """One record received from a broker, not yet acknowledged.

    Attributes:
        raw: the record as received; decoding happens in the consumer loop.
        destination: the topic / stream it came from.
        token: transport-specific handle used by ``ack`` (offset, stream entry id).
        delivery_count: how many times the broker has handed this record out, when known.
    """

    raw: RawMessage
    destination: str
    token: Any
    delivery_count: int = 1


@runtime_checkable
class Subscription(Protocol):
    """The receiving end of a consumer group."""

    def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Up to *max_messages* records, waiting at most *timeout* seconds."""

    def ack(self, deliveries: Sequence[Delivery], /) -> None:
        """Mark records done: they will not be delivered to this group again."""

    def dead_letter(self, delivery: Delivery, reason: str, /) -> None:
        """Move a record that can never be processed aside, with the reason, and ack it."""

    def close(self) -> None: ...


@runtime_checkable
class AsyncSubscription(Protocol):
    """`Subscription` for asyncio code."""

    async def receive(
        self,
        max_messages: int,
        timeout: float,  # noqa: ASYNC109 - a broker poll timeout, not a cancellation scope
    ) -> Sequence[Delivery]: ...

    async def ack(self, deliveries: Sequence[Delivery], /) -> None: ...

    async def dead_letter(self, delivery: Delivery, reason: str, /) -> None: ...

    async def close(self) -> None: ...
