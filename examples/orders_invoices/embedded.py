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

import sqlalchemy as sa

from examples.orders_invoices._service import Service
from examples.orders_invoices.domain import FINAL_STATUSES, INITIAL_STOCK, OrderStatus
from examples.orders_invoices.emails import EmailService
from examples.orders_invoices.fakes import FakeCorreios, FakeStripe, SmtpSink
from examples.orders_invoices.gateway import GatewayService
from examples.orders_invoices.invoices import InvoicesService
from examples.orders_invoices.logistics import LogisticsService
from examples.orders_invoices.orders import OrdersService
from examples.orders_invoices.payments import PaymentsService
from examples.orders_invoices.stock import StockService
from resilience.messaging import InMemoryBroker

S = TypeVar("S", bound=Service)


class EmbeddedSystem:
    """Start everything with ``with EmbeddedSystem() as system:``; stop it on exit."""

    def __init__(self, workdir: Path | None = None, *, saga_timeout: float = 20.0) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="orders-invoices-")
            workdir = Path(self._tmp.name)
        self.workdir: Path = workdir
        self.broker = InMemoryBroker(partitions=4, visibility_timeout=10.0)
        self.stripe = FakeStripe()
        self.correios = FakeCorreios()
        self.smtp = SmtpSink()
        self.saga_timeout = saga_timeout
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
        wd, broker = self.workdir, self.broker
        logistics = LogisticsService(wd, broker, self.correios.url)
        self._boot(logistics)
        self._boot(StockService(wd, broker))
        self._boot(PaymentsService(wd, broker, self.stripe.url))
        self._boot(InvoicesService(wd, broker, logistics.url))
        self._boot(EmailService(wd, broker, self.smtp.port))
        self._boot(OrdersService(wd, broker, saga_timeout=self.saga_timeout))
        upstreams = {
            name: self.services[name].url
            for name in ("orders", "invoices", "payments", "logistics", "stock")
        }
        self._boot(GatewayService(wd, broker, upstreams))
        return self

    def _boot(self, service: Service) -> None:
        service.start()
        self.services[service.name] = service

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

    def invariants(self) -> list[str]:
        """The broken invariants, as sentences (empty when all hold)."""
        broken: list[str] = []
        orders = self.orders.list_orders()
        confirmed = {o["id"] for o in orders if o["status"] == OrderStatus.CONFIRMED.value}
        not_final = [o["id"] for o in orders if OrderStatus(o["status"]) not in FINAL_STATUSES]
        if not_final:
            broken.append(f"{len(not_final)} orders are neither confirmed nor cancelled")
        instances = self.orders.saga.store.tables.instances
        with self.orders.engine.connect() as conn:
            sagas = dict(conn.execute(sa.select(instances.c.saga_id, instances.c.state)).all())
        if sagas != {o["id"]: o["status"] for o in orders}:
            broken.append("order statuses disagree with their saga states")
        charged = [c.order_id for c in self.stripe.active_charges()]
        if sorted(charged) != sorted(confirmed):
            broken.append(
                f"Stripe holds {len(charged)} charges for {len(confirmed)} confirmed orders"
            )
        invoices = self.invoices.list_invoices()
        if sorted(i["order_id"] for i in invoices) != sorted(confirmed):
            broken.append(f"{len(invoices)} invoices for {len(confirmed)} confirmed orders")
        numbers = [i["number"] for i in invoices]
        if numbers != list(range(1, len(numbers) + 1)):
            broken.append(f"invoice numbers are not 1..{len(numbers)} without gaps: {numbers}")
        mailed = [m["message_id"] for m in self.smtp.messages]
        expected = sorted(f"<invoice-{n}@shop.example>" for n in numbers)
        if sorted(mailed) != expected:
            broken.append(f"{len(mailed)} emails for {len(numbers)} invoices")
        levels = self.stock.levels()
        by_order = {o["id"]: o for o in orders}
        held: dict[str, int] = {}
        for order_id in confirmed:
            for line in by_order[order_id]["items"]:
                held[line["sku"]] = held.get(line["sku"], 0) + int(line["qty"])
        for sku, initial in INITIAL_STOCK.items():
            available = levels["available"].get(sku, 0)
            reserved = levels["reserved"].get(sku, 0)
            if available + reserved != initial or reserved != held.get(sku, 0):
                broken.append(
                    f"stock of {sku}: {available} available + {reserved} reserved, started with "
                    f"{initial}, confirmed orders hold {held.get(sku, 0)}"
                )
        return broken
