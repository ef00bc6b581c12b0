"""The consumer loop shared by every transport.

`Consumer` and `AsyncConsumer` are thin drivers around one I/O-free core,
`_ConsumerCore`, which decides what happens to each delivery: hand it to the
handler, retry after a backoff, or dead-letter it. The drivers only call the
handler, sleep, ack and dead-letter as told.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Final

from resilience._clock import SYSTEM_CLOCK, Clock, MonotonicClock
from resilience._errors import ConfigurationError, MessagingError, SubscriptionClosedError
from resilience._telemetry import Event, LoggingTelemetry, Telemetry

from ._message import DEFAULT_MAX_MESSAGE_BYTES, Codec, JsonCodec, Message, decode_message
from ._protocols import AsyncSubscription, Delivery, Subscription

__all__ = [
    "AsyncConsumer",
    "Consumer",
    "ConsumerStats",
    "RetryBackoff",
    "async_stop_on_signals",
    "stop_on_signals",
]

_JSON: Final = JsonCodec()
_DEFAULT_TELEMETRY: Final = LoggingTelemetry()


@dataclass(frozen=True, slots=True)
class RetryBackoff:
    """How long to wait before calling a failed handler again.

    Exponential with additive jitter (as tenacity's ``wait_exponential_jitter``):
    ``min(maximum, initial * multiplier ** (retry - 1) + uniform(0, jitter))``.
    The jitter spreads out consumers that failed together (a database blip)
    so they do not all retry in the same instant.

    Keep ``maximum`` short: while a delivery is retried its partition waits
    (that is what keeps per-key order), and Kafka evicts a consumer that does
    not poll within ``max.poll.interval.ms``.
    """

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not self.initial >= 0:
            raise ConfigurationError("initial", "must be >= 0 seconds")
        if not self.maximum >= self.initial:
            raise ConfigurationError("maximum", "must be >= initial")
        if not self.multiplier >= 1:
            raise ConfigurationError("multiplier", "must be >= 1")
        if not self.jitter >= 0:
            raise ConfigurationError("jitter", "must be >= 0 seconds")

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number *retry* (1 for the first retry)."""
        base = self.initial * self.multiplier ** max(retry - 1, 0)
        return min(self.maximum, base + rng.uniform(0, self.jitter))


@dataclass(slots=True)
class ConsumerStats:
    """Counters since the consumer started, for tests and health checks."""

    handled: int = 0
    retries: int = 0
    dead_lettered: int = 0
    undecodable: int = 0
    transport_errors: int = 0


@dataclass(frozen=True, slots=True)
class _Handle:
    message: Message


@dataclass(frozen=True, slots=True)
class _Retry:
    delay: float


@dataclass(frozen=True, slots=True)
class _DeadLetter:
    reason: str


@dataclass(slots=True)
class _ConsumerCore:
    """Every decision of the loop, with no I/O: the sync and async drivers share it."""

    name: str
    codec: Codec
    max_message_bytes: int
    backoff: RetryBackoff
    dead_letter_after: int
    max_deliveries: int | None
    permanent_errors: tuple[type[BaseException], ...]
    transient_errors: tuple[type[BaseException], ...]
    telemetry: Telemetry
    rng: random.Random
    stats: ConsumerStats = field(default_factory=ConsumerStats)

    def begin(self, delivery: Delivery) -> _Handle | _DeadLetter:
        if self.max_deliveries is not None and delivery.delivery_count > self.max_deliveries:
            return self._dead(
                delivery,
                None,
                f"delivered {delivery.delivery_count} times without being acknowledged "
                f"(max_deliveries={self.max_deliveries}); the consumer may be crashing on it",
                attempts=0,
            )
        try:
            message = decode_message(delivery.raw, self.codec, max_bytes=self.max_message_bytes)
        except Exception as exc:  # MessageDecodeError, or anything a custom codec raises
            self.stats.undecodable += 1
            return self._dead(delivery, None, f"undecodable: {exc}", attempts=0)
        return _Handle(message)

    def failed(
        self, delivery: Delivery, message: Message, attempt: int, exc: Exception
    ) -> _Retry | _DeadLetter:
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, self.permanent_errors):
            return self._dead(delivery, message, f"permanent error: {error}", attempts=attempt)
        # A transient error is the handler's dependency being down (its database,
        # say), not the message being bad: it never uses up the message's attempts.
        transient = isinstance(exc, self.transient_errors)
        if attempt >= self.dead_letter_after and not transient:
            return self._dead(
                delivery, message, f"failed {attempt} times, last: {error}", attempts=attempt
            )
        delay = self.backoff.delay(attempt, self.rng)
        self.stats.retries += 1
        self.telemetry.emit(
            Event(
                "consumer",
                self.name,
                "retry",
                {
                    "destination": delivery.destination,
                    "message_id": message.id,
                    "message_type": message.type,
                    "attempt": attempt,
                    "delay": delay,
                    "error": error,
                    "transient": transient,
                },
            )
        )
        return _Retry(delay)

    def succeeded(self) -> None:
        self.stats.handled += 1

    def transport_failed(self, exc: MessagingError, failures: int) -> float:
        """The broker call (receive / ack / dead-letter) failed: wait, then try again.

        Nothing is lost meanwhile: whatever was not acked stays with the broker,
        and deliveries not yet finished are kept and retried first.
        """
        delay = self.backoff.delay(failures, self.rng)
        self.stats.transport_errors += 1
        self.telemetry.emit(
            Event(
                "consumer",
                self.name,
                "transport_error",
                {"error": f"{type(exc).__name__}: {exc}", "failures": failures, "delay": delay},
            )
        )
        return delay

    def _dead(
        self, delivery: Delivery, message: Message | None, reason: str, *, attempts: int
    ) -> _DeadLetter:
        self.stats.dead_lettered += 1
        self.telemetry.emit(
            Event(
                "consumer",
                self.name,
                "dead_letter",
                {
                    "destination": delivery.destination,
                    "message_id": message.id if message else None,
                    "message_type": message.type if message else None,
                    "attempts": attempts,
                    "delivery_count": delivery.delivery_count,
                    "reason": reason,
                },
            )
        )
        return _DeadLetter(reason)


