"""The bank app in process: SQLite, the in-memory broker and CodePix's real gRPC server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import sqlalchemy as sa
from examples.codepix.adapters.grpc_api._generated import codepix_pb2, codepix_pb2_grpc
from examples.codepix.application import OpenAccount, RegisterPixKey
from examples.codepix.bank.adapters.sql import entries
from examples.codepix.bank.domain import (
    KNOWN_BANKS,
    BankProfile,
    Direction,
    InsufficientFundsError,
    Transfer,
    TransferConflictError,
    TransferStatus,
    parse_reais,
    profile_for,
)
from examples.codepix.bank.ports import CodePixUnavailableError
from examples.codepix.bank.process import HttpThread
from examples.codepix.bank.service import BankNode
from examples.codepix.demo import FINAL, EmbeddedNetwork, wait_until
from examples.codepix.domain import (
    IllegalTransitionError,
    InvalidAmountError,
    InvalidInputError,
    PixKeyAlreadyExistsError,
    TransactionNotFoundError,
)

from resilience.messaging import DLQ_REASON, Message

pytestmark = pytest.mark.integration  # loopback gRPC server, threads


@pytest.fixture
def net(tmp_path: Path) -> Iterator[EmbeddedNetwork]:
    network = EmbeddedNetwork(tmp_path, (KNOWN_BANKS["001"], KNOWN_BANKS["002"]))
    yield network
    network.close()


@pytest.fixture
def people(net: EmbeddedNetwork) -> dict[str, Any]:
    """Ann and Carl at BBX, Bob at CTD, each with a key."""
    bbx, ctd = net.banks["001"], net.banks["002"]
    ann, carl = bbx.open_account("Ann", 10_000), bbx.open_account("Carl", 0)
    bob = ctd.open_account("Bob", 5_000)
    keys = {"ann": str(uuid.uuid4()), "carl": str(uuid.uuid4()), "bob": str(uuid.uuid4())}
    bbx.register_key(ann.id, "random", keys["ann"])
    bbx.register_key(carl.id, "random", keys["carl"])
    ctd.register_key(bob.id, "random", keys["bob"])
    return {"ann": ann.id, "carl": carl.id, "bob": bob.id, "keys": keys}


def balance(bank: BankNode, account_id: str) -> int:
    return bank.queries.account(account_id).account.balance_cents


def settle(bank: BankNode, transfer_id: str) -> Transfer:
    wait_until(lambda: bank.queries.transfer(transfer_id)[0].status in FINAL)
    return bank.queries.transfer(transfer_id)[0]


def entry_kinds(bank: BankNode, transfer_id: str) -> list[str]:
    with bank.engine.connect() as conn:
        rows = conn.execute(sa.select(entries.c.kind).where(entries.c.transfer_id == transfer_id))
        return sorted(r.kind for r in rows)


def test_transfer_between_banks_completes_on_both_sides(
    net: EmbeddedNetwork, people: dict[str, Any]
) -> None:
    bbx, ctd = net.banks["001"], net.banks["002"]
    sent = bbx.send(
        account_id=people["ann"],
        pix_key_kind="random",
        pix_key=people["keys"]["bob"],
        amount_cents=1_234,
        description="rent",
    )
    assert sent.created
    assert balance(bbx, people["ann"]) == 10_000 - 1_234  # debited when sent
    assert settle(bbx, sent.transfer.id).status is TransferStatus.COMPLETED
    wait_until(lambda: ctd.queries.transfer(sent.transfer.id)[0].status in FINAL)
    incoming, steps = ctd.queries.transfer(sent.transfer.id)
    assert (incoming.direction, incoming.amount_cents) == (Direction.IN, 1_234)
    assert incoming.counterparty == "Ann @ 001"
    assert [str(s.status) for s in steps] == ["pending", "confirmed", "completed"]
    assert balance(ctd, people["bob"]) == 5_000 + 1_234
    _, origin_steps = bbx.queries.transfer(sent.transfer.id)
    assert [str(s.status) for s in origin_steps] == ["pending", "confirmed", "completed"]
    wait_until(lambda: net.codepix_status(sent.transfer.id) == "completed")
    statement = bbx.queries.account(people["ann"]).entries
    assert [(str(e.kind), e.amount_cents) for e in statement] == [
        ("debit", -1_234),
        ("deposit", 10_000),
    ]


def test_same_bank_transfer_goes_through_codepix_and_keeps_both_sides(
    net: EmbeddedNetwork, people: dict[str, Any]
) -> None:
    bbx = net.banks["001"]
    sent = bbx.send(
        account_id=people["ann"],
        pix_key_kind="random",
        pix_key=people["keys"]["carl"],
        amount_cents=700,
    )
    assert settle(bbx, sent.transfer.id).status is TransferStatus.COMPLETED
    wait_until(lambda: balance(bbx, people["carl"]) == 700)
    assert balance(bbx, people["ann"]) == 9_300
    assert entry_kinds(bbx, sent.transfer.id) == ["credit", "debit"]


def test_refused_transfer_is_refunded_exactly_once_despite_redeliveries(
    net: EmbeddedNetwork, people: dict[str, Any]
) -> None:
    net.broker.duplicate_deliveries(2)  # every message arrives three times
    bbx = net.banks["001"]
    sent = bbx.send(
        account_id=people["ann"],
        pix_key_kind="email",
        pix_key="nobody@example.com",
        amount_cents=2_500,
    )
    failed = settle(bbx, sent.transfer.id)
    assert failed.status is TransferStatus.ERROR
    assert "no email key" in (failed.reason or "")
    wait_until(lambda: net.broker.pending("bank001", "bank001") == 0)
    assert balance(bbx, people["ann"]) == 10_000
    assert entry_kinds(bbx, sent.transfer.id) == ["debit", "refund"]


def test_transfer_to_a_deactivated_key_is_refused_and_refunded_once(
    net: EmbeddedNetwork, people: dict[str, Any]
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{net.grpc_port}") as channel:
        stub = codepix_pb2_grpc.PixServiceStub(channel)
        request = codepix_pb2.DeactivatePixKeyRequest(kind="random", key=people["keys"]["bob"])
        assert stub.DeactivatePixKey(request, timeout=10).status == "inactive"
    net.broker.duplicate_deliveries(2)  # every message arrives three times
    bbx, ctd = net.banks["001"], net.banks["002"]
    sent = bbx.send(
        account_id=people["ann"],
        pix_key_kind="random",
        pix_key=people["keys"]["bob"],
        amount_cents=2_500,
    )
    failed = settle(bbx, sent.transfer.id)
    assert failed.status is TransferStatus.ERROR
    assert "inactive" in (failed.reason or "")
    wait_until(lambda: net.broker.pending("bank001", "bank001") == 0)
    assert balance(bbx, people["ann"]) == 10_000
    assert entry_kinds(bbx, sent.transfer.id) == ["debit", "refund"]
    assert balance(ctd, people["bob"]) == 5_000  # never credited
    assert net.codepix_status(sent.transfer.id) is None  # refused before it was registered


def test_destination_without_the_account_refuses_and_the_origin_is_refunded_once(
    net: EmbeddedNetwork, people: dict[str, Any]
) -> None:
    """CodePix knows the key's account, CTD's database does not: CTD answers, nothing is stuck."""
    OpenAccount(net.codepix_uow)(
        bank_code="002", account_id="002-ghost", number="999999", owner_name="Ghost"
    )
    ghost_key = str(uuid.uuid4())
    RegisterPixKey(net.codepix_uow)("random", ghost_key, "002-ghost")
    net.broker.duplicate_deliveries(2)  # every message arrives three times
    bbx, ctd = net.banks["001"], net.banks["002"]
    before = net.total_cents()
    sent = bbx.send(
        account_id=people["ann"], pix_key_kind="random", pix_key=ghost_key, amount_cents=2_500
    )
    failed = settle(bbx, sent.transfer.id)
    assert failed.status is TransferStatus.ERROR
    assert "002-ghost" in (failed.reason or "")
    wait_until(lambda: net.codepix_status(sent.transfer.id) == "error")
    wait_until(lambda: net.broker.pending("bank001", "bank001") == 0)
    assert balance(bbx, people["ann"]) == 10_000
    assert entry_kinds(bbx, sent.transfer.id) == ["debit", "refund"]
    assert net.total_cents() == before
    assert net.broker.dead_letters("bank002") == []  # answered, not dead-lettered
    with pytest.raises(TransactionNotFoundError):
        ctd.queries.transfer(sent.transfer.id)  # nothing was credited there


def test_sending_is_idempotent_by_transfer_id(net: EmbeddedNetwork, people: dict[str, Any]) -> None:
    bbx = net.banks["001"]
    request = {
        "account_id": people["ann"],
        "pix_key_kind": "random",
        "pix_key": people["keys"]["bob"],
        "amount_cents": 100,
        "transfer_id": "client-chosen-1",
    }
    assert bbx.send(**request).created
    again = bbx.send(**request)
    assert (again.created, again.transfer.id) == (False, "client-chosen-1")
    with pytest.raises(TransferConflictError):
        bbx.send(**{**request, "amount_cents": 101})
    assert balance(bbx, people["ann"]) == 9_900  # debited once


def test_insufficient_funds_debits_nothing(net: EmbeddedNetwork, people: dict[str, Any]) -> None:
    bbx = net.banks["001"]
    with pytest.raises(InsufficientFundsError):
        bbx.send(
            account_id=people["carl"],
            pix_key_kind="random",
            pix_key=people["keys"]["bob"],
            amount_cents=1,
        )
    assert balance(bbx, people["carl"]) == 0
    assert bbx.queries.account(people["carl"]).transfers == []


def test_key_registration_asks_codepix_first(net: EmbeddedNetwork, people: dict[str, Any]) -> None:
    bbx, ctd = net.banks["001"], net.banks["002"]
    with pytest.raises(PixKeyAlreadyExistsError):  # owned at the other bank
        bbx.register_key(people["ann"], "random", people["keys"]["bob"])
    net.stop_codepix()
    with pytest.raises(CodePixUnavailableError, match="unreachable"):
        ctd.register_key(people["bob"], "email", "bob@example.com")
    with pytest.raises(CodePixUnavailableError):
        ctd.open_account("Dee")
    assert [a.owner_name for a in ctd.queries.accounts()] == ["Bob"]  # nothing half-made
    net.start_codepix()
    registered: list[str] = []

    def register() -> bool:  # the channel reconnects within a second or so of the restart
        try:
            registered.append(ctd.register_key(people["bob"], "email", "Bob@Example.com"))
        except CodePixUnavailableError:
            return False
        return True

    wait_until(register, timeout=15)
    assert registered == ["bob@example.com"]
    assert ("email", "bob@example.com") in ctd.queries.account(people["bob"]).keys


def test_transfers_wait_while_codepix_and_the_destination_are_down(
    net: EmbeddedNetwork, people: dict[str, Any]
) -> None:
    bbx, ctd = net.banks["001"], net.banks["002"]
    net.stop_codepix()
    ctd.stop()
    ids = [
        bbx.send(
            account_id=people["ann"],
            pix_key_kind="random",
            pix_key=people["keys"]["bob"],
            amount_cents=10 + i,
        ).transfer.id
        for i in range(5)
    ]
    net.start_codepix()
    wait_until(lambda: all(net.codepix_status(t) == "pending" for t in ids))
    assert all(bbx.queries.transfer(t)[0].status is TransferStatus.PENDING for t in ids)
    ctd.start()
    for transfer_id in ids:
        assert settle(bbx, transfer_id).status is TransferStatus.COMPLETED
    wait_until(lambda: balance(ctd, people["bob"]) == 5_000 + sum(range(10, 15)))


def test_bad_messages_are_dead_lettered_and_the_bank_keeps_going(
    net: EmbeddedNetwork, people: dict[str, Any]
) -> None:
    bbx = net.banks["001"]
    publish = net.broker.publisher(router=lambda _m: "bank001").publish
    forwarded = {
        "id": "tx-elsewhere",
        "status": "pending",
        "amount_cents": 5,
        "description": "",
        "from": {"bank_code": "002", "account_id": "x", "account_number": "1", "owner_name": "X"},
        "to": {
            "bank_code": "002",
            "account_id": people["bob"],
            "pix_key_kind": "random",
            "pix_key": people["keys"]["bob"],
        },
    }
    publish(
        [
            Message("transaction.requested", forwarded, key="tx-elsewhere"),
            Message("transaction.exploded", {"id": "x"}, key="x"),
            Message("transaction.failed", {"id": "never-sent"}, key="never-sent"),
            Message("transaction.confirmed", ["not", "an", "object"], key="y"),
        ]
    )
    sent = bbx.send(
        account_id=people["ann"],
        pix_key_kind="random",
        pix_key=people["keys"]["bob"],
        amount_cents=50,
    )
    assert settle(bbx, sent.transfer.id).status is TransferStatus.COMPLETED
    wait_until(lambda: len(net.broker.dead_letters("bank001")) == 4)
    reasons = "\n".join(
        dict(r.headers)[DLQ_REASON].decode() for r in net.broker.dead_letters("bank001")
    )
    assert "transfer for bank 002 reached bank 001" in reasons
    assert "does not handle 'transaction.exploded'" in reasons
    assert "has no transfer never-sent" in reasons
    assert "JSON object" in reasons


@contextmanager
def serve(bank: BankNode) -> Iterator[httpx.Client]:
    """The bank's app on a real loopback HTTP server, and a client for it."""
    server = HttpThread(bank.web_app(), "127.0.0.1:0").start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture
