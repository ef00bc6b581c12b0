"""What the bank's use cases need from outside, as small Protocols (adapters implement them)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from examples.codepix.application.ports import InboxPort, Transactional
from examples.codepix.domain import PixKeyKind

from .domain import Direction, EntryKind, Transfer, TransferStatus


class CodePixUnavailableError(Exception):
    """CodePix did not answer in time (down, restarting or overloaded); try again later."""


class BankNotAdmittedError(Exception):
    """CodePix does not know this bank's code: an operator must admit it first."""


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account and its balance (integer cents, never negative)."""

    id: str
    number: str
    owner_name: str
    balance_cents: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One statement line: *amount_cents* is signed (debits are negative)."""

    account_id: str
    kind: EntryKind
    amount_cents: int
    transfer_id: str | None
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One step of a transfer's history, as this bank recorded it."""

    transfer_id: str
    direction: Direction
    status: TransferStatus
    at: dt.datetime


class Accounts(Protocol):
    """Accounts and their balances."""

    def get(self, account_id: str, *, lock: bool = False) -> AccountView | None:
        """The account; with *lock*, held until the unit of work ends (others wait)."""

    def all(self) -> Sequence[AccountView]: ...

    def add(self, account: AccountView) -> None:
        """Store a new account; `AccountAlreadyExistsError` for a taken id or number."""

    def post(
        self, account_id: str, kind: EntryKind, amount_cents: int, transfer_id: str | None
    ) -> bool:
        """Write an entry and move the balance by it, atomically.

        Returns False (and changes nothing) when a debit would make the balance
        negative. The database keeps one entry per (transfer, kind): a second
        credit for the same transfer is an error, never a second credit.
        """

    def entries(self, account_id: str, limit: int) -> Sequence[Entry]: ...


class Transfers(Protocol):
    """Transfers by (id, direction); every add / save is also a history row."""

    def get(self, transfer_id: str, direction: Direction) -> Transfer | None:
        """The transfer, locked for update until the unit of work ends."""

    def add(self, transfer: Transfer) -> None: ...

    def save(self, transfer: Transfer) -> None: ...

    def for_account(self, account_id: str, limit: int) -> Sequence[Transfer]: ...

    def history(self, transfer_id: str) -> Sequence[StatusChange]: ...


class Keys(Protocol):
    """The Pix keys this bank registered for its accounts (CodePix holds the truth)."""

    def add(self, account_id: str, kind: PixKeyKind, key: str) -> None: ...

    def for_account(self, account_id: str) -> Sequence[tuple[PixKeyKind, str]]: ...


class Outgoing(Protocol):
    """Messages to CodePix, committed with the unit of work (the outbox behind it)."""

    def emit(self, message_type: str, key: str, payload: Mapping[str, Any]) -> None: ...


class BankUnitOfWork(Transactional, Protocol):
    """One database transaction over everything above; leaving without `commit` rolls back."""

    accounts: Accounts
    transfers: Transfers
    keys: Keys
    messages: Outgoing
    inbox: InboxPort


class PixRegistry(Protocol):
    """CodePix's synchronous side (gRPC in production).

    Errors: `PixKeyAlreadyExistsError`, `InvalidPixKeyError`,
    `BankNotAdmittedError`, `CodePixUnavailableError`.
    """

    def open_account(self, *, bank_code: str, account_id: str, number: str, owner: str) -> None:
        """Announce an account; an account CodePix already knows is fine (retries are safe)."""

    def register_key(self, kind: str, key: str, account_id: str) -> str:
        """Bind the key to the account at CodePix; returns the canonical key."""

    def close(self) -> None:
        """Release the connection."""
