"""The proof: 500 transfers between two banks while CodePix and both banks are SIGKILLed.

Real processes (``python -m examples.codepix all`` and ``... bank --code 00X``),
one PostgreSQL database each (created for this run, dropped after), and a
Kafka-protocol broker of this test's own (so no other test's messages share
the fixed topic names). Afterwards, across all three databases:

- every transfer is ``completed`` or ``error``; nothing is stuck;
- the money across both banks is what it was before;
- no transfer was credited twice;
- every refused transfer was refunded exactly once, and never credited.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from examples.codepix.adapters.sql import create_engine, create_schema, unit_of_work_factory
from examples.codepix.adapters.sql import tables as codepix_tables
from examples.codepix.application import RegisterBank
from examples.codepix.bank.adapters.sql import accounts, entries, transfers

from resilience.testing import KafkaBroker, ServiceUnavailableError, free_port, postgres_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
TRANSFERS = 500
ACCOUNTS_PER_BANK = 4
DEPOSIT = 1_000_000
KAFKA_TUNING = (
    "session.timeout.ms=2000",
    "heartbeat.interval.ms=200",
    "max.poll.interval.ms=30000",
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture
def own_kafka() -> Iterator[KafkaBroker]:
    broker = KafkaBroker()
    try:
        broker.start()
    except ServiceUnavailableError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and the Kafka-protocol broker is unavailable: {exc}")
        pytest.skip(str(exc))
    for topic in ("transactions", "transaction_confirmation", "bank001", "bank002"):
        broker.create_topic(topic, 2)
    yield broker
    broker.stop()


@pytest.fixture
def databases(postgres_dsn: str) -> Iterator[dict[str, str]]:
    """Three fresh databases (CodePix, bank 001, bank 002), dropped afterwards."""
    admin = postgres_dsn.rsplit("/", 1)[0] + "/postgres"
    with (
        postgres_database(admin, prefix="cpx") as codepix,
        postgres_database(admin, prefix="bbx") as bbx,
        postgres_database(admin, prefix="ctd") as ctd,
    ):
        yield {
            name: dsn.replace("postgresql://", "postgresql+psycopg://", 1)
            for name, dsn in (("codepix", codepix), ("001", bbx), ("002", ctd))
        }


@dataclass
class Service:
    """A process we can SIGKILL and start again with the same command line."""

    name: str
    argv: list[str]
    log: Path
    ready: str  # URL answered once the process serves
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0
    log_files: list[Any] = field(default_factory=list)

    def start(self) -> None:
        out = self.log.open("ab")
        self.log_files.append(out)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "examples.codepix", *self.argv],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.ready, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the running process; fails if it was not running or died of something else."""
        assert self.process is not None
        assert self.process.poll() is None, f"{self.name} was already dead before the kill"
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL, f"{self.name} was not killed by SIGKILL"
        self.kills += 1

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            for out in self.log_files:
                out.close()


@pytest.fixture
def system(
    tmp_path: Path, databases: dict[str, str], own_kafka: KafkaBroker
) -> Iterator[dict[str, Service]]:
    engine = create_engine(databases["codepix"])
    create_schema(engine)
    RegisterBank(unit_of_work_factory(engine))("001", "BBX")
    RegisterBank(unit_of_work_factory(engine))("002", "CTD")
    engine.dispose()
    grpc_port = free_port()
    kafka = ["--kafka", own_kafka.bootstrap_servers]
    for setting in KAFKA_TUNING:
        kafka += ["--kafka-config", setting]
    services = {
        "codepix": Service(
            "codepix",
            ["--db", databases["codepix"], "all", "--grpc", f"127.0.0.1:{grpc_port}", *kafka],
            tmp_path / "codepix.log",
            ready="",  # probed over gRPC instead
        )
    }
    for code in ("001", "002"):
        port = free_port()
        services[code] = Service(
            f"bank{code}",
            [
                "bank",
                "--code",
                code,
                "--database",
                databases[code],
                "--codepix",
                f"127.0.0.1:{grpc_port}",
                "--http",
                f"127.0.0.1:{port}",
                *kafka,
            ],
            tmp_path / f"bank{code}.log",
            ready=f"http://127.0.0.1:{port}/health",
        )
    for service in services.values():
        service.start()
    try:
        _wait_grpc(grpc_port)
        for code in ("001", "002"):
            services[code].wait_ready()
        yield services
    finally:
        for service in services.values():
            if service.process is not None and service.process.poll() is None:
                service.process.kill()
                service.process.wait(10)
            for out in service.log_files:
                out.close()


def _wait_grpc(port: int) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=90)
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def base_url(service: Service) -> str:
    return service.ready.removesuffix("/health")


def _post(client: httpx.Client, url: str, body: dict[str, Any], deadline: float) -> httpx.Response:
    """POST until the bank answers (it may be down); the same body, so retries are safe."""
    while True:
        try:
            response = client.post(url, json=body)
            if response.status_code < 500:
                return response
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered for {body}")
        time.sleep(0.1)


