"""Stand-ins for the outside world: a fake Stripe, a fake Correios and an SMTP sink.

They are real servers on loopback ports (HTTP via uvicorn, SMTP via aiosmtpd),
so the services talk to them over sockets exactly as they would to the real
thing, and the demo can make them slow or unreachable. When they run as their
own process (``serve fakes``) the same things are read and steered over HTTP:
``GET /v1/charges`` and ``GET /_requests`` on Stripe, ``PUT /_mode`` on
Correios, ``GET /messages`` on the mailbox next to the SMTP sink.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any, Literal
from urllib.parse import parse_qsl

from aiosmtpd.controller import Controller
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from examples.orders_invoices._infra import HttpServer, free_port
from examples.orders_invoices.domain import DECLINED_CARD


def fake_app(name: str) -> FastAPI:
    """A bare FastAPI app with ``GET /health``, like the services have."""
    app = FastAPI(title=name, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health")
    def _health() -> dict[str, str | int]:
        return {"status": "ok", "service": name, "pid": os.getpid()}

    return app


@dataclass
class Charge:
    """A charge the fake Stripe created."""

    id: str
    amount: int
    order_id: str
    refunded: bool = False


class FakeStripe:
    """Enough of Stripe's charges API to test money paths: ``POST /v1/charges``
    and ``POST /v1/refunds`` (form-encoded), the ``Idempotency-Key`` header
    (same key and same parameters replay the first answer; same key with other
    parameters is a 400 ``idempotency_error``), declines for
    ``tok_chargeDeclined``. Every request and charge is recorded.
    """

    def __init__(self, port: int = 0) -> None:
        self.charges: dict[str, Charge] = {}
        self.requests: list[tuple[str, str | None]] = []
        self._keys: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.app = fake_app("fake-stripe")
        self.app.post("/v1/charges")(self._charge)
        self.app.post("/v1/refunds")(self._refund)
        self.app.get("/v1/charges")(self._list)
        self.app.get("/_requests")(self._requests)
        self.server = HttpServer(self.app, "fake-stripe", port)

    @property
    def url(self) -> str:
        return self.server.url

    def active_charges(self) -> list[Charge]:
        """Charges not refunded: the money actually taken."""
        with self._lock:
            return [c for c in self.charges.values() if not c.refunded]

    def refunds(self) -> int:
        with self._lock:
            return sum(c.refunded for c in self.charges.values())

    def _list(self) -> dict[str, Any]:
        """Every charge (Stripe's list shape, without pagination)."""
        with self._lock:
            data = [
                {
                    "id": c.id,
                    "object": "charge",
                    "amount": c.amount,
                    "refunded": c.refunded,
                    "metadata": {"order_id": c.order_id},
                }
                for c in self.charges.values()
            ]
        return {"object": "list", "data": data, "has_more": False}

    def _requests(self) -> list[tuple[str, str | None]]:
        """Every request received, as (operation, Idempotency-Key)."""
        with self._lock:
            return list(self.requests)

    async def _charge(self, request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        return self._idempotent(request, "charges", form, self._create_charge)

    async def _refund(self, request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        return self._idempotent(request, "refunds", form, self._create_refund)

    def _idempotent(self, request: Request, op: str, form: dict[str, Any], fn: Any) -> JSONResponse:
        key = request.headers.get("idempotency-key")
        fingerprint = hashlib.sha256(repr((op, sorted(form.items()))).encode()).hexdigest()
        with self._lock:
            self.requests.append((op, key))
            if key is not None and key in self._keys:
                seen, status, body = self._keys[key]
                if seen != fingerprint:
                    return JSONResponse(
                        {"error": {"type": "idempotency_error", "message": "key reused"}}, 400
                    )
                return JSONResponse(body, status, headers={"Idempotent-Replayed": "true"})
            status, body = fn(form)
            if key is not None:
                self._keys[key] = (fingerprint, status, body)
        return JSONResponse(body, status)

    def _create_charge(self, form: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if form.get("source") == DECLINED_CARD:
            return 402, {"error": {"type": "card_error", "code": "card_declined"}}
        charge = Charge(
            f"ch_{len(self.charges) + 1:06d}",
            int(form["amount"]),
            str(form.get("metadata[order_id]", "")),
        )
        self.charges[charge.id] = charge
        return 200, {"id": charge.id, "object": "charge", "amount": charge.amount, "paid": True}

    def _create_refund(self, form: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        charge = self.charges.get(str(form.get("charge")))
        if charge is None:
            return 404, {"error": {"type": "invalid_request_error", "code": "resource_missing"}}
        if charge.refunded:
            return 400, {
                "error": {"type": "invalid_request_error", "code": "charge_already_refunded"}
            }
        charge.refunded = True
        return 200, {"id": f"re_{charge.id[3:]}", "object": "refund", "charge": charge.id}


CorreiosMode = Literal["ok", "slow", "down", "dead"]


class CorreiosChaos(BaseModel):
    """The body of ``PUT /_mode`` on the fake Correios."""

    mode: CorreiosMode
    slow_seconds: float = Field(default=1.0, ge=0, le=60)
    dead_seconds: float = Field(default=30.0, ge=0, le=600)


class FakeCorreios:
    """A postal price API (``GET /preco?cep=&itens=``), healthy or not on command.

    Modes: ``ok``; ``slow`` (answers after *slow_seconds*); ``down`` (503 at
    once); ``dead`` (takes the request and says nothing for *dead_seconds*,
    like a host that stopped answering, then 503).
    """

    def __init__(self, port: int = 0) -> None:
        self.mode: CorreiosMode = "ok"
        self.slow_seconds = 1.0
        self.dead_seconds = 30.0
        self.calls = 0
        self.app = fake_app("fake-correios")
        self.app.get("/preco")(self._price)
        self.app.put("/_mode")(self._set_mode)
        self.server = HttpServer(self.app, "fake-correios", port)

    @property
    def url(self) -> str:
        return self.server.url

    def _set_mode(self, chaos: CorreiosChaos) -> CorreiosChaos:
        self.mode, self.slow_seconds, self.dead_seconds = (
            chaos.mode,
            chaos.slow_seconds,
            chaos.dead_seconds,
        )
        return chaos

    async def _price(self, cep: str, itens: int) -> JSONResponse:
        self.calls += 1
        if self.mode == "down":
            return JSONResponse({"erro": "servico indisponivel"}, 503)
        if self.mode in ("slow", "dead"):
            await asyncio.sleep(self.slow_seconds if self.mode == "slow" else self.dead_seconds)
            if self.mode == "dead":
                return JSONResponse({"erro": "tempo esgotado"}, 503)
        region = int(cep[0])
        return JSONResponse({"cep": cep, "valor_centavos": 1_500 + 250 * region + 300 * itens})


@dataclass
class SmtpSink:
    """An SMTP server (aiosmtpd) that keeps every message it receives."""

    messages: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    _controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content)
        self.messages.append(
            {
                "to": ",".join(envelope.rcpt_tos),
                "subject": str(parsed["Subject"]),
                "message_id": str(parsed["Message-ID"]),
            }
        )
        return "250 Message accepted for delivery"

    def start(self) -> None:
        self.port = self.port or free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def mailbox(self, port: int = 0) -> HttpServer:
        """An HTTP server showing what was received: ``GET /messages``."""
        app = fake_app("mailbox")
        app.get("/messages")(lambda: list(self.messages))
        return HttpServer(app, "mailbox", port)


class Fakes:
    """The three fakes in one process (``serve fakes``), on the given ports."""

    def __init__(self, stripe: int, correios: int, smtp: int, mailbox: int) -> None:
        self.stripe = FakeStripe(stripe)
        self.correios = FakeCorreios(correios)
        self.smtp = SmtpSink(port=smtp)
        self.mailbox = self.smtp.mailbox(mailbox)

    def start(self) -> None:
        self.stripe.server.start()
        self.correios.server.start()
        self.smtp.start()
        self.mailbox.start()

    def stop(self) -> None:
        self.mailbox.stop()
        self.smtp.stop()
        self.correios.server.stop()
        self.stripe.server.stop()
