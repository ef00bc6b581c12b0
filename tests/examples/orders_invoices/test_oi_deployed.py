"""The system as separate processes on PostgreSQL, Redis and the Kafka-protocol broker.

One deployment (a `Supervisor` running ``serve`` children, exactly what ``up``
runs) is shared by the scenario tests; each checks the system-wide invariants
on everything that happened so far. ``test_up_command_*`` runs the ``up``
command itself, as a user would.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.orders_invoices.demo import ZIPS, post_order
from examples.orders_invoices.deployment import PORT_OFFSETS, SERVICE_NAMES, Options
from examples.orders_invoices.domain import DECLINED_CARD
from examples.orders_invoices.invariants import Snapshot, broken_invariants, read_deployed
from examples.orders_invoices.supervisor import ROOT, Settings, Supervisor

pytestmark = pytest.mark.integration

STOCK = {"book": 600, "mug": 600, "poster": 600, "shirt": 6}
FAST_GROUPS = {"session.timeout.ms": "2000", "heartbeat.interval.ms": "200"}


def free_base_port() -> int:
    """A base port whose whole layout is free now, below the kernel's ephemeral range
    (so no outgoing connection of another test takes one of them meanwhile)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        base = 10_000 + secrets.randbelow(low - 10_000 - 20)
        try:
            for offset in PORT_OFFSETS.values():
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range found")


def make_settings(kafka: str, postgres: str, redis: str) -> Settings:
    return Settings(
        kafka=kafka,
        postgres=postgres,
        redis=redis,
        namespace=f"oi_t{secrets.token_hex(3)}",
        base_port=free_base_port(),
        consumer_options=FAST_GROUPS,
        options=Options(saga_timeout=30.0, stock=STOCK),
    )