def _setup_accounts(client: httpx.Client, banks: dict[str, str]) -> list[dict[str, Any]]:
    people = []
    for code, url in banks.items():
        for i in range(ACCOUNTS_PER_BANK):
            opened = client.post(
                f"{url}/api/accounts",
                json={"owner_name": f"Owner {code}-{i}", "deposit_cents": DEPOSIT},
            )
            assert opened.status_code == 201, opened.text
            account = opened.json()["id"]
            key = str(uuid.uuid4())
            registered = client.post(
                f"{url}/api/accounts/{account}/keys", json={"kind": "random", "key": key}
            )
            assert registered.status_code == 201, registered.text
            people.append({"bank": code, "account": account, "key": key})
    return people


def _check_bad_input(
    client: httpx.Client, url: str, person: dict[str, Any], other: dict[str, Any]
) -> None:
    """The bank's edges, over real HTTP: each mistake is a 4xx problem body, nothing moves."""
    good = {
        "account_id": person["account"],
        "pix_key_kind": "random",
        "pix_key": str(uuid.uuid4()),
        "amount_cents": 1,
    }
    for change, status in (
        ({"pix_key": "123"}, 422),
        ({"pix_key_kind": "cpf", "pix_key": "000.000.000-00"}, 422),
        ({"pix_key_kind": "email", "pix_key": "a@b"}, 422),
        ({"amount_cents": -100}, 422),
        ({"amount_cents": 10**18}, 422),
        ({"amount_cents": 1.5}, 422),
        ({"account_id": "no-such-account"}, 404),
    ):
        response = client.post(f"{url}/api/transfers", json={**good, **change})
        assert response.status_code == status, (change, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] or response.json()["errors"]
    refused = client.post(
        f"{url}/api/accounts/{person['account']}/keys",
        json={"kind": "random", "key": other["key"]},
    )
    assert refused.status_code == 422, refused.text  # CodePix: the other bank owns the key
    again = client.post(
        f"{url}/api/accounts/{person['account']}/keys",
        json={"kind": "random", "key": person["key"]},
    )
    assert again.status_code == 201, again.text  # our own key again: idempotent
    assert client.get(f"{url}/api/accounts/{person['account']}").json()["balance_cents"] == DEPOSIT


@dataclass
class Progress:
    """How many transfers the clients have had answered (the chaos thread paces on it)."""

    answered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tick(self) -> None:
        with self.lock:
            self.answered += 1


def _chaos(
    services: dict[str, Service],
    progress: Progress,
    stop: threading.Event,
    rng: random.Random,
    gates: dict[int, threading.Event],
    at_kill: list[int],
) -> None:
    """Kill each service twice, each kill at a random point *while transfers are being sent*,
    restart after a short outage. *gates* maps each kill's mark (a transfer index) to an event
    the sender of that transfer waits on, so the run cannot finish before the kill lands;
    *at_kill* gets the number answered at each kill, so the test can prove it."""
    victims = ["codepix", "001", "002"] * 2
    rng.shuffle(victims)
    for name, mark in zip(victims, sorted(gates), strict=True):
        while progress.answered < mark:
            if stop.wait(0.02):
                return
        at_kill.append(progress.answered)
        services[name].kill()
        gates[mark].set()
        time.sleep(rng.uniform(0.3, 2.0))
        services[name].start()


def test_500_transfers_survive_sigkills_of_codepix_and_both_banks(
    system: dict[str, Service], databases: dict[str, str]
) -> None:
    started = time.monotonic()
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "8")))
    banks = {code: base_url(system[code]) for code in ("001", "002")}
    with httpx.Client(timeout=5) as client:
        people = _setup_accounts(client, banks)
        _check_bad_input(client, banks["001"], people[0], people[-1])
    total_before = len(people) * DEPOSIT

    plan = []
    for i in range(TRANSFERS):
        origin = rng.choice(people)
        unknown = rng.random() < 0.08  # refused by CodePix: no such key
        target = rng.choice(people)  # sometimes the sender's own key: refused too
        plan.append(
            (
                banks[origin["bank"]],
                {
                    "id": f"chaos-{i:03d}",
                    "account_id": origin["account"],
                    "pix_key_kind": "random",
                    "pix_key": str(uuid.uuid4()) if unknown else target["key"],
                    "amount_cents": rng.randint(1, 5_000),
                },
            )
        )

    stop = threading.Event()
    progress = Progress()
    at_kill: list[int] = []
    # Kill points between 5 % and 85 % of the transfers.
    marks = rng.sample(range(TRANSFERS // 20, TRANSFERS * 85 // 100), 6)
    gates = {mark: threading.Event() for mark in marks}
    chaos = threading.Thread(
        target=_chaos, args=(system, progress, stop, rng, gates, at_kill), daemon=True
    )
    chaos.start()
    deadline = time.monotonic() + 120

    def send(client: httpx.Client, index: int) -> httpx.Response:
        if index in gates:  # this transfer goes out only once its kill has landed
            gates[index].wait(90)
        origin, body = plan[index]
        answer = _post(client, f"{origin}/api/transfers", body, deadline)
        progress.tick()
        return answer

    with httpx.Client(timeout=3) as client, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda index: send(client, index), range(TRANSFERS)))
    driven = time.monotonic()
    chaos.join(60)  # the last restart
    stop.set()
    # Every kill landed while transfers were still being sent (not after the run).
    assert len(at_kill) == 6, at_kill
    assert max(at_kill) < TRANSFERS, at_kill
    assert {a.status_code for a in answers} <= {200, 201}, {
        a.text for a in answers if a.status_code > 201
    }
    for code in ("001", "002"):
        system[code].wait_ready()
    assert [system[n].kills for n in ("codepix", "001", "002")] == [2, 2, 2]

    engines = {name: sa.create_engine(url) for name, url in databases.items()}
    try:
        _wait_settled(engines, timeout=120)
        settled = time.monotonic()
        _assert_invariants(engines, total_before)
    finally:
        for engine in engines.values():
            engine.dispose()
    for service in system.values():
        assert service.terminate() == 0, service.log.read_text()[-2000:]
    print(  # shown with -s: where the time goes
        f"driving {driven - started:.1f}s, settling {settled - driven:.1f}s, "
        f"total {time.monotonic() - started:.1f}s"
    )
    assert time.monotonic() - started < 180