def api(net: EmbeddedNetwork) -> Iterator[httpx.Client]:
    with serve(net.banks["001"]) as client:
        yield client


def test_api_opens_accounts_registers_keys_and_sends(
    api: httpx.Client, net: EmbeddedNetwork, people: dict[str, Any]
) -> None:
    opened = api.post("/api/accounts", json={"owner_name": "Eve", "deposit_cents": 900})
    assert opened.status_code == 201, opened.text
    eve = opened.json()["id"]
    assert (
        api.post(f"/api/accounts/{eve}/keys", json={"kind": "email", "key": "eve@x.io"}).json()[
            "key"
        ]
        == "eve@x.io"
    )
    body = {
        "id": "api-1",
        "account_id": eve,
        "pix_key_kind": "random",
        "pix_key": people["keys"]["bob"],
        "amount_cents": 300,
    }
    assert api.post("/api/transfers", json=body).status_code == 201
    assert api.post("/api/transfers", json=body).status_code == 200  # a retry
    settle(net.banks["001"], "api-1")
    shown = api.get("/api/transfers/api-1").json()
    assert shown["status"] == "completed"
    assert [h["status"] for h in shown["history"]] == ["pending", "confirmed", "completed"]
    assert api.get(f"/api/accounts/{eve}").json()["balance_cents"] == 600


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


