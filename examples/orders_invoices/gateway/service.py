"""The gateway service: routes, BFF and idempotent order creation (see the package docstring)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse

from examples.orders_invoices._environment import Environment
from examples.orders_invoices._infra import UNPROTECTED_TIMEOUT, ProblemError, http_client, problem
from examples.orders_invoices._service import Service
from examples.orders_invoices.domain import CreateOrder
from resilience import CircuitOpenError
from resilience.idempotency import IdempotencyMiddleware, authorization_principal
from resilience.policies import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerEvent


class UpstreamError(Exception):
    """An upstream service could not answer: down, too slow, 5xx, or its breaker is open."""

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason


@dataclass
class Route:
    """One upstream service: where it is, how long we wait, and its breaker (if any)."""

    name: str
    url: str
    timeout: float
    breaker: CircuitBreaker | None


TIMEOUTS = {"orders": 2.0, "invoices": 0.5, "payments": 0.5, "logistics": 1.0, "stock": 0.5}
"""Seconds the gateway waits for each upstream."""

WORKER_THREADS = 16


class GatewayService(Service):
    """The gateway (see the module docstring)."""

    name = "gateway"

    def __init__(
        self, env: Environment, upstreams: dict[str, str], *, policies: bool = True
    ) -> None:
        super().__init__(env, threads=WORKER_THREADS)
        self.policies = policies
        self.transitions: list[tuple[str, str, str]] = []
        config = CircuitBreakerConfig(
            minimum_calls=3, window_size=10, open_duration=2.0, permitted_calls_in_half_open=1
        )
        self.routes = {
            name: Route(
                name,
                url,
                TIMEOUTS[name] if policies else UNPROTECTED_TIMEOUT,
                CircuitBreaker(f"gateway-{name}", config, listeners=[self._on_breaker])
                if policies
                else None,
            )
            for name, url in upstreams.items()
        }
        self.http = http_client(timeout=2.0)
        self.clients.append(self.http)
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="bff")
        self.store = env.idempotency_store(self.name, self.engine, self.metadata)
        self.app.add_middleware(
            IdempotencyMiddleware,
            store=self.store,
            methods={"POST"},
            routes=[r"/orders"],
            required=True,
        )

        @self.app.exception_handler(UpstreamError)
        async def _upstream(_request: Request, exc: UpstreamError) -> JSONResponse:
            return problem(
                503, "Service unavailable", str(exc), service=exc.service, reason=exc.reason
            )

        self.app.post("/orders")(self.create_order)
        self.app.get("/orders/{order_id}")(self.get_order)
        self.app.get("/invoices/{order_id}")(self.get_invoice)
        self.app.get("/bff/orders/{order_id}")(self.bff_order)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        super().close()

    def _on_breaker(self, event: CircuitBreakerEvent) -> None:
        if event.kind == "state_change" and event.from_state is not None:
            self.transitions.append((event.name, event.from_state.value, event.state.value))

    def call(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call *service* through its timeout and breaker; 4xx answers are returned, not raised."""
        route = self.routes[service]

        def attempt() -> httpx.Response:
            try:
                response = self.http.request(
                    method, route.url + path, timeout=route.timeout, **kwargs
                )
            except httpx.TimeoutException as exc:
                raise UpstreamError(service, "timeout") from exc
            except httpx.TransportError as exc:
                raise UpstreamError(service, "unreachable") from exc
            if response.status_code >= 500:
                raise UpstreamError(service, f"answered {response.status_code}")
            return response

        if route.breaker is None:
            return attempt()
        try:
            result: httpx.Response = route.breaker.call(attempt)
        except CircuitOpenError as exc:
            raise UpstreamError(service, "circuit_open") from exc
        return result

    def _forward(self, response: httpx.Response) -> JSONResponse:
        return JSONResponse(
            response.json(),
            status_code=response.status_code,
            media_type=response.headers.get("content-type", "application/json"),
        )

    def create_order(self, body: CreateOrder, request: Request) -> JSONResponse:
        # The middleware stores no 5xx, so a client retries an order whose upstream call
        # timed out. Orders may have created it anyway: it gets a key of its own, derived
        # from the client's key and principal (the middleware's scope), and answers a
        # repeat with the order it already has instead of a second one.
        key = request.headers["Idempotency-Key"]  # required=True: the middleware checked
        upstream_key = hashlib.sha256(
            f"{authorization_principal(request.scope)}\n{key}".encode()
        ).hexdigest()
        return self._forward(
            self.call(
                "orders",
                "POST",
                "/orders",
                json=body.model_dump(),
                headers={"Idempotency-Key": upstream_key},
            )
        )

    def get_order(self, order_id: str) -> JSONResponse:
        return self._forward(self.call("orders", "GET", f"/orders/{order_id}"))

    def get_invoice(self, order_id: str) -> JSONResponse:
        return self._forward(self.call("invoices", "GET", f"/invoices/{order_id}"))

    def bff_order(self, order_id: str) -> dict[str, Any]:
        response = self.call("orders", "GET", f"/orders/{order_id}")
        if response.status_code != 200:
            raise ProblemError(response.status_code, "Order not found", f"no order {order_id}")
        order = response.json()
        items = sum(int(line["qty"]) for line in order["items"])
        parts = {
            "invoice": self.pool.submit(self._part, "invoices", f"/invoices/{order_id}"),
            "payment": self.pool.submit(self._part, "payments", f"/payments/{order_id}"),
            "delivery_estimate": self.pool.submit(
                self._part, "logistics", f"/quotes?zip={order['zip']}&items={items}"
            ),
        }
        body: dict[str, Any] = {"order": order}
        missing: list[dict[str, str]] = []
        for part, future in parts.items():
            value, reason = future.result()
            body[part] = value
            if reason is not None:
                missing.append({"part": part, "reason": reason})
        body["partial"] = bool(missing)
        body["missing"] = missing
        return body

    def _part(self, service: str, path: str) -> tuple[Any, str | None]:
        """(value, None) on success, (None, None) when it does not exist yet, (None, why) when unavailable."""
        try:
            response = self.call(service, "GET", path)
        except UpstreamError as exc:
            return None, f"{service} {exc.reason}"
        if response.status_code == 404:
            return None, None
        return response.json(), None
