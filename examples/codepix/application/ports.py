"""What the use cases need from the outside world, as small Protocols.

Adapters implement these (``adapters/sql`` for real, tests may fake them);
the application never imports SQLAlchemy, grpcio or a broker client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from examples.codepix.domain import Account, Bank, PixKey, PixKeyKind, Transaction


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message for one bank, sent after the unit of work commits (through the outbox).

    Attributes:
        bank_code: the destination bank; its topic is ``bank<code>``.
        type: ``transaction.requested``, ``transaction.confirmed``, ...
        key: the transaction id, so every message of one transfer keeps its order.
        payload: JSON-ready body (amounts as integer cents).
    """

    bank_code: str
    type: str
    key: str
    payload: Mapping[str, Any] = field(default_factory=dict)


class BankRepository(Protocol):
    """Banks by code."""

    def get(self, code: str) -> Bank | None: ...

    def add(self, bank: Bank) -> None:
        """Store *bank*; raises `BankAlreadyExistsError` for a taken code."""


class AccountRepository(Protocol):
    """Accounts by id."""

    def get(self, account_id: str) -> Account | None: ...

    def add(self, account: Account) -> None:
        """Store *account*; raises `AccountAlreadyExistsError` for a taken id."""


class PixKeyRepository(Protocol):
    """Keys by (kind, canonical key)."""

    def find(self, kind: PixKeyKind, key: str) -> PixKey | None: ...

    def add(self, pix_key: PixKey) -> None:
        """Store *pix_key*; raises `PixKeyAlreadyExistsError` if anyone owns it, even concurrently."""

    def save(self, pix_key: PixKey) -> None:
        """Persist a status change of a stored key (its kind, key and account never change)."""


class TransactionRepository(Protocol):
    """Transfers by id."""

    def get(self, transaction_id: str) -> Transaction | None: ...

    def add(self, transaction: Transaction) -> None: ...

    def save(self, transaction: Transaction) -> None:
        """Persist a status change of a stored transaction."""


class MessageSink(Protocol):
    """Emits messages atomically with the unit of work (the outbox behind it)."""

    def emit(self, message: OutgoingMessage) -> None: ...


class InboxPort(Protocol):
    """Remembers which incoming messages were applied, in the unit of work's transaction."""

    def first_time(self, consumer: str, message_id: str) -> bool:
        """True the first time *message_id* is seen by *consumer*, False for a duplicate."""


class Transactional(Protocol):
    """A ``with`` block that is one database transaction: leaving it without
    `commit` rolls everything back. CodePix's and the banks' units of work are
    both this, with their own repositories."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None: ...


class UnitOfWork(Transactional, Protocol):
    """One database transaction: repositories, emitted messages and inbox marks commit together."""

    banks: BankRepository
    accounts: AccountRepository
    pix_keys: PixKeyRepository
    transactions: TransactionRepository
    messages: MessageSink
    inbox: InboxPort


UnitOfWorkFactory = Callable[[], UnitOfWork]
"""Opens a fresh `UnitOfWork`; use cases take one so each call is its own transaction."""
