"""Type-checked, never run: the public API keeps its types through decorators.

``mypy --strict src tests/typing`` (in CI) fails if a decorator loses a
signature or a return type turns into ``Any``.
"""

from __future__ import annotations

import asyncio
from typing import assert_type

from sqlalchemy.orm import Session

from resilience import (
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Pipeline,
    Retry,
    Timeout,
    idempotent,
)
from resilience.idempotency import MemoryStore
from resilience.messaging import Message, decode_message, encode_message
from resilience.saga import (
    AsyncSagaParticipant,
    SagaInstance,
    SagaParticipant,
    SagaTimerScheduler,
)

breaker = CircuitBreaker("correios")


@breaker
def quote(cep: str, express: bool = False) -> int:
    return 1790


@breaker
async def aquote(cep: str) -> int:
    return 1790


assert_type(quote("01001-000", express=True), int)
assert_type(breaker.call(quote, "01001-000"), int)


async def async_uses() -> None:
    assert_type(await aquote("01001-000"), int)
    assert_type(await breaker.acall(aquote, "01001-000"), int)


retry = Retry(on=ConnectionError, attempts=3)


@retry
def fetch(url: str) -> bytes:
    return b""


assert_type(fetch("https://example.com"), bytes)

pipeline = Pipeline(Fallback(value=0), breaker, retry, Bulkhead(max_concurrent=4), Timeout(1.0))


@pipeline
def shipping(cep: str) -> int:
    return 1790


assert_type(shipping("01001-000"), int)


@idempotent(MemoryStore(), key="order_id")
def charge(order_id: str, cents: int) -> str:
    return "ch_1"


assert_type(charge("o-1", 4990), str)

error = CircuitOpenError("correios", "open", 3.0)
assert_type(error.retry_after, float)

message = Message(type="order.created", key="o-1", payload={"cents": 4990})
assert_type(decode_message(encode_message(message)), Message)


async def saga_async_uses(participant: SagaParticipant, saga_id: str) -> None:
    driver = AsyncSagaParticipant(participant)
    assert_type(await driver.handle(Message("stock.reserved", key=saga_id)), bool)

    def place(session: Session) -> SagaInstance:
        return participant.start(session, saga_id, timeout=30.0)

    assert_type(await driver.transaction(place), SagaInstance)
    assert_type(await driver.transaction(lambda session: 42), int)
    await SagaTimerScheduler(participant).arun(asyncio.Event())