class Deployment:
    """The running system, seen from outside: its supervisor, addresses and state."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.settings = supervisor.settings
        self.addresses = self.settings.addresses()
        self.orders_db = self.settings.environment().engine("orders")
        self.gateway = httpx.Client(base_url=self.addresses["gateway"], timeout=30)
        self.placed: list[str] = []
        self._n = 0
        self._lock = threading.Lock()

    def url(self, peer: str, path: str) -> str:
        return self.addresses[peer] + path

    def snapshot(self) -> Snapshot:
        return read_deployed(self.addresses, self.orders_db, STOCK)

    def settle(self, timeout: float = 90.0) -> list[str]:
        """Wait until every invariant holds (everything drained); return what is still broken."""
        deadline = time.monotonic() + timeout
        while True:
            broken = broken_invariants(self.snapshot())
            if not broken or time.monotonic() > deadline:
                return broken
            time.sleep(0.5)

    def order(self, *, card: str = "tok_visa", items: list[dict[str, Any]] | None = None) -> str:
        """POST /orders, then the same request again with the same key (a lost response)."""
        with self._lock:
            self._n += 1
            n = self._n
        body = {
            "customer": f"c{n}@shop.example",
            "zip": ZIPS[n % len(ZIPS)],
            "card": card,
            "items": items or [{"sku": "book", "qty": 1 + n % 2}, {"sku": "mug", "qty": 1}],
        }
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        with httpx.Client(base_url=self.addresses["gateway"], timeout=30) as http:
            first = post_order(http, body, headers)
            assert first.status_code == 201, first.text
            again = post_order(http, body, headers)
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        with self._lock:
            self.placed.append(first.json()["id"])
        return str(first.json()["id"])

    def place(self, n: int, kinds: Callable[[int], dict[str, Any]] = lambda i: {}) -> list[str]:
        with ThreadPoolExecutor(6) as pool:
            return list(pool.map(lambda i: self.order(**kinds(i)), range(n)))

    def close(self) -> None:
        self.gateway.close()
        self.orders_db.dispose()


@pytest.fixture(scope="module")
def deployed(
    kafka_bootstrap: str,
    postgres_dsn: str,
    _redis_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    settings = make_settings(kafka_bootstrap, postgres_dsn, _redis_server)
    logs = tmp_path_factory.mktemp("oi-logs")
    supervisor = Supervisor(settings, log_dir=logs, say=lambda line: None)
    stop = threading.Event()
    watcher = threading.Thread(target=supervisor.watch, args=(stop,), daemon=True)
    try:
        supervisor.start(timeout=90)
        watcher.start()
        deployment = Deployment(supervisor)
        yield deployment
        deployment.close()
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(5)
        supervisor.shutdown()
        settings.environment().drop(SERVICE_NAMES)


def correios(deployed: Deployment, mode: str, **seconds: float) -> None:
    response = httpx.put(deployed.url("correios", "/_mode"), json={"mode": mode, **seconds})
    response.raise_for_status()


def test_bff_answers_partially_while_invoices_is_down(deployed: Deployment) -> None:
    order_id = deployed.order()
    assert deployed.settle() == []
    full = deployed.gateway.get(f"/bff/orders/{order_id}").json()
    assert full["partial"] is False
    assert full["invoice"]["order_id"] == order_id

    deployed.supervisor.stop("invoices")
    try:
        down = deployed.gateway.get(f"/bff/orders/{order_id}")
        assert down.status_code == 200
        body = down.json()
        assert body["partial"] is True
        assert body["missing"] == [{"part": "invoice", "reason": "invoices unreachable"}]
        assert body["invoice"] is None
        assert body["order"]["status"] == "confirmed"
        assert body["payment"]["charge_id"] == full["payment"]["charge_id"]
    finally:
        deployed.supervisor.spawn("invoices")
        deployed.supervisor.wait_healthy(["invoices"])
    time.sleep(2.1)  # the gateway's invoices breaker may have opened: its open period
    again = deployed.gateway.get(f"/bff/orders/{order_id}").json()
    assert again["partial"] is False


def test_200_orders_with_chaos_keep_every_invariant(deployed: Deployment) -> None:
    started = time.monotonic()
    supervisor = deployed.supervisor
    crashing = replace(
        supervisor.settings, options=replace(supervisor.settings.options, crash_after_charge=3)
    )
    supervisor.restart(
        "payments", settings=crashing
    )  # the next three charges die after Stripe answered
    correios(deployed, "slow", slow_seconds=1.0)
    try:

        def kind(i: int) -> dict[str, Any]:
            if i % 40 == 7:
                return {"card": DECLINED_CARD}
            if i % 50 == 11:
                return {"items": [{"sku": "shirt", "qty": 4}]}  # 6 on the shelf: some run out
            return {}

        ids = deployed.place(200, kind)
        assert len(set(ids)) == 200  # 200 duplicate POSTs replayed, none created an order
        correios(deployed, "ok")
        assert deployed.settle() == []
    finally:
        correios(deployed, "ok")
    snap = deployed.snapshot()
    mine = [o for o in snap.orders if o["id"] in set(ids)]
    assert len(mine) == 200
    counts: dict[str, int] = {}
    for order in mine:
        counts[order["status"]] = counts.get(order["status"], 0) + 1
    assert set(counts) == {"confirmed", "cancelled"}
    reasons = {o["reason"] for o in mine if o["status"] == "cancelled"}
    assert {"payment_failed", "out_of_stock"} <= reasons
    # The crashes happened: the first charge died three times after Stripe answered, and
    # each redelivery asked Stripe again with the same key (which kept one charge).
    requests = httpx.get(deployed.url("stripe", "/_requests")).json()
    keys = [key for op, key in requests if op == "charges"]
    assert max(keys.count(k) for k in keys) == 4
    stats = httpx.get(deployed.url("logistics", "/stats")).json()
    assert stats["fallbacks"]  # slow Correios answers were replaced by cached / flat prices
    print(
        f"\n200 orders with chaos: {counts} in {time.monotonic() - started:.1f} s; "
        f"logistics {stats['sources']}, fallbacks {stats['fallbacks']}"
    )


def test_sigkill_invoices_mid_run_loses_nothing_and_issues_nothing_twice(
    deployed: Deployment,
) -> None:
    supervisor = deployed.supervisor
    before = len(httpx.get(deployed.url("invoices", "/invoices")).json())
    restarts = supervisor.restarts["invoices"]
    victim = supervisor.children["invoices"].process
    with ThreadPoolExecutor(1) as background:
        placing = background.submit(deployed.place, 20)
        deadline = time.monotonic() + 60
        while (seen := len(httpx.get(deployed.url("invoices", "/invoices")).json())) < before + 4:
            assert time.monotonic() < deadline, "invoices did not start issuing"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        # Mid-run: some of those 20 orders were still to be invoiced when it died ...
        assert seen < before + 20, "every invoice was out before the kill: not mid-run"
        placed = deployed.place(20)  # ... and orders keep coming while it is down
        placed += placing.result(timeout=120)
    deadline = time.monotonic() + 30
    while supervisor.restarts["invoices"] == restarts:  # the supervisor notices and restarts it
        assert time.monotonic() < deadline, "the supervisor did not restart invoices"
        time.sleep(0.1)
    assert victim.returncode == -signal.SIGKILL  # it died of our kill, not of something else
    assert supervisor.pid("invoices") != victim.pid
    supervisor.wait_healthy(["invoices"])
    assert deployed.settle() == []
    snap = deployed.snapshot()
    numbers = [i["number"] for i in snap.invoices]
    assert numbers == list(range(1, len(numbers) + 1))  # no gap, no duplicate
    invoiced = {i["order_id"] for i in snap.invoices}
    confirmed = {o["id"] for o in snap.orders if o["status"] == "confirmed"}
    assert invoiced == confirmed
    assert len(numbers) > seen  # issuing went on after the restart
    assert set(placed) <= {o["id"] for o in snap.orders}


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "requests": len(samples),
        "p50_ms": round(sorted(samples)[len(samples) // 2] * 1000, 1),
        "p99_ms": round(p99(samples) * 1000, 1),
        "max_ms": round(max(samples) * 1000, 1),
    }


def keep_measurement(name: str, record: dict[str, Any]) -> None:
    """Save *record* under ``$RESILIENCE_ARTIFACTS`` (CI sets it): the run's numbers
    stay next to its log, for the docs' table to be checked against."""
    artifacts = os.environ.get("RESILIENCE_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        stamped = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        (Path(artifacts) / name).write_text(json.dumps(stamped, indent=2) + "\n")


def measure_get_order(
    deployed: Deployment, order_id: str, seconds: float, sources: list[str]
) -> list[float]:
    """GET /orders/{id} latencies while 24 clients keep asking the BFF (delivery estimate
    included, its ``source`` appended to *sources*); Correios is healed at the end so that
    the clients' last calls drain."""
    stop = threading.Event()

    def bff_client() -> None:
        with httpx.Client(base_url=deployed.addresses["gateway"], timeout=60) as http:
            while not stop.is_set():
                estimate = http.get(f"/bff/orders/{order_id}").json()["delivery_estimate"]
                sources.append(estimate["source"] if estimate else "missing")
                stop.wait(0.5)

    latencies: list[float] = []
    with (
        ThreadPoolExecutor(24) as pool,
        httpx.Client(base_url=deployed.addresses["gateway"], timeout=60) as prober,
    ):
        clients = [pool.submit(bff_client) for _ in range(24)]
        time.sleep(0.5)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            assert prober.get(f"/orders/{order_id}").status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.05)
        stop.set()
        correios(deployed, "ok")
        for client in clients:
            client.result(timeout=120)
    return latencies