@pytest.mark.parametrize(
    ("change", "status", "text"),
    [
        ({"pix_key": "not-a-uuid"}, 422, "random key"),
        ({"pix_key_kind": "iban"}, 422, "key kind must be one of"),
        ({"pix_key_kind": "cpf", "pix_key": "111.444.777-36"}, 422, "check digits"),
        ({"pix_key_kind": "phone", "pix_key": "11987654321"}, 422, "E.164"),
        ({"amount_cents": -5}, 422, "must be positive"),
        ({"amount_cents": 0}, 422, "must be positive"),
        ({"amount_cents": 10**15}, 422, "cap"),
        ({"amount_cents": 12.5}, 422, "valid integer"),
        ({"amount_cents": "100"}, 422, "valid integer"),
        ({"account_id": "nobody"}, 404, "no account"),
        ({"amount_cents": 10**9}, 422, "cannot pay"),
        ({"surprise": 1}, 422, "Extra inputs"),
    ],
)
def test_api_refuses_bad_transfers_with_problem_bodies(
    api: httpx.Client, people: dict[str, Any], change: dict[str, Any], status: int, text: str
) -> None:
    body = {
        "account_id": people["ann"],
        "pix_key_kind": "random",
        "pix_key": people["keys"]["bob"],
        "amount_cents": 100,
        **change,
    }
    problem = _problem(api.post("/api/transfers", json=body), status)
    assert text in str(problem), problem
    assert api.get(f"/api/accounts/{people['ann']}").json()["balance_cents"] == 10_000