def _span(message: Message, subscription: object, destination: str) -> AbstractContextManager[Any]:
    """A consumer span around the handler when `resilience.tracing` provides one."""
    from resilience import tracing

    factory = getattr(tracing, "consumer_span", None)
    if factory is None:
        return nullcontext()
    span: AbstractContextManager[Any] = factory(
        message,
        system=getattr(subscription, "system", "unknown"),
        destination=destination,
        consumer_group=getattr(subscription, "group", ""),
    )
    return span


class _Driver:
    """Options and validation shared by both drivers."""

    __slots__ = ("_backlog", "_clock", "_core", "_pending", "batch_size", "poll_timeout")

    def __init__(
        self,
        *,
        name: str,
        backoff: RetryBackoff,
        dead_letter_after: int,
        max_deliveries: int | None,
        permanent_errors: tuple[type[BaseException], ...],
        transient_errors: tuple[type[BaseException], ...],
        codec: Codec,
        max_message_bytes: int,
        batch_size: int,
        poll_timeout: float,
        clock: Clock,
        telemetry: Telemetry,
        rng: random.Random | None,
    ) -> None:
        if not isinstance(dead_letter_after, int) or dead_letter_after < 1:
            raise ConfigurationError("dead_letter_after", "must be an integer >= 1 (handler calls)")
        if max_deliveries is not None and (
            not isinstance(max_deliveries, int) or max_deliveries < 1
        ):
            raise ConfigurationError("max_deliveries", "must be None or an integer >= 1")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError("batch_size", "must be an integer >= 1")
        if not poll_timeout > 0:
            raise ConfigurationError("poll_timeout", "must be > 0 seconds")
        if not isinstance(backoff, RetryBackoff):
            raise ConfigurationError("backoff", "must be a RetryBackoff")
        self._core = _ConsumerCore(
            name=name,
            codec=codec,
            max_message_bytes=max_message_bytes,
            backoff=backoff,
            dead_letter_after=dead_letter_after,
            max_deliveries=max_deliveries,
            permanent_errors=tuple(permanent_errors),
            transient_errors=tuple(transient_errors),
            telemetry=telemetry,
            rng=rng or random.Random(),
        )
        self._clock = clock
        self._pending: list[Delivery] = []  # handled, not yet acked
        self._backlog: deque[Delivery] = deque()  # received, not yet finished
        self.batch_size = batch_size
        self.poll_timeout = float(poll_timeout)

    @property
    def stats(self) -> ConsumerStats:
        """What the consumer has done so far."""
        return self._core.stats


