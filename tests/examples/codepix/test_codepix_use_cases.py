"""Use cases against an in-memory unit of work: the application needs no database to be tested."""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest
from examples.codepix.application import (
    FAILED,
    REQUESTED,
    CompleteTransaction,
    ConfirmTransaction,
    DeactivatePixKey,
    FailTransaction,
    FailureReport,
    FindPixKey,
    OpenAccount,
    OutgoingMessage,
    RegisterBank,
    RegisterPixKey,
    RegisterTransaction,
    StatusUpdate,
    TransferRequest,
)
from examples.codepix.domain import (
    Account,
    AccountNotFoundError,
    Bank,
    BankAlreadyExistsError,
    BankNotFoundError,
    IllegalTransitionError,
    InactivePixKeyError,
    InvalidBankError,
    InvalidPixKeyError,
    PixKey,
    PixKeyAlreadyExistsError,
    PixKeyKind,
    PixKeyNotFoundError,
    PixKeyStatus,
    Transaction,
    TransactionNotFoundError,
    TransactionStatus,
)


@dataclass
class State:
    """Everything the fake 'database' holds; a unit of work edits a copy and swaps it in on commit."""

    banks: dict[str, Bank] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    keys: dict[tuple[PixKeyKind, str], PixKey] = field(default_factory=dict)
    transactions: dict[str, Transaction] = field(default_factory=dict)
    sent: list[OutgoingMessage] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)


class _Repo:
    def __init__(self, work: State) -> None:
        self.work = work


class Banks(_Repo):
    def get(self, code: str) -> Bank | None:
        return self.work.banks.get(code)

    def add(self, bank: Bank) -> None:
        if bank.code in self.work.banks:
            raise BankAlreadyExistsError(bank.code)
        self.work.banks[bank.code] = bank


class Accounts(_Repo):
    def get(self, account_id: str) -> Account | None:
        return self.work.accounts.get(account_id)

    def add(self, account: Account) -> None:
        self.work.accounts[account.id] = account


class Keys(_Repo):
    def find(self, kind: PixKeyKind, key: str) -> PixKey | None:
        return self.work.keys.get((kind, key))

    def add(self, pix_key: PixKey) -> None:
        if (pix_key.kind, pix_key.key) in self.work.keys:
            raise PixKeyAlreadyExistsError(pix_key.key)
        self.work.keys[(pix_key.kind, pix_key.key)] = pix_key

    def save(self, pix_key: PixKey) -> None:
        self.work.keys[(pix_key.kind, pix_key.key)] = pix_key


class Transactions(_Repo):
    def get(self, transaction_id: str) -> Transaction | None:
        return self.work.transactions.get(transaction_id)

    def add(self, transaction: Transaction) -> None:
        self.work.transactions[transaction.id] = transaction

    def save(self, transaction: Transaction) -> None:
        self.work.transactions[transaction.id] = transaction


class Sink(_Repo):
    def emit(self, message: OutgoingMessage) -> None:
        self.work.sent.append(message)


class InboxMarks(_Repo):
    def first_time(self, consumer: str, message_id: str) -> bool:
        if (consumer, message_id) in self.work.seen:
            return False
        self.work.seen.add((consumer, message_id))
        return True


class MemoryUnitOfWork:
    def __init__(self, db: Database) -> None:
        self.db = db

    def __enter__(self) -> MemoryUnitOfWork:
        self.work = copy.deepcopy(self.db.state)
        self.banks, self.accounts = Banks(self.work), Accounts(self.work)
        self.pix_keys, self.transactions = Keys(self.work), Transactions(self.work)
        self.messages, self.inbox = Sink(self.work), InboxMarks(self.work)
        return self

    def commit(self) -> None:
        self.db.state = self.work
        self.db.commits += 1

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None  # uncommitted work is simply dropped


class Database:
    def __init__(self) -> None:
        self.state = State()
        self.commits = 0

    def __call__(self) -> Any:
        return MemoryUnitOfWork(self)


