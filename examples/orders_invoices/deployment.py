"""Which services exist, how each is built, and where each listens.

`build` is the one place a service is constructed, for the embedded system
and for ``serve`` alike: the environment (SQLite + in-memory broker, or
PostgreSQL + Kafka + Redis) and the peers' addresses are its arguments.

Port layout for ``up`` / ``serve`` (``--base-port``, default 8700)::

    gateway   +0    invoices  +4    fake Stripe    +10
    orders    +1    email     +5    fake Correios  +11
    stock     +2    logistics +6    SMTP sink      +12  (SMTP)
    payments  +3                    mailbox        +13  (HTTP view of the sink)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from examples.orders_invoices._environment import Environment
from examples.orders_invoices._service import Service
from examples.orders_invoices.domain import INITIAL_STOCK
from examples.orders_invoices.emails import EmailService
from examples.orders_invoices.gateway import GatewayService
from examples.orders_invoices.invoices import InvoicesService
from examples.orders_invoices.logistics import LogisticsService
from examples.orders_invoices.orders import OrdersService
from examples.orders_invoices.payments import PaymentsService
from examples.orders_invoices.stock import StockService

SERVICES: tuple[type[Service], ...] = (
    LogisticsService,
    StockService,
    PaymentsService,
    InvoicesService,
    EmailService,
    OrdersService,
    GatewayService,
)
"""Every service, in boot order (a service's HTTP peers come before it)."""

SERVICE_NAMES = tuple(service.name for service in SERVICES)

GATEWAY_UPSTREAMS = ("orders", "invoices", "payments", "logistics", "stock")

DEFAULT_BASE_PORT = 8700

PORT_OFFSETS: Mapping[str, int] = {
    "gateway": 0,
    "orders": 1,
    "stock": 2,
    "payments": 3,
    "invoices": 4,
    "email": 5,
    "logistics": 6,
    "stripe": 10,
    "correios": 11,
    "smtp": 12,
    "mailbox": 13,
}


def ports(base_port: int) -> dict[str, int]:
    """The port of every service and fake for *base_port*."""
    if not 1024 <= base_port <= 65535 - max(PORT_OFFSETS.values()):
        raise ValueError(f"base port {base_port} leaves the layout outside 1024..65535")
    return {name: base_port + offset for name, offset in PORT_OFFSETS.items()}


def peers(base_port: int) -> dict[str, str]:
    """Addresses by name: ``http://127.0.0.1:PORT`` for HTTP, ``127.0.0.1:PORT`` for SMTP."""
    return {
        name: f"127.0.0.1:{port}" if name == "smtp" else f"http://127.0.0.1:{port}"
        for name, port in ports(base_port).items()
    }


@dataclass(frozen=True)
class Options:
    """Behaviour switches, the same for every way of running the system.

    Attributes:
        saga_timeout: seconds an order may stay open before it is cancelled.
        crash_after_charge: how many charges die after Stripe answered (payments).
        policies: False turns the gateway's and logistics' timeouts,
            breakers and fallbacks off (the comparison the docs measure).
        stock: units on the shelves when the stock service first starts.
    """

    saga_timeout: float = 20.0
    crash_after_charge: int = 0
    policies: bool = True
    stock: Mapping[str, int] = field(default_factory=lambda: dict(INITIAL_STOCK))

    def __post_init__(self) -> None:
        if not self.saga_timeout > 0:
            raise ValueError("saga_timeout must be > 0 seconds")
        if self.crash_after_charge < 0:
            raise ValueError("crash_after_charge must be >= 0")
        if any(units < 0 for units in self.stock.values()):
            raise ValueError("stock levels must be >= 0")


def build(name: str, env: Environment, addresses: Mapping[str, str], options: Options) -> Service:
    """Construct service *name* (not started); *addresses* names its peers."""
    if name == "logistics":
        return LogisticsService(env, addresses["correios"], policies=options.policies)
    if name == "stock":
        return StockService(env, initial=options.stock)
    if name == "payments":
        return PaymentsService(
            env, addresses["stripe"], crash_after_charge=options.crash_after_charge
        )
    if name == "invoices":
        return InvoicesService(env, addresses["logistics"])
    if name == "email":
        return EmailService(env, addresses["smtp"])
    if name == "orders":
        return OrdersService(env, saga_timeout=options.saga_timeout)
    if name == "gateway":
        upstreams = {peer: addresses[peer] for peer in GATEWAY_UPSTREAMS}
        return GatewayService(env, upstreams, policies=options.policies)
    raise ValueError(f"no service {name!r}; there are {', '.join(SERVICE_NAMES)}")
