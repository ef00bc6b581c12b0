"""Fixtures for the saga tests: the order saga sample and per-service PostgreSQL schemas."""

from __future__ import annotations

import importlib.util
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "sagas" / "order_saga.py"


@pytest.fixture(scope="session")
def order_saga() -> ModuleType:
    """The documented order saga (docs/sagas/order_saga.py), imported as a module."""
    spec = importlib.util.spec_from_file_location("order_saga_sample", SAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[Callable[[str], str]]:
    """Factory: a fresh schema per service on the session database; a URL using it."""
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url)
    created: list[str] = []

    def make(service: str) -> str:
        name = f"saga_{service}_{secrets.token_hex(4)}"
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        created.append(name)
        sep = "&" if "?" in postgres_url else "?"
        return f"{postgres_url}{sep}options=-csearch_path%3D{name}"

    yield make
    with admin.begin() as conn:
        for name in created:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    admin.dispose()


class Pump:
    """Moves events between services by hand: relay outboxes to a broker, deliver, ack."""

    def __init__(self, *services: object) -> None:
        from resilience.messaging import InMemoryBroker, TopicRouter
        from resilience.outbox import Relay

        self.broker = InMemoryBroker(partitions=1)
        router = TopicRouter()
        self.services = list(services)
        self.relays = [
            Relay(
                s.engine, s.participant.outbox, self.broker.publisher(), listen=False, lease_ttl=0.2
            )  # type: ignore[attr-defined]
            for s in services
        ]
        self.subs = [
            self.broker.subscribe(s.participant.destinations(router), s.participant.name)  # type: ignore[attr-defined]
            for s in services
        ]

    def run(self) -> int:
        """Deliver until nothing moves; returns how many messages were handled."""
        from resilience.messaging import decode_message

        handled = 0
        while True:
            moved = 0
            for relay in self.relays:
                moved += relay.run_once().published
            for svc, sub in zip(self.services, self.subs, strict=True):
                for delivery in sub.receive(100, 0.0):
                    svc.participant.handle(decode_message(delivery.raw))  # type: ignore[attr-defined]
                    sub.ack([delivery])
                    handled += 1
                    moved += 1
            if not moved:
                return handled


@pytest.fixture
def pump() -> type[Pump]:
    """The `Pump` class (construct it with the services to connect)."""
    return Pump