class Consumer(_Driver):
    """Receives from a `Subscription`, runs *handler* on each message, acks.

    Per delivery: decode (garbage is dead-lettered at once, with the reason);
    call ``handler(message)``; on success ack; on an exception retry with
    `RetryBackoff` until *dead_letter_after* calls have failed, then
    dead-letter with the error text. Deliveries are handled one at a time in
    the order received, so messages of one key (one partition) are handled in
    order; acks are sent in that order, after each batch and before every
    dead-letter. Delivery is at-least-once: the handler must be idempotent
    (see `resilience.outbox`'s inbox).

    Args:
        subscription: where records come from.
        handler: called with each decoded `Message`.
        name: for telemetry.
        backoff: waits between handler attempts.
        dead_letter_after: handler calls before giving up on a message.
        max_deliveries: dead-letter a record the broker has handed out more
            than this many times (a message that crashes the process each time
            would otherwise loop forever). Needs a transport that counts.
        permanent_errors: exception types dead-lettered without retrying
            (validation errors: a retry cannot fix them).
        transient_errors: exception types retried with backoff for as long as
            they last, never dead-lettered (the handler's database being down:
            the message is fine and must not be parked). Keep it narrow: a
            deterministic error listed here blocks its partition.
        codec: payload codec; must match the publisher's.
        max_message_bytes: larger records are dead-lettered as undecodable.
        batch_size: records asked for per ``receive``.
        poll_timeout: how long ``receive`` waits; also bounds how long ``run``
            takes to notice its stop event.
        clock: sleeps between retries (`resilience.testing.FakeClock` in tests).
        telemetry: receives ``retry`` and ``dead_letter`` events.
        rng: jitter source, for reproducible tests.
    """

    __slots__ = ("_stop", "handler", "subscription")

    def __init__(
        self,
        subscription: Subscription,
        handler: Callable[[Message], object],
        *,
        name: str = "consumer",
        backoff: RetryBackoff = RetryBackoff(),
        dead_letter_after: int = 5,
        max_deliveries: int | None = None,
        permanent_errors: tuple[type[BaseException], ...] = (),
        transient_errors: tuple[type[BaseException], ...] = (),
        codec: Codec = _JSON,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        batch_size: int = 100,
        poll_timeout: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        telemetry: Telemetry = _DEFAULT_TELEMETRY,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            name=name,
            backoff=backoff,
            dead_letter_after=dead_letter_after,
            max_deliveries=max_deliveries,
            permanent_errors=permanent_errors,
            transient_errors=transient_errors,
            codec=codec,
            max_message_bytes=max_message_bytes,
            batch_size=batch_size,
            poll_timeout=poll_timeout,
            clock=clock,
            telemetry=telemetry,
            rng=rng,
        )
        if not callable(handler):
            raise ConfigurationError("handler", "must be callable")
        self.subscription = subscription
        self.handler = handler
        self._stop: threading.Event | None = None

    def run(self, stop: threading.Event | None = None) -> None:
        """Consume until *stop* is set, then finish the message in hand, ack, and
        close the subscription. Records received but not started stay unacked
        and go to another member of the group.

        A broker error (`MessagingError` from receive / ack / dead-letter) does
        not end the loop: it is reported as a ``transport_error`` event and
        retried with the backoff, unfinished deliveries first.
        """
        self._stop = stop
        failures = 0
        try:
            while not self._stopping():
                try:
                    self.run_once()
                    failures = 0
                except SubscriptionClosedError:
                    raise  # nothing to retry: only a new subscription can continue
                except MessagingError as exc:
                    failures += 1
                    if not self._sleep(self._core.transport_failed(exc, failures)):
                        break
        finally:
            self.subscription.close()

    def run_once(self, timeout: float | None = None) -> int:
        """Handle one batch and return how many deliveries were finished (acked
        or dead-lettered). Unfinished deliveries of a failed call come first;
        otherwise a new batch is received, waiting up to *timeout* (default
        *poll_timeout*)."""
        if not self._backlog and not self._pending:
            batch = self.subscription.receive(
                self.batch_size, self.poll_timeout if timeout is None else timeout
            )
            self._backlog.extend(batch)
        return self._drain()

    def handle(self, batch: Sequence[Delivery]) -> int:
        """Handle deliveries already received, in order; returns how many were finished."""
        self._backlog.extend(batch)
        return self._drain()

    def _drain(self) -> int:
        finished = 0
        try:
            self._flush()
            while self._backlog and not self._stopping():
                if not self._handle(self._backlog[0]):
                    break
                self._backlog.popleft()
                finished += 1
        finally:
            self._flush()
        return finished

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _flush(self) -> None:
        if self._pending:
            self.subscription.ack(self._pending)
            self._pending = []

    def _handle(self, delivery: Delivery) -> bool:
        core = self._core
        decision = core.begin(delivery)
        if isinstance(decision, _Handle):
            message, attempt = decision.message, 0
            while True:
                attempt += 1
                try:
                    with _span(message, self.subscription, delivery.destination):
                        self.handler(message)
                except Exception as exc:
                    outcome = core.failed(delivery, message, attempt, exc)
                    if isinstance(outcome, _DeadLetter):
                        decision = outcome
                        break
                    if not self._sleep(outcome.delay):
                        return False  # stopping: leave it unacked for redelivery
                else:
                    core.succeeded()
                    self._pending.append(delivery)
                    return True
        self._flush()  # keep acks in order: everything before goes first
        self.subscription.dead_letter(delivery, decision.reason)
        return True

    def _sleep(self, seconds: float) -> bool:
        if self._stop is not None and isinstance(self._clock, MonotonicClock):
            return not self._stop.wait(seconds)
        self._clock.sleep(seconds)
        return not self._stopping()


