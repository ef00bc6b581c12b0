"""``python -m examples.codepix demo``: CodePix and two banks in one process, with outages.

No servers needed: SQLite files and the toolkit's in-memory broker stand in
for PostgreSQL and Kafka, and CodePix's gRPC server listens on a loopback
port. The demo registers keys, sends transfers while CodePix and then the
destination bank are down, refuses one to an unknown key, and prints the
final balances and every transfer's status history. Money is counted before
and after: the totals must match.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

import grpc
import sqlalchemy as sa

from examples.codepix.adapters.grpc_api import build_server
from examples.codepix.adapters.messaging import GROUP, TOPICS, CodePixWorker, WorkerOptions
from examples.codepix.adapters.sql import (
    ROUTER,
    create_engine,
    create_schema,
    tables,
    unit_of_work_factory,
)
from examples.codepix.application import RegisterBank
from examples.codepix.bank.adapters.codepix_grpc import GrpcPixRegistry
from examples.codepix.bank.adapters.sql import TO_CODEPIX
from examples.codepix.bank.domain import KNOWN_BANKS, BankProfile, TransferStatus, format_reais
from examples.codepix.bank.ports import CodePixUnavailableError
from examples.codepix.bank.service import BankNode
from examples.codepix.domain import BankAlreadyExistsError
from resilience.messaging import InMemoryBroker, RetryBackoff
from resilience.outbox import Backoff, RelayOptions

QUICK: Final = WorkerOptions(
    dead_letter_after=5,
    backoff=RetryBackoff(initial=0.02, maximum=0.2, jitter=0.02),
    relay=RelayOptions(
        name="codepix-relay",
        listen=False,
        idle_min=0.01,
        idle_max=0.05,
        max_attempts=10_000,
        backoff=Backoff(initial=0.02, maximum=0.2),
        failure_backoff=Backoff(initial=0.02, maximum=0.2),
    ),
    poll_timeout=0.05,
)
"""Short waits everywhere: a demo (and its tests) should not spend its time idling."""

FINAL: Final = frozenset({TransferStatus.COMPLETED, TransferStatus.ERROR})


class EmbeddedNetwork:
    """CodePix (gRPC + worker) and banks in one process; each can be stopped and started.

    Stopping CodePix stops its gRPC server and its worker: key registration
    then fails with 503 at the banks, and transfers wait in the broker. A
    stopped bank stops consuming: messages for it wait in its topic.
    """

    def __init__(
        self, workdir: Path, banks: tuple[BankProfile, ...], options: WorkerOptions = QUICK
    ) -> None:
        self.workdir = workdir
        self.options = options
        self.broker = InMemoryBroker(partitions=2)
        self.codepix_engine = create_engine(f"sqlite:///{workdir / 'codepix.sqlite3'}")
        create_schema(self.codepix_engine)
        self.codepix_uow = unit_of_work_factory(self.codepix_engine)
        for profile in banks:
            try:
                RegisterBank(self.codepix_uow)(profile.code, profile.name)
            except BankAlreadyExistsError:
                pass
        self.grpc_port = 0
        self._codepix: tuple[grpc.Server, CodePixWorker] | None = None
        self.start_codepix()
        self.banks = {p.code: self._bank(p) for p in banks}

    def _bank(self, profile: BankProfile) -> BankNode:
        engine = create_engine(f"sqlite:///{self.workdir / f'bank{profile.code}.sqlite3'}")
        return BankNode(
            profile,
            engine,
            GrpcPixRegistry(f"127.0.0.1:{self.grpc_port}", timeout=5.0),
            subscribe=lambda: self.broker.subscribe((profile.topic,), profile.topic),
            publisher=self.broker.publisher(router=TO_CODEPIX),
            options=self.options,
        ).start()

    @property
    def codepix_running(self) -> bool:
        return self._codepix is not None

    def start_codepix(self) -> None:
        server, self.grpc_port, _health = build_server(
            self.codepix_uow, f"127.0.0.1:{self.grpc_port}", max_workers=4
        )
        server.start()
        worker = CodePixWorker(
            self.codepix_engine,
            self.codepix_uow,
            self.broker.subscribe(TOPICS, GROUP),
            self.broker.publisher(router=ROUTER),
            self.options,
        ).start()
        self._codepix = (server, worker)

    def stop_codepix(self) -> None:
        if self._codepix is not None:
            server, worker = self._codepix
            self._codepix = None
            server.stop(grace=None).wait()
            worker.stop()

    def codepix_status(self, transfer_id: str) -> str | None:
        t = tables.transactions
        with self.codepix_engine.connect() as conn:
            return conn.execute(sa.select(t.c.status).where(t.c.id == transfer_id)).scalar()

    def total_cents(self) -> int:
        return sum(a.balance_cents for b in self.banks.values() for a in b.queries.accounts())

    def close(self) -> None:
        self.stop_codepix()
        for bank in self.banks.values():
            bank.stop()
            bank.registry.close()
            bank.engine.dispose()
        self.codepix_engine.dispose()


@dataclass
class _Printer:
    out: TextIO
    started: float

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {text}", file=self.out, flush=True)


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll *check* until it is true; TimeoutError after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout}s")
        time.sleep(0.02)


@contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="codepix-demo-") as tmp:
        yield Path(tmp)


def run_demo(*, transfers: int = 12, workdir: str | None = None, out: TextIO = sys.stdout) -> int:
    """Run the demo; returns 0 when every transfer ended and the money adds up."""
    say = _Printer(out, time.monotonic())
    with _workdir(workdir) as path:
        say(f"starting CodePix and banks 001 (BBX), 002 (CTD) in {path}")
        net = EmbeddedNetwork(path, (KNOWN_BANKS["001"], KNOWN_BANKS["002"]))
        try:
            return _scenario(net, max(transfers, 4), say)
        finally:
            net.close()


def _scenario(net: EmbeddedNetwork, transfers: int, say: Callable[[str], None]) -> int:
    bbx, ctd = net.banks["001"], net.banks["002"]
    ann = bbx.open_account("Ann", 100_000)
    bob = ctd.open_account("Bob", 50_000)
    bob_key = str(uuid.uuid4())
    bbx.register_key(ann.id, "email", "ann@bbx.example")
    ctd.register_key(bob.id, "random", bob_key)
    say(f"accounts: Ann @ BBX R$ 1000.00 (ann@bbx.example), Bob @ CTD R$ 500.00 ({bob_key})")
    before = net.total_cents()
    sent: list[tuple[BankNode, str]] = []

    def send(origin: BankNode, account: str, kind: str, key: str, cents: int) -> None:
        transfer = origin.send(
            account_id=account, pix_key_kind=kind, pix_key=key, amount_cents=cents
        ).transfer
        sent.append((origin, transfer.id))

    per_phase = transfers // 4
    say(f"phase 1: everyone up, {per_phase} transfers each way")
    for i in range(per_phase):
        send(bbx, ann.id, "random", bob_key, 1_000 + i)
        send(ctd, bob.id, "email", "ann@bbx.example", 500 + i)

    say("phase 2: CodePix DOWN; banks keep accepting transfers (they wait in the broker)")
    net.stop_codepix()
    try:
        ctd.register_key(bob.id, "email", "bob@ctd.example")
    except CodePixUnavailableError as exc:
        say(f"  registering a key now fails fast: {exc}")
    for i in range(per_phase):
        send(bbx, ann.id, "random", bob_key, 2_000 + i)
    say(f"  {_count(sent, TransferStatus.PENDING)} transfers pending; restarting CodePix")
    net.start_codepix()

    say("phase 3: destination bank CTD DOWN; BBX sends to Bob")
    ctd.stop()
    for i in range(per_phase):
        send(bbx, ann.id, "random", bob_key, 3_000 + i)
    wait_until(lambda: all(net.codepix_status(t) for _, t in sent[-per_phase:]))
    say("  CodePix registered them (pending); they wait in topic bank002; restarting CTD")
    ctd.start()

    say("phase 4: a transfer to a key nobody owns: CodePix refuses, BBX refunds once")
    send(bbx, ann.id, "email", "nobody@nowhere.example", 4_242)

    wait_until(lambda: all(_settled(net, origin, t) for origin, t in sent))
    say(f"all {len(sent)} transfers reached a final status at both banks and CodePix")
    return _report(net, sent, before, say)


def _settled(net: EmbeddedNetwork, origin: BankNode, transfer_id: str) -> bool:
    """Final at the origin; if it went through, completed at the destination and CodePix too."""
    status = origin.queries.transfer(transfer_id)[0].status
    if status is TransferStatus.ERROR:
        return True
    if status is not TransferStatus.COMPLETED or net.codepix_status(transfer_id) != "completed":
        return False
    return all(
        bank.queries.transfer(transfer_id)[0].status is TransferStatus.COMPLETED
        for bank in net.banks.values()
    )


def _count(sent: list[tuple[BankNode, str]], *statuses: TransferStatus) -> int:
    return sum(1 for bank, t in sent if bank.queries.transfer(t)[0].status in statuses)


def _report(
    net: EmbeddedNetwork,
    sent: list[tuple[BankNode, str]],
    before: int,
    say: Callable[[str], None],
) -> int:
    say("final balances:")
    for bank in net.banks.values():
        for account in bank.queries.accounts():
            say(
                f"  {bank.profile.name} {account.owner_name:<6} {format_reais(account.balance_cents):>12}"
            )
    after = net.total_cents()
    say(f"total before {before}, after {after} cents: {'OK' if before == after else 'MISMATCH'}")
    say("status history (origin bank | destination bank | CodePix):")
    for origin, transfer_id in sent:
        transfer, steps = origin.queries.transfer(transfer_id)
        out = " > ".join(str(s.status) for s in steps if s.direction == "out")
        dest = " > ".join(str(s.status) for s in steps if s.direction == "in")
        if not dest:
            other = next(b for b in net.banks.values() if b is not origin)
            try:
                dest = " > ".join(str(s.status) for s in other.queries.transfer(transfer_id)[1])
            except LookupError:
                dest = "-"
        reason = f" ({transfer.reason})" if transfer.reason else ""
        say(
            f"  {transfer_id[:8]} {origin.profile.name} {transfer.amount_cents:>6}c: {out}{reason}"
            f" | {dest} | {net.codepix_status(transfer_id) or '-'}"
        )
    return 0 if before == after else 1
