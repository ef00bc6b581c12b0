"""One bank, wired: its database, use cases, CodePix client, worker and web app.

`BankNode` is what both the process entrypoint (``python -m examples.codepix
bank``) and the embedded demo run; only the transports differ (Kafka or the
in-memory broker, PostgreSQL or SQLite).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from examples.codepix.adapters.messaging import Worker, WorkerOptions
from examples.codepix.bank.adapters.sql import OUTBOX, bank_unit_of_work, create_bank_schema
from examples.codepix.bank.application import (
    OpenAccount,
    Queries,
    ReceiveMessage,
    RegisterKey,
    SendTransfer,
)
from examples.codepix.bank.domain import BankProfile
from examples.codepix.bank.ports import PixRegistry
from resilience.messaging import Message, Publisher, Subscription


class BankNode:
    """A bank: use cases over its own database, plus the worker that talks to CodePix.

    Args:
        profile: who the bank is (code, name, colours).
        engine: the bank's own database.
        registry: CodePix's synchronous side (gRPC).
        subscribe: opens the subscription to ``bank<code>`` (called at each `start`).
        publisher: sends outbox rows to CodePix's topics.
        options: consumer / relay tuning (`WorkerOptions`).
    """

    def __init__(
        self,
        profile: BankProfile,
        engine: sa.Engine,
        registry: PixRegistry,
        *,
        subscribe: Callable[[], Subscription],
        publisher: Publisher,
        options: WorkerOptions | None = None,
    ) -> None:
        self.profile = profile
        self.engine = engine
        self.registry = registry
        create_bank_schema(engine)
        uow = bank_unit_of_work(engine)
        self.open_account = OpenAccount(profile, uow, registry)
        self.register_key = RegisterKey(uow, registry)
        self.send = SendTransfer(uow)
        self.receive = ReceiveMessage(profile, uow)
        self.queries = Queries(uow)
        self._subscribe = subscribe
        self._publisher = publisher
        base = options or WorkerOptions()
        self._options = dataclasses.replace(
            base, relay=dataclasses.replace(base.relay, name=f"{profile.topic}-relay")
        )
        self.worker: Worker | None = None

    def handle(self, message: Message) -> bool:
        """The consumer's handler: one message from CodePix, applied once."""
        return self.receive(message.id, message.type, message.payload)

    def start(self) -> BankNode:
        """Start consuming ``bank<code>`` and relaying the outbox."""
        if self.worker is None:
            self.worker = Worker(
                self.engine,
                OUTBOX,
                self._subscribe(),
                handler=self.handle,
                publisher=self._publisher,
                options=self._options,
                name=self.profile.topic,
            ).start()
        return self

    def stop(self) -> None:
        """Stop the worker (the database and the registry stay usable)."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop()

    def web_app(self) -> Any:
        """The bank's FastAPI app (pages and JSON API)."""
        from examples.codepix.bank.adapters.web import build_app

        return build_app(self)
