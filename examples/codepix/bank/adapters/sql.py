"""The bank's persistence: SQLAlchemy Core tables, repositories and unit of work.

One database per bank. Balances, entries, transfers, their history, the
outbox and the inbox share it, so a debit and its message (or a credit and its
inbox mark) commit together or not at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from examples.codepix.adapters.sql import SessionUnitOfWork, SqlInbox, create_engine
from examples.codepix.application import (
    COMPLETED,
    CONFIRMATIONS_TOPIC,
    CONFIRMED,
    FAILED,
    REQUESTED,
    TRANSACTIONS_TOPIC,
    InboxPort,
)
from examples.codepix.bank.domain import Direction, EntryKind, Transfer, TransferStatus
from examples.codepix.bank.ports import (
    Accounts,
    AccountView,
    BankUnitOfWork,
    Entry,
    Keys,
    Outgoing,
    StatusChange,
    Transfers,
)
from examples.codepix.domain import AccountAlreadyExistsError, PixKeyKind
from resilience.messaging import Message, TopicRouter
from resilience.outbox import Inbox, Outbox, inbox_table, outbox_table
from resilience.tracing import capture_context

metadata = sa.MetaData()

accounts = sa.Table(
    "bank_accounts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("number", sa.String(16), nullable=False, unique=True),
    sa.Column("owner_name", sa.String(120), nullable=False),
    sa.Column("balance_cents", sa.BigInteger, nullable=False),
    sa.CheckConstraint("balance_cents >= 0", name="bank_balance_not_negative"),
)

entries = sa.Table(
    "bank_entries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("bank_accounts.id"), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),  # signed: debits are negative
    sa.Column("transfer_id", sa.String(64)),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    # The backstop of "credited once, refunded once": one entry per transfer and kind.
    sa.UniqueConstraint("transfer_id", "kind", name="bank_one_entry_per_transfer_and_kind"),
)

transfers = sa.Table(
    "bank_transfers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("direction", sa.String(3), primary_key=True),  # a same-bank transfer has both
    sa.Column("account_id", sa.String(64), sa.ForeignKey("bank_accounts.id"), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("pix_key_kind", sa.String(10), nullable=False),
    sa.Column("pix_key", sa.String(80), nullable=False),
    sa.Column("counterparty", sa.String(200), nullable=False),
    sa.Column("description", sa.String(140), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("reason", sa.String(500)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("amount_cents > 0", name="bank_transfer_amount_positive"),
)

history = sa.Table(
    "bank_transfer_history",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("transfer_id", sa.String(64), nullable=False, index=True),
    sa.Column("direction", sa.String(3), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

pix_keys = sa.Table(
    "bank_pix_keys",
    metadata,
    sa.Column("kind", sa.String(10), primary_key=True),
    sa.Column("key", sa.String(80), primary_key=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("bank_accounts.id"), nullable=False),
)

outbox_rows = outbox_table(metadata, "bank_outbox")
inbox_rows = inbox_table(metadata, "bank_inbox")

TO_CODEPIX: Final = TopicRouter(
    {
        REQUESTED: TRANSACTIONS_TOPIC,
        CONFIRMED: CONFIRMATIONS_TOPIC,
        COMPLETED: CONFIRMATIONS_TOPIC,
        FAILED: CONFIRMATIONS_TOPIC,
    }
)
"""A bank writes transfer requests to ``transactions`` and status reports (a refusal
included) to ``transaction_confirmation``, by message type."""

OUTBOX: Final = Outbox(outbox_rows, router=TO_CODEPIX)
INBOX: Final = Inbox(inbox_rows)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)  # SQLite drops the zone


def _view(row: Any) -> AccountView:
    return AccountView(row.id, row.number, row.owner_name, int(row.balance_cents))


class SqlAccounts:
    """`Accounts` over ``bank_accounts`` and ``bank_entries``."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, account_id: str, *, lock: bool = False) -> AccountView | None:
        query = sa.select(accounts).where(accounts.c.id == account_id)
        row = self._session.execute(query.with_for_update() if lock else query).first()
        return None if row is None else _view(row)

    def all(self) -> Sequence[AccountView]:
        rows = self._session.execute(sa.select(accounts).order_by(accounts.c.owner_name))
        return [_view(r) for r in rows]

    def add(self, account: AccountView) -> None:
        try:
            with self._session.begin_nested():
                self._session.execute(
                    accounts.insert().values(
                        id=account.id,
                        number=account.number,
                        owner_name=account.owner_name,
                        balance_cents=account.balance_cents,
                    )
                )
        except sa.exc.IntegrityError:
            raise AccountAlreadyExistsError(f"account {account.id} exists") from None

    def post(
        self, account_id: str, kind: EntryKind, amount_cents: int, transfer_id: str | None
    ) -> bool:
        delta = kind.signed(amount_cents)
        update = (
            accounts.update()
            .where(accounts.c.id == account_id)
            .values(balance_cents=accounts.c.balance_cents + delta)
        )
        if delta < 0:  # a debit only happens if the money is there; no read-then-write race
            update = update.where(accounts.c.balance_cents >= -delta)
        if self._session.execute(update).rowcount != 1:  # type: ignore[attr-defined]
            return False
        self._session.execute(
            entries.insert().values(
                account_id=account_id,
                kind=str(kind),
                amount_cents=delta,
                transfer_id=transfer_id,
                at=_now(),
            )
        )
        return True

    def entries(self, account_id: str, limit: int) -> Sequence[Entry]:
        rows = self._session.execute(
            sa.select(entries)
            .where(entries.c.account_id == account_id)
            .order_by(entries.c.id.desc())
            .limit(limit)
        )
        return [
            Entry(r.account_id, EntryKind(r.kind), int(r.amount_cents), r.transfer_id, _aware(r.at))
            for r in rows
        ]