class AsyncConsumer(_Driver):
    """`Consumer` for an `AsyncSubscription` and an ``async def`` handler.

    Same decisions (the same core), same guarantees; see `Consumer`.
    """

    __slots__ = ("_stop", "handler", "subscription")

    def __init__(
        self,
        subscription: AsyncSubscription,
        handler: Callable[[Message], Awaitable[object]],
        *,
        name: str = "consumer",
        backoff: RetryBackoff = RetryBackoff(),
        dead_letter_after: int = 5,
        max_deliveries: int | None = None,
        permanent_errors: tuple[type[BaseException], ...] = (),
        transient_errors: tuple[type[BaseException], ...] = (),
        codec: Codec = _JSON,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        batch_size: int = 100,
        poll_timeout: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        telemetry: Telemetry = _DEFAULT_TELEMETRY,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            name=name,
            backoff=backoff,
            dead_letter_after=dead_letter_after,
            max_deliveries=max_deliveries,
            permanent_errors=permanent_errors,
            transient_errors=transient_errors,
            codec=codec,
            max_message_bytes=max_message_bytes,
            batch_size=batch_size,
            poll_timeout=poll_timeout,
            clock=clock,
            telemetry=telemetry,
            rng=rng,
        )
        if not callable(handler):
            raise ConfigurationError("handler", "must be callable")
        self.subscription = subscription
        self.handler = handler
        self._stop: asyncio.Event | None = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until *stop* is set (or the task is cancelled), then finish
        the message in hand, ack, and close the subscription. Broker errors are
        retried with the backoff, as in `Consumer.run`."""
        self._stop = stop
        failures = 0
        try:
            while not self._stopping():
                try:
                    await self.run_once()
                    failures = 0
                except SubscriptionClosedError:
                    raise
                except MessagingError as exc:
                    failures += 1
                    if not await self._sleep(self._core.transport_failed(exc, failures)):
                        break
        finally:
            await self.subscription.close()

    async def run_once(self, timeout: float | None = None) -> int:  # noqa: ASYNC109 - poll timeout
        """Handle one batch (unfinished deliveries first); returns how many were finished."""
        if not self._backlog and not self._pending:
            batch = await self.subscription.receive(
                self.batch_size, self.poll_timeout if timeout is None else timeout
            )
            self._backlog.extend(batch)
        return await self._drain()

    async def handle(self, batch: Sequence[Delivery]) -> int:
        """Handle deliveries already received, in order; returns how many were finished."""
        self._backlog.extend(batch)
        return await self._drain()

    async def _drain(self) -> int:
        finished = 0
        try:
            await self._flush()
            while self._backlog and not self._stopping():
                if not await self._handle(self._backlog[0]):
                    break
                self._backlog.popleft()
                finished += 1
        finally:
            await self._flush()
        return finished

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _flush(self) -> None:
        if self._pending:
            await self.subscription.ack(self._pending)
            self._pending = []

    async def _handle(self, delivery: Delivery) -> bool:
        core = self._core
        decision = core.begin(delivery)
        if isinstance(decision, _Handle):
            message, attempt = decision.message, 0
            while True:
                attempt += 1
                try:
                    with _span(message, self.subscription, delivery.destination):
                        await self.handler(message)
                except Exception as exc:
                    outcome = core.failed(delivery, message, attempt, exc)
                    if isinstance(outcome, _DeadLetter):
                        decision = outcome
                        break
                    if not await self._sleep(outcome.delay):
                        return False  # stopping: leave it unacked for redelivery
                else:
                    core.succeeded()
                    self._pending.append(delivery)
                    return True
        await self._flush()  # keep acks in order: everything before goes first
        await self.subscription.dead_letter(delivery, decision.reason)
        return True

    async def _sleep(self, seconds: float) -> bool:
        if self._stop is not None and isinstance(self._clock, MonotonicClock):
            try:
                await asyncio.wait_for(self._stop.wait(), seconds)
            except TimeoutError:
                return True
            return False
        await self._clock.asleep(seconds)
        return not self._stopping()


_DEFAULT_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(
    signals: Sequence[signal.Signals] = _DEFAULT_SIGNALS,
) -> Iterator[threading.Event]:
    """An event set by SIGTERM / SIGINT, for ``Consumer.run(stop)``.

    Orchestrators send SIGTERM before killing a pod; with this the consumer
    finishes the message in hand and acks it instead of leaving it to be
    redelivered. Previous handlers are restored on exit. Main thread only.
    """
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: object) -> None:
        del signum, frame
        stop.set()

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def async_stop_on_signals(
    signals: Sequence[signal.Signals] = _DEFAULT_SIGNALS,
) -> Iterator[asyncio.Event]:
    """`stop_on_signals` for ``AsyncConsumer.run(stop)``; call inside the running loop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
