"""Asyncio faces for blocking transports: each call runs on one dedicated thread.

Client libraries such as confluent-kafka are blocking and not safe to call
from several threads at once, so every call of one adapter goes to the same
single worker thread, in order, with the caller's contextvars (trace context,
deadline) copied across.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ._message import Message
from ._protocols import Delivery, Publisher, Subscription

__all__ = ["ThreadedAsyncPublisher", "ThreadedAsyncSubscription"]

_T = TypeVar("_T")


class _OneThread:
    __slots__ = ("_executor",)

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(self, fn: Callable[..., _T], *args: object) -> _T:
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(context.run, fn, *args))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)


class ThreadedAsyncPublisher:
    """An `AsyncPublisher` that runs a blocking `Publisher` on its own thread.

    The event loop never blocks while the broker acknowledges; calls are
    serialised, so the wrapped client is never used concurrently.
    """

    __slots__ = ("_thread", "publisher")

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self._thread = _OneThread("resilience-publish")

    async def publish(self, messages: Sequence[Message], /) -> None:
        await self._thread.call(self.publisher.publish, list(messages))

    async def close(self) -> None:
        try:
            await self._thread.call(self.publisher.close)
        finally:
            self._thread.shutdown()


class ThreadedAsyncSubscription:
    """An `AsyncSubscription` that runs a blocking `Subscription` on its own thread."""

    __slots__ = ("_thread", "subscription")

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self._thread = _OneThread("resilience-consume")

    @property
    def system(self) -> str:
        """The wrapped transport's name, for tracing."""
        return str(getattr(self.subscription, "system", "unknown"))

    @property
    def group(self) -> str:
        """The wrapped subscription's consumer group, for tracing."""
        return str(getattr(self.subscription, "group", ""))

    async def receive(
        self,
        max_messages: int,
        timeout: float,  # noqa: ASYNC109 - a broker poll timeout, part of the protocol
    ) -> Sequence[Delivery]:
        return await self._thread.call(self.subscription.receive, max_messages, timeout)

    async def ack(self, deliveries: Sequence[Delivery], /) -> None:
        await self._thread.call(self.subscription.ack, list(deliveries))

    async def dead_letter(self, delivery: Delivery, reason: str, /) -> None:
        await self._thread.call(self.subscription.dead_letter, delivery, reason)

    async def close(self) -> None:
        try:
            await self._thread.call(self.subscription.close)
        finally:
            self._thread.shutdown()
