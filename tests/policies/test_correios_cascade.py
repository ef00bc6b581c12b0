"""The Correios cascade, end to end, over real HTTP on loopback.

A shipping service quotes freight by calling the postal API ("Correios") and
also serves an unrelated endpoint, all from one small worker pool. When the
postal API turns slow, an unprotected client ties up every worker waiting on
it and the unrelated endpoint starves: one slow dependency takes the whole
service down. With the pipeline (fallback + bulkhead + retry with budget +
circuit breaker + timeout) the slow API costs at most two workers for a
bounded time, customers get a flat-rate quote, the breaker opens, and once
the API is healthy again the breaker probes it and closes.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

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
    Timeout,
)
from resilience.testing import free_port

pytestmark = pytest.mark.integration  # a real HTTP server on loopback and a thread pool

SLOW_SECONDS = 2.0
UNRELATED_TIMEOUT = 1.0  # what the unrelated endpoint's own callers are willing to wait
QUOTE_INTERVAL = 0.05  # 20 quote requests per second
WORKERS = 8
UNRELATED_CALLERS = 4


# ----------------------------------------------------------------------------- the postal API


class _Handler(BaseHTTPRequestHandler):
    server: _PostalServer

    def do_GET(self) -> None:
        mode = self.server.api.mode
        if mode == "slow":
            time.sleep(SLOW_SECONDS)
        if mode == "error":
            body, status = b'{"error": "internal"}', 500
        else:
            body, status = json.dumps({"price": "23.50", "source": "api"}).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _PostalServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: PostalAPI


class PostalAPI:
    """healthy | slow (2 s per answer) | error (HTTP 500) | down (connection refused)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "healthy"
        self._server: _PostalServer | None = None
        self._start()

    def _start(self) -> None:
        server = _PostalServer(("127.0.0.1", self.port), _Handler)
        server.api = self
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server

    def _stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set(self, mode: str) -> None:
        if mode == "down":
            self._stop()
        elif self._server is None:
            self._start()
        self.mode = mode

    def close(self) -> None:
        self._stop()


class PostalError(Exception):
    """The postal API answered 5xx."""


def make_client(port: int) -> Callable[[str], dict[str, str]]:
    def fetch_quote(zip_code: str) -> dict[str, str]:
        # A typical hand-written client: a generous socket timeout and nothing else.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", f"/quote?zip={zip_code}")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status >= 500:
            raise PostalError(response.status)
        result: dict[str, str] = json.loads(body)
        return result

    return fetch_quote


# ----------------------------------------------------------------------------- the service


@dataclass
class Report:
    unrelated: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    unrelated_timeouts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    quotes: dict[str, list[tuple[str, float]]] = field(default_factory=lambda: defaultdict(list))

    def p99(self, phase: str) -> float:
        values = sorted(self.unrelated[phase])
        assert values, f"no unrelated requests measured in phase {phase!r}"
        return values[math.ceil(0.99 * len(values)) - 1]

    def sources(self, phase: str) -> list[str]:
        return [source for source, _ in self.quotes[phase]]


def run_service(
    api: PostalAPI, quote: Callable[[str], dict[str, str]], phases: list[tuple[str, float]]
) -> Report:
    """Drive the service: quote traffic, unrelated traffic, and the API going through *phases*.

    Results are grouped by phase; a mode's second run is labelled ``"<mode>#2"``.
    """
    report = Report()
    lock = threading.Lock()
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="service")
    stop = threading.Event()
    phase = ["warmup"]

    def quote_endpoint(zip_code: str, submitted: float, at_phase: str) -> None:
        try:
            source = quote(zip_code)["source"]
        except Exception as exc:
            source = f"error:{type(exc).__name__}"
        with lock:
            report.quotes[at_phase].append((source, time.monotonic() - submitted))

    def unrelated_endpoint() -> int:
        return sum(range(2_000))  # e.g. "list my orders": fast, needs no postal API

    def quote_traffic() -> None:
        n = 0
        while not stop.wait(QUOTE_INTERVAL):
            n += 1
            pool.submit(quote_endpoint, f"{n:05d}-000", time.monotonic(), phase[0])

    def unrelated_caller() -> None:
        while not stop.is_set():
            at_phase = phase[0]
            started = time.monotonic()
            future = pool.submit(unrelated_endpoint)
            try:
                future.result(timeout=UNRELATED_TIMEOUT)
                latency = time.monotonic() - started
            except FutureTimeout:
                latency = UNRELATED_TIMEOUT
                with lock:
                    report.unrelated_timeouts[at_phase] += 1
            with lock:
                report.unrelated[at_phase].append(latency)
            stop.wait(0.02)

    drivers = [threading.Thread(target=quote_traffic)]
    drivers += [threading.Thread(target=unrelated_caller) for _ in range(UNRELATED_CALLERS)]
    for t in drivers:
        t.start()
    try:
        seen: set[str] = set()
        for mode, seconds in phases:
            api.set(mode)
            phase[0] = f"{mode}#2" if mode in seen else mode  # label a phase's second run
            seen.add(mode)
            time.sleep(seconds)
    finally:
        stop.set()
        for t in drivers:
            t.join(10)
        api.set("healthy")
        pool.shutdown(wait=True, cancel_futures=True)
    return report


