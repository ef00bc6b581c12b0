"""The whole system in one process: every service, the fakes, the broker.

Each service still has its own SQLite file, its own uvicorn server on a
loopback port, its own outbox relay thread and its own consumer threads; they
share only the `InMemoryBroker` (standing in for Kafka) and the process. HTTP
between services goes over real sockets, so stopping a service's server gives
its callers real "connection refused" errors.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from examples.orders_invoices._environment import LocalEnvironment
from examples.orders_invoices._service import Service
from examples.orders_invoices.deployment import SERVICE_NAMES, Options, build
from examples.orders_invoices.domain import FINAL_STATUSES, OrderStatus
from examples.orders_invoices.emails import EmailService
from examples.orders_invoices.fakes import FakeCorreios, FakeStripe, SmtpSink
from examples.orders_invoices.gateway import GatewayService
from examples.orders_invoices.invariants import Snapshot, broken_invariants, saga_states
from examples.orders_invoices.invoices import InvoicesService
from examples.orders_invoices.logistics import LogisticsService
from examples.orders_invoices.orders import OrdersService
from examples.orders_invoices.payments import PaymentsService
from examples.orders_invoices.stock import StockService
from resilience.messaging import InMemoryBroker

S = TypeVar("S", bound=Service)


class EmbeddedSystem:
    """Start everything with ``with EmbeddedSystem() as system:``; stop it on exit."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        saga_timeout: float = 20.0,
        options: Options | None = None,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="orders-invoices-")
            workdir = Path(self._tmp.name)
        self.workdir: Path = workdir
        self.broker = InMemoryBroker(partitions=4, visibility_timeout=10.0)
        self.env = LocalEnvironment(workdir, self.broker)
        self.stripe = FakeStripe()
        self.correios = FakeCorreios()
        self.smtp = SmtpSink()
        self.options = options or Options(saga_timeout=saga_timeout)
        self.services: dict[str, Service] = {}

    # The typed accessors the demo and the tests use.
    @property
    def orders(self) -> OrdersService:
        return self._get("orders", OrdersService)

    @property
    def stock(self) -> StockService:
        return self._get("stock", StockService)

    @property
    def payments(self) -> PaymentsService:
        return self._get("payments", PaymentsService)

    @property
    def invoices(self) -> InvoicesService:
        return self._get("invoices", InvoicesService)

    @property
    def logistics(self) -> LogisticsService:
        return self._get("logistics", LogisticsService)

    @property
    def email(self) -> EmailService:
        return self._get("email", EmailService)

    @property
    def gateway(self) -> GatewayService:
        return self._get("gateway", GatewayService)

    def _get(self, name: str, kind: type[S]) -> S:
        service = self.services[name]
        assert isinstance(service, kind)
        return service

    def start(self) -> EmbeddedSystem:
        self.stripe.server.start()
        self.correios.server.start()
        self.smtp.start()
        addresses = {
            "stripe": self.stripe.url,
            "correios": self.correios.url,
            "smtp": f"127.0.0.1:{self.smtp.port}",
        }
        for name in SERVICE_NAMES:  # boot order: each one's peers are up before it
            service = build(name, self.env, addresses, self.options)
            service.start()
            self.services[name] = service
            addresses[name] = service.url
        return self

    def stop(self) -> None:
        with ThreadPoolExecutor(len(self.services) or 1) as pool:  # each takes ~0.2 s
            list(pool.map(lambda service: service.stop(), self.services.values()))
        self.smtp.stop()
        self.correios.server.stop()
        self.stripe.server.stop()
        for service in self.services.values():
            service.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedSystem:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ waiting and checking

    def settled(self) -> bool:
        """Every order final, every confirmed order invoiced and mailed, every outbox empty."""
        counts = self.orders.counts()
        open_orders = sum(n for s, n in counts.items() if OrderStatus(s) not in FINAL_STATUSES)
        confirmed = counts.get(OrderStatus.CONFIRMED.value, 0)
        return (
            open_orders == 0
            and len(self.invoices.numbers()) == confirmed
            and self.email.count() == confirmed
            and all(s.outbox_pending() == 0 for s in self.services.values())
        )

    def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()

    def snapshot(self) -> Snapshot:
        """The facts the invariants are about, read from the services and the fakes."""
        return Snapshot(
            orders=self.orders.list_orders(),
            sagas=saga_states(self.orders.engine),
            charged=[c.order_id for c in self.stripe.active_charges()],
            invoices=self.invoices.list_invoices(),
            mails=[m["message_id"] for m in self.smtp.messages],
            stock=self.stock.levels(),
            initial_stock=self.options.stock,
        )

    def invariants(self) -> list[str]:
        """The broken invariants, as sentences (empty when all hold)."""
        return broken_invariants(self.snapshot())