def test_api_key_errors(api: httpx.Client, net: EmbeddedNetwork, people: dict[str, Any]) -> None:
    ann = people["ann"]
    taken = {"kind": "random", "key": people["keys"]["bob"]}
    assert (
        "already registered"
        in _problem(api.post(f"/api/accounts/{ann}/keys", json=taken), 422)["detail"]
    )
    bad = {"kind": "email", "key": "no at sign"}
    _problem(api.post(f"/api/accounts/{ann}/keys", json=bad), 422)
    _problem(api.post("/api/accounts/ghost/keys", json={"kind": "email", "key": "a@b.io"}), 404)
    net.stop_codepix()
    down = api.post(f"/api/accounts/{ann}/keys", json={"kind": "email", "key": "ann@x.io"})
    assert "CodePix" in _problem(down, 503)["detail"]
    assert down.headers["retry-after"] == "2"


def test_a_bank_codepix_has_not_admitted_gets_a_4xx(net: EmbeddedNetwork, tmp_path: Path) -> None:
    stranger = BankNode(
        BankProfile("003", "XYZ"),
        sa.create_engine(f"sqlite:///{tmp_path / 'bank003.sqlite3'}"),
        net.banks["001"].registry,
        subscribe=lambda: net.broker.subscribe(("bank003",), "bank003"),
        publisher=net.broker.publisher(),
    )
    with serve(stranger) as client:
        refused = client.post("/api/accounts", json={"owner_name": "Zed"})
    assert "not admitted" in _problem(refused, 422)["detail"]
    stranger.engine.dispose()


