"""SQLAlchemy (Core) implementations of the repository ports, bound to one Session."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from examples.codepix.domain import (
    Account,
    AccountAlreadyExistsError,
    Bank,
    BankAlreadyExistsError,
    PixKey,
    PixKeyAlreadyExistsError,
    PixKeyKind,
    PixKeyNotFoundError,
    PixKeyStatus,
    Transaction,
    TransactionNotFoundError,
    TransactionStatus,
)

from . import tables


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _insert(session: Session, statement: Any, error: Exception) -> None:
    """Insert in a savepoint so a unique violation leaves the transaction usable.

    The unique constraint, not a prior SELECT, decides who owns a key: two
    concurrent registrations both pass a SELECT, only one passes the insert.
    """
    try:
        with session.begin_nested():
            session.execute(statement)
    except sa.exc.IntegrityError:
        raise error from None


class SqlBanks:
    """`BankRepository` over ``codepix_banks``."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, code: str) -> Bank | None:
        row = self._session.execute(
            sa.select(tables.banks).where(tables.banks.c.code == code)
        ).first()
        return None if row is None else Bank(code=row.code, name=row.name)

    def add(self, bank: Bank) -> None:
        _insert(
            self._session,
            tables.banks.insert().values(code=bank.code, name=bank.name),
            BankAlreadyExistsError(f"bank {bank.code} exists"),
        )


_ACCOUNT_COLUMNS = (
    tables.accounts.c.id.label("account_id"),
    tables.accounts.c.number,
    tables.accounts.c.owner_name,
    tables.banks.c.code.label("bank_code"),
    tables.banks.c.name.label("bank_name"),
)
_ACCOUNT_JOIN = tables.accounts.join(tables.banks)


def _account(row: Any, prefix: str = "") -> Account:
    return Account(
        id=getattr(row, f"{prefix}account_id"),
        number=getattr(row, f"{prefix}number"),
        owner_name=getattr(row, f"{prefix}owner_name"),
        bank=Bank(code=getattr(row, f"{prefix}bank_code"), name=getattr(row, f"{prefix}bank_name")),
    )


class SqlAccounts:
    """`AccountRepository` over ``codepix_accounts``."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, account_id: str) -> Account | None:
        row = self._session.execute(
            sa.select(*_ACCOUNT_COLUMNS)
            .select_from(_ACCOUNT_JOIN)
            .where(tables.accounts.c.id == account_id)
        ).first()
        return None if row is None else _account(row)

    def add(self, account: Account) -> None:
        _insert(
            self._session,
            tables.accounts.insert().values(
                id=account.id,
                number=account.number,
                owner_name=account.owner_name,
                bank_code=account.bank.code,
            ),
            AccountAlreadyExistsError(f"account {account.id} exists"),
        )


class SqlPixKeys:
    """`PixKeyRepository` over ``codepix_pix_keys`` (primary key: kind + canonical key)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def find(self, kind: PixKeyKind, key: str) -> PixKey | None:
        k = tables.pix_keys
        row = self._session.execute(
            sa.select(k.c.kind, k.c.key, k.c.status, *_ACCOUNT_COLUMNS)
            .select_from(k.join(_ACCOUNT_JOIN))
            .where(k.c.kind == str(kind), k.c.key == key)
        ).first()
        if row is None:
            return None
        return PixKey(
            kind=PixKeyKind(row.kind),
            key=row.key,
            account=_account(row),
            status=PixKeyStatus(row.status),
        )

    def add(self, pix_key: PixKey) -> None:
        _insert(
            self._session,
            tables.pix_keys.insert().values(
                kind=str(pix_key.kind),
                key=pix_key.key,
                account_id=pix_key.account.id,
                status=str(pix_key.status),
                created_at=_now(),
            ),
            PixKeyAlreadyExistsError(f"{pix_key.kind} key {pix_key.key!r} is already registered"),
        )

    def save(self, pix_key: PixKey) -> None:
        k = tables.pix_keys
        result = self._session.execute(
            k.update()
            .where(k.c.kind == str(pix_key.kind), k.c.key == pix_key.key)
            .values(status=str(pix_key.status))
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult at runtime
            raise PixKeyNotFoundError(f"no {pix_key.kind} key {pix_key.key!r} to update")


class SqlTransactions:
    """`TransactionRepository` over ``codepix_transactions``."""

    def __init__(self, session: Session, pix_keys: SqlPixKeys, accounts: SqlAccounts) -> None:
        self._session = session
        self._pix_keys = pix_keys
        self._accounts = accounts

    def get(self, transaction_id: str) -> Transaction | None:
        t = tables.transactions
        # FOR UPDATE (PostgreSQL): a status change reads and writes the row atomically.
        row = self._session.execute(
            sa.select(t).where(t.c.id == transaction_id).with_for_update()
        ).first()
        if row is None:
            return None
        account = self._accounts.get(row.account_from_id)
        pix_key = self._pix_keys.find(PixKeyKind(row.pix_key_kind), row.pix_key)
        if account is None or pix_key is None:  # foreign keys make this impossible
            raise TransactionNotFoundError(f"transaction {transaction_id} lost its references")
        return Transaction(
            id=row.id,
            account_from=account,
            amount_cents=row.amount_cents,
            pix_key_to=pix_key,
            description=row.description,
            status=TransactionStatus(row.status),
            error_reason=row.error_reason,
        )

    def add(self, transaction: Transaction) -> None:
        now = _now()
        self._session.execute(
            tables.transactions.insert().values(
                id=transaction.id,
                account_from_id=transaction.account_from.id,
                amount_cents=transaction.amount_cents,
                pix_key_kind=str(transaction.pix_key_to.kind),
                pix_key=transaction.pix_key_to.key,
                description=transaction.description,
                status=str(transaction.status),
                error_reason=transaction.error_reason,
                created_at=now,
                updated_at=now,
            )
        )

    def save(self, transaction: Transaction) -> None:
        t = tables.transactions
        result = self._session.execute(
            t.update()
            .where(t.c.id == transaction.id)
            .values(
                status=str(transaction.status),
                error_reason=transaction.error_reason,
                updated_at=_now(),
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult at runtime
            raise TransactionNotFoundError(f"no transaction {transaction.id!r} to update")