@pytest.fixture
def db() -> Database:
    database = Database()
    RegisterBank(database)("001", "Banco Um")
    RegisterBank(database)("002", "Banco Dois")
    OpenAccount(database)(bank_code="001", account_id="ann", number="1", owner_name="Ann")
    OpenAccount(database)(bank_code="002", account_id="bob", number="2", owner_name="Bob")
    RegisterPixKey(database)("email", "bob@example.com", "bob")
    return database


def request(message_id: str = "m1", **overrides: Any) -> TransferRequest:
    fields: dict[str, Any] = {
        "message_id": message_id,
        "id": "tx-1",
        "account_id": "ann",
        "amount_cents": 500,
        "pix_key_kind": "email",
        "pix_key": "bob@example.com",
    }
    fields.update(overrides)
    return TransferRequest(**fields)


def test_unknown_bank_codes_and_bad_codes(db: Database) -> None:
    with pytest.raises(BankNotFoundError):
        OpenAccount(db)(bank_code="999", account_id="x", number="1", owner_name="X")
    with pytest.raises(InvalidBankError):
        OpenAccount(db)(bank_code="1", account_id="x", number="1", owner_name="X")
    with pytest.raises(BankAlreadyExistsError):
        RegisterBank(db)("001", "Again")
    assert "x" not in db.state.accounts


def test_key_registration_rules(db: Database) -> None:
    with pytest.raises(PixKeyAlreadyExistsError):
        RegisterPixKey(db)("email", "BOB@example.com", "ann")  # same key, other case
    with pytest.raises(AccountNotFoundError):
        RegisterPixKey(db)("cpf", "52998224725", "nobody")
    commits = db.commits
    with pytest.raises(InvalidPixKeyError):
        RegisterPixKey(db)("cpf", "12345678900", "ann")
    assert db.commits == commits  # refused before any unit of work was opened
    with pytest.raises(PixKeyNotFoundError):
        FindPixKey(db)("cpf", "52998224725")


def test_deactivated_key_is_kept_and_refuses_transfers(db: Database) -> None:
    deactivated = DeactivatePixKey(db)("email", "BOB@example.com")
    assert (deactivated.key, deactivated.status) == ("bob@example.com", PixKeyStatus.INACTIVE)
    assert FindPixKey(db)("email", "bob@example.com").status is PixKeyStatus.INACTIVE
    commits = db.commits
    with pytest.raises(InactivePixKeyError):
        DeactivatePixKey(db)("email", "bob@example.com")
    with pytest.raises(PixKeyNotFoundError):
        DeactivatePixKey(db)("email", "nobody@example.com")
    with pytest.raises(InvalidPixKeyError):
        DeactivatePixKey(db)("cpf", "123")
    assert db.commits == commits  # refusals change nothing
    outcome = RegisterTransaction(db)(request())
    assert outcome.rejected is not None
    assert "inactive" in outcome.rejected
    [sent] = db.state.sent
    assert (sent.bank_code, sent.type) == ("001", FAILED)
    assert db.state.transactions == {}


def test_accepted_transfer_is_stored_and_forwarded_in_one_commit(db: Database) -> None:
    commits = db.commits
    outcome = RegisterTransaction(db)(request())
    assert outcome.transaction is not None
    assert outcome.transaction.status is TransactionStatus.PENDING
    assert db.commits == commits + 1
    [sent] = db.state.sent
    assert (sent.bank_code, sent.type, sent.key) == ("002", REQUESTED, "tx-1")
    assert sent.payload["amount_cents"] == 500