@pytest.mark.parametrize(
    ("text", "cents"), [("12.34", 1234), ("12,3", 1230), ("0.01", 1), ("7", 700)]
)
def test_parse_reais_is_exact(text: str, cents: int) -> None:
    assert parse_reais(text) == cents


@pytest.mark.parametrize("text", ["-1", "1.234", "1e3", "", "0", "abc", "0.00", 12.5])
def test_parse_reais_refuses(text: Any) -> None:
    with pytest.raises(InvalidAmountError):
        parse_reais(text)


def test_profiles_and_the_transfer_life_cycle() -> None:
    assert profile_for("001").name == "BBX"
    assert profile_for("002", colour="#000000").colour == "#000000"
    assert profile_for("007", "Bond").name == "Bond"
    for code in ("1", "0001", "abc", "007"):
        with pytest.raises(InvalidInputError):
            profile_for(code)
    with pytest.raises(InvalidInputError):
        BankProfile("004", "Bad", colour="red; } body { display:none")
    transfer = Transfer("t", Direction.OUT, "a", 1, "random", str(uuid.uuid4()))
    done = transfer.move(TransferStatus.CONFIRMED).move(TransferStatus.COMPLETED)
    with pytest.raises(IllegalTransitionError):
        done.move(TransferStatus.ERROR)  # a credited transfer is never refunded
    with pytest.raises(IllegalTransitionError):
        transfer.move(TransferStatus.ERROR).move(TransferStatus.CONFIRMED)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"owner_name": "Zed", "deposit_cents": -1}, "must be positive"),
        ({"owner_name": "Zed", "deposit_cents": 2 * 10**9}, "opening deposit is at most"),
        ({"owner_name": "Zed", "deposit_cents": 1.5}, "valid integer"),
        ({"owner_name": "  "}, "owner name"),
        ({}, "Field required"),
        # Another bank's account id: CodePix knows it, and must not hand it to this bank.
        ({"owner_name": "Zed", "id": "002-0a1b2c"}, "looks like 001-"),
        ({"owner_name": "Zed", "id": "001-"}, "looks like 001-"),
    ],
)
def test_api_refuses_bad_accounts(
    api: httpx.Client, net: EmbeddedNetwork, body: dict[str, Any], text: str
) -> None:
    assert text in str(_problem(api.post("/api/accounts", json=body), 422))
    assert net.banks["001"].queries.accounts() == []