def test_correios_dead_breaker_opens_and_get_order_stays_fast(deployed: Deployment) -> None:
    """The last test on the shared deployment: it leaves gateway and logistics bare."""
    dead = 3.0
    order_id = deployed.order()
    assert deployed.settle() == []
    supervisor = deployed.supervisor
    before = httpx.get(deployed.url("logistics", "/stats")).json()
    correios(deployed, "dead", dead_seconds=dead)
    try:
        sources: list[str] = []
        with_policies = measure_get_order(deployed, order_id, 4.0, sources)
        stats = httpx.get(deployed.url("logistics", "/stats")).json()
        assert ["closed", "open"] in stats["transitions"][len(before["transitions"]) :]
        opened = before["fallbacks"].get("CircuitOpenError", 0)
        assert stats["fallbacks"]["CircuitOpenError"] > opened  # answered without calling
        assert sources.count("cache") + sources.count("flat_rate") > len(sources) / 2

        bare = replace(
            supervisor.settings, options=replace(supervisor.settings.options, policies=False)
        )
        supervisor.restart("logistics", "gateway", settings=bare)
        correios(deployed, "dead", dead_seconds=dead)
        without_policies = measure_get_order(deployed, order_id, 6.0, [])
    finally:
        correios(deployed, "ok")
    fast, slow = p99(with_policies), p99(without_policies)
    print(
        f"\nGET /orders/{{id}} p99 while Correios is dead ({dead:.0f} s per call) and 24 clients "
        f"use the BFF: with policies {fast * 1000:.0f} ms ({len(with_policies)} requests), "
        f"without {slow * 1000:.0f} ms ({len(without_policies)} requests)"
    )
    keep_measurement(
        "orders_invoices_get_order_p99.json",
        {
            "correios_dead_seconds": dead,
            "with_policies": summary(with_policies),
            "without_policies": summary(without_policies),
        },
    )
    assert fast < dead / 4  # the breaker and the fallback keep the gateway's workers free
    assert slow > dead / 2  # without them, its workers wait on Correios and so does everyone


def test_up_command_starts_everything_and_stops_on_sigterm(
    kafka_bootstrap: str, postgres_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(kafka_bootstrap, postgres_dsn, redis_url)
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "examples.orders_invoices", "up", *settings.argv()],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        addresses = settings.addresses()
        pids: dict[str, int] = {}
        deadline = time.monotonic() + 90
        with httpx.Client(timeout=2) as http:
            for name in (*SERVICE_NAMES, "stripe", "correios", "mailbox"):
                while name not in pids:
                    assert up.poll() is None, (tmp_path / "up.log").read_text()
                    assert time.monotonic() < deadline, f"{name} never answered /health"
                    try:
                        pids[name] = http.get(addresses[name] + "/health").json()["pid"]
                    except httpx.HTTPError:
                        time.sleep(0.2)
        assert len(set(pids.values())) == len(SERVICE_NAMES) + 1  # the fakes share a process
        while "stop with ^C or SIGTERM" not in (tmp_path / "up.log").read_text():
            assert time.monotonic() < deadline, "up did not report the system as up"
            time.sleep(0.1)
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # every child is gone
        output = (tmp_path / "up.log").read_text()
        assert f"gateway    {addresses['gateway']}" in output  # the port layout is printed
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        log.close()
        settings.environment().drop(SERVICE_NAMES)
