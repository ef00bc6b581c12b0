"""The logistics service: its HTTP API and the Correios pipeline (see the package docstring)."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from fastapi import Query

from examples.orders_invoices._environment import Environment
from examples.orders_invoices._infra import UNPROTECTED_TIMEOUT, ProblemError, http_client
from examples.orders_invoices._service import Service
from resilience import (
    BulkheadFullError,
    CircuitOpenError,
    RetryBudgetExhaustedError,
    TimeoutExceededError,
)
from resilience.policies import (
    Bulkhead,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerEvent,
    Fallback,
    Pipeline,
    Retry,
    RetryBudget,
    RetryDetails,
    Timeout,
)

FLAT_RATE_CENTS = 3_990
"""What we charge for shipping when Correios cannot tell us and we have no cached price."""


class CorreiosError(Exception):
    """Correios answered with an error status."""


class LogisticsService(Service):
    """The logistics service: ``GET /quotes?zip=&items=``."""

    name = "logistics"

    def __init__(self, env: Environment, correios_url: str, *, policies: bool = True) -> None:
        super().__init__(env)
        self.policies = policies
        self.correios = http_client(correios_url, timeout=2.0 if policies else UNPROTECTED_TIMEOUT)
        self.clients.append(self.correios)
        self.cache: dict[str, int] = {}
        self.transitions: list[tuple[str, str]] = []
        self.retries = 0
        self.fallbacks: dict[str, int] = {}
        self.sources: dict[str, int] = {}
        self._lock = threading.Lock()
        self.budget = RetryBudget(ratio=0.2, min_retries_per_second=1.0, ttl=5.0, name="correios")
        self.breaker = CircuitBreaker(
            "correios",
            CircuitBreakerConfig(
                minimum_calls=4, window_size=8, open_duration=1.0, permitted_calls_in_half_open=2
            ),
            listeners=[self._on_breaker],
        )
        self.pipeline = Pipeline(
            Fallback(
                handler=self._fallback,
                on=(
                    CircuitOpenError,
                    BulkheadFullError,
                    TimeoutExceededError,
                    RetryBudgetExhaustedError,
                    CorreiosError,
                    httpx.TransportError,
                ),
                name="correios",
            ),
            Bulkhead(8, name="correios"),
            Retry(
                on=(CorreiosError, httpx.TransportError, TimeoutExceededError),
                attempts=3,
                wait_initial=0.02,
                wait_max=0.1,
                budget=self.budget,
                on_retry=self._on_retry,
                name="correios",
            ),
            self.breaker,
            Timeout(0.3, name="correios"),
            name="correios",
        )
        self.app.get("/quotes")(self.quote_endpoint)
        self.app.get("/stats")(self.stats)

    def quote_endpoint(
        self,
        zip: str = Query(pattern=r"^\d{5}-?\d{3}$"),
        items: int = Query(ge=1, le=1000),
    ) -> dict[str, Any]:
        return self.quote(zip, items)

    def stats(self) -> dict[str, Any]:
        """What the pipeline did: breaker state and transitions, retries, quotes by source."""
        with self._lock:
            return {
                "policies": self.policies,
                "breaker": self.breaker.state.value,
                "transitions": [list(t) for t in self.transitions],
                "retries": self.retries,
                "fallbacks": dict(self.fallbacks),
                "sources": dict(self.sources),
            }

    def quote(self, zip_code: str, items: int) -> dict[str, Any]:
        """A shipping quote; ``source`` is ``correios``, ``cache`` or ``flat_rate``."""
        if not self.policies:
            return self._unprotected(zip_code, items)
        result: dict[str, Any] = self.pipeline.call(self._ask_correios, zip_code, items)
        with self._lock:
            self.sources[result["source"]] = self.sources.get(result["source"], 0) + 1
        return result

    def _ask_correios(self, zip_code: str, items: int) -> dict[str, Any]:
        response = self.correios.get(
            "/preco", params={"cep": zip_code.replace("-", ""), "itens": items}
        )
        if response.status_code != 200:
            raise CorreiosError(f"correios answered {response.status_code}")
        price = int(response.json()["valor_centavos"])
        with self._lock:
            self.cache[self._region(zip_code, items)] = price
        return {"price_cents": price, "source": "correios", "estimated": False}

    def _unprotected(self, zip_code: str, items: int) -> dict[str, Any]:
        try:
            return self._ask_correios(zip_code, items)
        except (CorreiosError, httpx.TransportError) as exc:
            raise ProblemError(502, "Correios unavailable", str(exc)) from exc

    def _fallback(self, exc: BaseException, zip_code: str, items: int) -> dict[str, Any]:
        with self._lock:
            kind = type(exc).__name__
            self.fallbacks[kind] = self.fallbacks.get(kind, 0) + 1
            cached = self.cache.get(self._region(zip_code, items))
        if cached is not None:
            return {"price_cents": cached, "source": "cache", "estimated": True}
        return {"price_cents": FLAT_RATE_CENTS, "source": "flat_rate", "estimated": True}

    @staticmethod
    def _region(zip_code: str, items: int) -> str:
        return f"{zip_code[0]}:{items}"

    def _on_retry(self, details: RetryDetails) -> None:
        with self._lock:
            self.retries += 1

    def _on_breaker(self, event: CircuitBreakerEvent) -> None:
        if event.kind == "state_change" and event.from_state is not None:
            with self._lock:
                self.transitions.append((event.from_state.value, event.state.value))