def _transfer(row: Any) -> Transfer:
    return Transfer(
        id=row.id,
        direction=Direction(row.direction),
        account_id=row.account_id,
        amount_cents=int(row.amount_cents),
        pix_key_kind=PixKeyKind(row.pix_key_kind),
        pix_key=row.pix_key,
        counterparty=row.counterparty,
        description=row.description,
        status=TransferStatus(row.status),
        reason=row.reason,
    )


class SqlTransfers:
    """`Transfers` over ``bank_transfers``; each write also appends to the history."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, transfer_id: str, direction: Direction) -> Transfer | None:
        row = self._session.execute(
            sa.select(transfers)
            .where(transfers.c.id == transfer_id, transfers.c.direction == str(direction))
            .with_for_update()
        ).first()
        return None if row is None else _transfer(row)

    def _record(self, transfer: Transfer, now: dt.datetime) -> None:
        self._session.execute(
            history.insert().values(
                transfer_id=transfer.id,
                direction=str(transfer.direction),
                status=str(transfer.status),
                at=now,
            )
        )

    def add(self, transfer: Transfer) -> None:
        now = _now()
        self._session.execute(
            transfers.insert().values(
                id=transfer.id,
                direction=str(transfer.direction),
                account_id=transfer.account_id,
                amount_cents=transfer.amount_cents,
                pix_key_kind=str(transfer.pix_key_kind),
                pix_key=transfer.pix_key,
                counterparty=transfer.counterparty[:200],
                description=transfer.description,
                status=str(transfer.status),
                reason=transfer.reason,
                updated_at=now,
            )
        )
        self._record(transfer, now)

    def save(self, transfer: Transfer) -> None:
        now = _now()
        self._session.execute(
            transfers.update()
            .where(transfers.c.id == transfer.id, transfers.c.direction == str(transfer.direction))
            .values(status=str(transfer.status), reason=transfer.reason, updated_at=now)
        )
        self._record(transfer, now)

    def for_account(self, account_id: str, limit: int) -> Sequence[Transfer]:
        rows = self._session.execute(
            sa.select(transfers)
            .where(transfers.c.account_id == account_id)
            .order_by(transfers.c.updated_at.desc())
            .limit(limit)
        )
        return [_transfer(r) for r in rows]

    def history(self, transfer_id: str) -> Sequence[StatusChange]:
        rows = self._session.execute(
            sa.select(history).where(history.c.transfer_id == transfer_id).order_by(history.c.seq)
        )
        return [
            StatusChange(
                r.transfer_id, Direction(r.direction), TransferStatus(r.status), _aware(r.at)
            )
            for r in rows
        ]


class SqlKeys:
    """`Keys` over ``bank_pix_keys`` (a local copy; CodePix's registry is the truth)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, account_id: str, kind: PixKeyKind, key: str) -> None:
        try:
            with self._session.begin_nested():
                self._session.execute(
                    pix_keys.insert().values(kind=str(kind), key=key, account_id=account_id)
                )
        except sa.exc.IntegrityError:
            pass  # registered before: CodePix, which decides ownership, said it is ours

    def for_account(self, account_id: str) -> Sequence[tuple[PixKeyKind, str]]:
        rows = self._session.execute(
            sa.select(pix_keys.c.kind, pix_keys.c.key)
            .where(pix_keys.c.account_id == account_id)
            .order_by(pix_keys.c.kind, pix_keys.c.key)
        )
        return [(PixKeyKind(r.kind), r.key) for r in rows]


class OutboxMessages:
    """`Outgoing` writing to the bank's outbox in the session's transaction."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def emit(self, message_type: str, key: str, payload: Mapping[str, Any]) -> None:
        # The caller's trace (an HTTP request, a consumed message) continues in the message.
        message = Message(
            type=message_type, key=key, payload=dict(payload), headers=capture_context()
        )
        OUTBOX.add(self._session, message)


class SqlBankUnitOfWork(SessionUnitOfWork):
    """A `BankUnitOfWork`: the bank's repositories, outbox and inbox on one Session."""

    def _bind(self, session: Session) -> None:
        self.accounts: Accounts = SqlAccounts(session)
        self.transfers: Transfers = SqlTransfers(session)
        self.keys: Keys = SqlKeys(session)
        self.messages: Outgoing = OutboxMessages(session)
        self.inbox: InboxPort = SqlInbox(session, INBOX)


def create_bank_schema(engine: sa.Engine) -> None:
    """Create the bank's tables (demos and tests; use migrations in production)."""
    metadata.create_all(engine)
    OUTBOX.create_tables(engine)


def bank_unit_of_work(engine: sa.Engine) -> Callable[[], BankUnitOfWork]:
    """The unit-of-work factory the bank's use cases take."""
    sessions = sessionmaker(engine, autobegin=False, expire_on_commit=False)
    return lambda: SqlBankUnitOfWork(sessions)


__all__ = [
    "INBOX",
    "OUTBOX",
    "TO_CODEPIX",
    "SqlBankUnitOfWork",
    "bank_unit_of_work",
    "create_bank_schema",
    "create_engine",
    "metadata",
]