def test_same_message_twice_changes_nothing(db: Database) -> None:
    RegisterTransaction(db)(request())
    again = RegisterTransaction(db)(request())
    assert again.duplicate
    resend = RegisterTransaction(db)(request(message_id="m2"))  # new message, same transfer
    assert resend.duplicate
    assert len(db.state.sent) == 1


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"amount_cents": 0}, "positive"),
        ({"amount_cents": -1}, "positive"),
        ({"amount_cents": 10**12}, "cap"),
        ({"amount_cents": 5.0}, "integer number of cents"),
        ({"pix_key": "nobody@example.com"}, "no email key"),
        ({"pix_key_kind": "cpf", "pix_key": "123"}, "11 digits"),
        ({"account_id": "bob"}, "origin account"),  # Bob paying his own key
    ],
)
def test_refused_transfers_answer_the_origin_bank(
    db: Database, overrides: dict[str, Any], reason: str
) -> None:
    origin = db.state.accounts[overrides.get("account_id", "ann")].bank.code
    outcome = RegisterTransaction(db)(request(**overrides))
    assert outcome.rejected is not None
    assert reason in outcome.rejected
    [sent] = db.state.sent
    assert (sent.bank_code, sent.type, sent.payload["status"]) == (origin, FAILED, "error")
    assert db.state.transactions == {}


def test_transaction_id_reused_by_another_account_is_refused(db: Database) -> None:
    RegisterTransaction(db)(request())
    OpenAccount(db)(bank_code="001", account_id="carl", number="3", owner_name="Carl")
    outcome = RegisterTransaction(db)(request(message_id="m9", account_id="carl"))
    assert outcome.rejected is not None
    assert "already used" in outcome.rejected
    assert db.state.transactions["tx-1"].account_from.id == "ann"


def test_unknown_origin_account_raises_for_the_dead_letter_queue(db: Database) -> None:
    with pytest.raises(AccountNotFoundError):
        RegisterTransaction(db)(request(account_id="ghost"))
    assert db.state.seen == set()  # rolled back: a fixed account table lets a replay succeed


def test_status_changes_and_their_order(db: Database) -> None:
    RegisterTransaction(db)(request())
    with pytest.raises(IllegalTransitionError):
        CompleteTransaction(db)(StatusUpdate("c0", "tx-1"))  # before confirmation
    assert ConfirmTransaction(db)(StatusUpdate("c1", "tx-1")).transaction.status == "confirmed"  # type: ignore[union-attr]
    assert ConfirmTransaction(db)(StatusUpdate("c2", "tx-1")).duplicate  # same news again
    done = CompleteTransaction(db)(StatusUpdate("c3", "tx-1")).transaction
    assert done is not None
    assert done.status is TransactionStatus.COMPLETED
    assert [(m.bank_code, m.type) for m in db.state.sent] == [
        ("002", "transaction.requested"),
        ("001", "transaction.confirmed"),
        ("002", "transaction.completed"),
    ]
    with pytest.raises(TransactionNotFoundError):
        ConfirmTransaction(db)(StatusUpdate("c4", str(uuid.uuid4())))


def test_destination_refusal_fails_a_pending_transfer_once(db: Database) -> None:
    RegisterTransaction(db)(request())
    refusal = FailureReport("f1", "tx-1", "bank 002 has no account bob")
    outcome = FailTransaction(db)(refusal)
    assert outcome.transaction is not None
    assert outcome.transaction.status is TransactionStatus.ERROR
    assert outcome.rejected == "bank 002 has no account bob"
    assert FailTransaction(db)(refusal).duplicate  # redelivered
    assert FailTransaction(db)(FailureReport("f2", "tx-1", "again")).duplicate  # repeated
    failures = [m for m in db.state.sent if m.type == FAILED]
    assert [(m.bank_code, m.payload["reason"]) for m in failures] == [
        ("001", "bank 002 has no account bob")
    ]
    with pytest.raises(TransactionNotFoundError):
        FailTransaction(db)(FailureReport("f3", "tx-unknown", "no account"))


def test_destination_cannot_refuse_after_confirming(db: Database) -> None:
    RegisterTransaction(db)(request())
    ConfirmTransaction(db)(StatusUpdate("c1", "tx-1"))
    with pytest.raises(IllegalTransitionError):  # it credited: refunding too would make money
        FailTransaction(db)(FailureReport("f1", "tx-1", "changed its mind"))
    assert db.state.transactions["tx-1"].status is TransactionStatus.CONFIRMED