@pytest.fixture
def api() -> Iterator[PostalAPI]:
    postal = PostalAPI()
    yield postal
    postal.close()


def test_without_protection_the_slow_api_takes_the_service_down(api: PostalAPI) -> None:
    report = run_service(api, make_client(api.port), [("healthy", 0.6), ("slow", 3.0)])
    healthy_p99 = report.p99("healthy")
    assert healthy_p99 < 0.5  # the service is fine while the API is
    assert set(report.sources("healthy")) == {"api"}
    # The cascade: every worker blocks on the postal API, the unrelated endpoint starves.
    assert report.p99("slow") >= UNRELATED_TIMEOUT
    # Its callers spent at least half of the 3 s phase waiting in vain (1 s per timeout).
    assert report.unrelated_timeouts["slow"] * UNRELATED_TIMEOUT >= 0.5 * UNRELATED_CALLERS * 3.0


def test_with_the_pipeline_the_service_survives_and_recovers(api: PostalAPI) -> None:
    transitions: list[tuple[str, str]] = []

    def on_breaker(event: CircuitBreakerEvent) -> None:
        if event.kind == "state_change":
            assert event.from_state is not None
            transitions.append((str(event.from_state.value), str(event.state.value)))

    breaker = CircuitBreaker(
        "correios",
        CircuitBreakerConfig(
            window_size=10,
            minimum_calls=5,
            failure_rate_threshold=50,
            open_duration=0.5,
            permitted_calls_in_half_open=2,
        ),
        listeners=[on_breaker],
    )

    def flat_rate(exc: BaseException, zip_code: str) -> dict[str, str]:
        return {"price": "19.90", "source": "flat"}

    logistics = Pipeline(
        Fallback(
            handler=flat_rate,
            on=(
                CircuitOpenError,
                BulkheadFullError,
                TimeoutExceededError,
                RetryBudgetExhaustedError,
                PostalError,
                ConnectionError,
            ),
        ),
        Bulkhead(2, name="correios"),
        Retry(
            on=(ConnectionError, PostalError, TimeoutExceededError),
            attempts=2,
            wait_initial=0.02,
            wait_max=0.05,
            budget=RetryBudget(ratio=0.2, min_retries_per_second=2, ttl=5),
            name="correios",
        ),
        breaker,
        Timeout(0.3, max_workers=4, name="correios"),
        name="logistics",
    )
    fetch_quote = make_client(api.port)
    report = run_service(
        api,
        lambda zip_code: logistics.call(fetch_quote, zip_code),
        [("healthy", 0.8), ("slow", 3.0), ("error", 0.8), ("down", 0.8), ("healthy", 2.5)],
    )
    # The unrelated endpoint never notices the postal API's troubles.
    for phase in ("healthy", "slow", "error", "down", "healthy#2"):
        assert report.p99(phase) < 0.5, (phase, report.p99(phase))
        assert report.unrelated_timeouts[phase] == 0, phase
    # Customers always got an answer, quickly: the real price or the flat rate.
    for phase in ("healthy", "slow", "error", "down", "healthy#2"):
        quotes = report.quotes[phase]
        assert quotes, phase
        assert all(source in {"api", "flat"} for source, _ in quotes), phase
        latencies = sorted(latency for _, latency in quotes)
        assert latencies[math.ceil(0.99 * len(latencies)) - 1] < 1.5, phase
    assert report.sources("slow").count("flat") > 0.8 * len(report.quotes["slow"])
    assert set(report.sources("down")) == {"flat"}
    # The breaker opened, probed, and closed again once the API recovered.
    assert ("closed", "open") in transitions
    reopened_at = max(i for i, t in enumerate(transitions) if t[1] == "open")
    assert ("half_open", "closed") in transitions[reopened_at:], transitions
    assert breaker.state.value == "closed"
    final = report.sources("healthy#2")
    assert final[-5:] == ["api"] * 5  # real quotes again at the end
