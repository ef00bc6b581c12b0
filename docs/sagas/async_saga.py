"""The order saga of ``order_saga.py`` served from asyncio code.

Run it: ``python docs/sagas/async_saga.py`` (SQLite files in a temporary
directory, the in-memory broker). Every service's consumer, relay and timers
are tasks on one event loop; the SQL of each step runs on worker threads.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from order_saga import (
    SKU,
    Service,
    check_invariants,
    orders_service,
    payments_service,
    stock_service,
)
from sqlalchemy.orm import Session

from resilience.messaging import AsyncConsumer, InMemoryBroker, Message, Router, TopicRouter
from resilience.outbox import Relay
from resilience.saga import AsyncSagaParticipant, SagaInstance, SagaTimerScheduler


# --8<-- [start:serve]
async def serve(svc: Service, broker: InMemoryBroker, router: Router, stop: asyncio.Event) -> None:
    """One service's loops, until *stop*: its consumer, its relay and its timers."""
    asaga = AsyncSagaParticipant(svc.participant)
    consumer = AsyncConsumer(
        broker.async_subscribe(asaga.destinations(router), asaga.name),
        asaga.handle,
        permanent_errors=asaga.permanent_errors,
        poll_timeout=0.1,
    )
    relay = Relay(svc.engine, svc.participant.outbox, broker.publisher(router=router), idle_max=0.1)
    await asyncio.gather(
        consumer.run(stop),
        relay.run(stop),  # Relay's asyncio face
        SagaTimerScheduler(svc.participant, interval=0.1).arun(stop),  # timers, off the loop too
    )


# --8<-- [end:serve]


# --8<-- [start:place]
async def place(orders: Service, order_id: str, *, qty: int, amount: int) -> SagaInstance:
    """What an async endpoint does: the order row and its saga commit together."""
    table = orders.metadata.tables["orders"]
    created = Message(
        "order.created",
        {"order_id": order_id, "sku": SKU, "qty": qty, "amount": amount},
        key=order_id,
    )

    def create(session: Session) -> SagaInstance:
        session.execute(
            table.insert().values(order_id=order_id, status="pending", qty=qty, amount=amount)
        )
        return orders.participant.start(session, order_id, timeout=30.0, emit=created)

    return await AsyncSagaParticipant(orders.participant).transaction(create)


# --8<-- [end:place]


def _statuses(orders: Service) -> set[str]:
    table = orders.metadata.tables["orders"]
    with orders.engine.connect() as conn:
        return set(conn.execute(sa.select(table.c.status)).scalars())


async def main(n: int = 10) -> None:
    """Place *n* orders (stock for half of them) and wait until every saga has ended."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        orders = orders_service(f"sqlite:///{base / 'orders.db'}")
        stock = stock_service(f"sqlite:///{base / 'stock.db'}", initial=n // 2)
        payments = payments_service(f"sqlite:///{base / 'payments.db'}")
        services = (orders, stock, payments)
        broker, router, stop = InMemoryBroker(), TopicRouter(), asyncio.Event()
        running = asyncio.gather(*(serve(svc, broker, router, stop) for svc in services))
        try:
            placed = [await place(orders, f"order-{i}", qty=1, amount=10) for i in range(n)]
            assert {instance.state for instance in placed} == {"pending"}
            deadline = time.monotonic() + 60
            while True:  # until every saga has ended and every compensation has run
                try:
                    await asyncio.to_thread(
                        check_invariants, orders, stock, payments, initial=n // 2
                    )
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await running
        print(f"{n} orders: {sorted(_statuses(orders))}")
        for svc in services:
            svc.engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