def _rows(engine: sa.Engine, query: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(query))


def _wait_settled(engines: dict[str, sa.Engine], timeout: float) -> None:
    t, cp = transfers, codepix_tables.transactions
    deadline = time.monotonic() + timeout
    while True:
        open_at_banks = sum(
            len(
                _rows(
                    engines[code],
                    sa.select(t.c.id).where(
                        t.c.id.like("chaos-%"),
                        t.c.status.not_in(["completed", "error"])
                        | ((t.c.direction == "in") & (t.c.status != "completed")),
                    ),
                )
            )
            for code in ("001", "002")
        )
        open_at_codepix = len(
            _rows(engines["codepix"], sa.select(cp.c.id).where(cp.c.status != "completed"))
        )
        if open_at_banks == open_at_codepix == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"stuck: {open_at_banks} transfers open at the banks, {open_at_codepix} at CodePix"
            )
        time.sleep(0.5)


def _assert_invariants(engines: dict[str, sa.Engine], total_before: int) -> None:
    outgoing: dict[str, Any] = {}
    credits: dict[str, int] = {}
    debits: dict[str, int] = {}
    refunds: dict[str, int] = {}
    moved: dict[str, int] = {}  # transfer id -> sum of its signed entries
    total_after = 0
    for code in ("001", "002"):
        engine = engines[code]
        for row in _rows(engine, sa.select(transfers).where(transfers.c.direction == "out")):
            assert row.id not in outgoing, f"{row.id} sent by both banks"
            outgoing[row.id] = row
        for row in _rows(engine, sa.select(entries).where(entries.c.transfer_id.is_not(None))):
            ledger = {"credit": credits, "debit": debits, "refund": refunds}[row.kind]
            ledger[row.transfer_id] = ledger.get(row.transfer_id, 0) + 1
            moved[row.transfer_id] = moved.get(row.transfer_id, 0) + row.amount_cents
        for account in _rows(engine, sa.select(accounts)):
            posted = _rows(
                engine,
                sa.select(sa.func.coalesce(sa.func.sum(entries.c.amount_cents), 0)).where(
                    entries.c.account_id == account.id
                ),
            )[0][0]
            assert account.balance_cents == posted, "a balance disagrees with its entries"
            total_after += account.balance_cents

    assert sorted(outgoing) == [f"chaos-{i:03d}" for i in range(TRANSFERS)]
    assert total_after == total_before, "money was created or destroyed"
    # One entry per (transfer, kind) is also a unique constraint; the sums below are not:
    # a completed transfer moved exactly its amount, a failed one netted to zero.
    assert max(credits.values()) == 1, "a transfer was credited twice"
    assert max(debits.values()) == 1
    statuses = {tid: row.status for tid, row in outgoing.items()}
    completed = {tid for tid, s in statuses.items() if s == "completed"}
    failed = {tid for tid, s in statuses.items() if s == "error"}
    assert completed | failed == set(outgoing), "a transfer is neither completed nor error"
    assert set(credits) == completed, "credited and completed must be the same transfers"
    assert set(refunds) == failed, "every failed transfer refunded, no other"
    assert set(refunds.values()) == {1}, "a failed transfer was refunded twice"
    assert all(moved.get(tid) == 0 for tid in outgoing), "a transfer's entries do not net to zero"
    assert all(credits.get(tid) == 1 and debits.get(tid) == 1 for tid in completed), (
        "a completed transfer lacks its debit or its credit"
    )
    assert failed, "the plan includes refused transfers; none failed?"
    cp = codepix_tables.transactions
    at_codepix = {
        r.id: r.status for r in _rows(engines["codepix"], sa.select(cp.c.id, cp.c.status))
    }
    assert at_codepix == dict.fromkeys(completed, "completed")
