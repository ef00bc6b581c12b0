"""The SQL unit of work: repositories, outbox and inbox on one Session, one transaction."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from examples.codepix.application import (
    AccountRepository,
    BankRepository,
    InboxPort,
    MessageSink,
    OutgoingMessage,
    PixKeyRepository,
    TransactionRepository,
    UnitOfWork,
)
from resilience.messaging import Message, TopicRouter
from resilience.outbox import Inbox, Outbox
from resilience.policies import check_deadline

from . import tables
from .repositories import SqlAccounts, SqlBanks, SqlPixKeys, SqlTransactions

DESTINATION_HEADER: Final = "codepix-destination"
"""Header naming the topic an outgoing message goes to (``bank001``); the router reads it."""


def route_to_bank(message: Message) -> str:
    """The destination topic of a message written by `OutboxSink`."""
    return message.headers[DESTINATION_HEADER]


ROUTER: Final = TopicRouter(default=route_to_bank)
"""Routes outgoing messages to the destination bank's topic (used by outbox and publisher)."""

OUTBOX: Final = Outbox(tables.outbox, router=ROUTER)
INBOX: Final = Inbox(tables.inbox)


class OutboxSink:
    """`MessageSink` writing to the outbox in the session's transaction (published after commit)."""

    def __init__(self, session: Session, outbox: Outbox = OUTBOX) -> None:
        self._session = session
        self._outbox = outbox

    def emit(self, message: OutgoingMessage) -> None:
        self._outbox.add(
            self._session,
            Message(
                type=message.type,
                key=message.key,
                payload=dict(message.payload),
                headers={DESTINATION_HEADER: f"bank{message.bank_code}"},
            ),
        )


class SqlInbox:
    """`InboxPort` backed by the toolkit's `Inbox`, in the session's transaction."""

    def __init__(self, session: Session, inbox: Inbox = INBOX) -> None:
        self._session = session
        self._inbox = inbox

    def first_time(self, consumer: str, message_id: str) -> bool:
        return self._inbox.record(self._session, consumer, message_id)


class SessionUnitOfWork:
    """One SQLAlchemy Session, one transaction: the part every unit of work shares.

    Subclasses bind their repositories to the session in `_bind`. Leaving the
    ``with`` block without `commit` rolls back. `commit` refuses to commit once
    the caller's deadline (`resilience.policies.deadline`) has passed: a
    client that gave up must not find its change made anyway after it retried.
    """

    def __init__(self, sessions: Callable[[], Session]) -> None:
        self._sessions = sessions
        self._session: Session | None = None

    def _bind(self, session: Session) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        session = self._session = self._sessions()
        session.begin()
        self._bind(session)
        return self

    def commit(self) -> None:
        assert self._session is not None, "use the unit of work in a with block"
        check_deadline()
        self._session.commit()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.rollback()  # no-op after commit
            session.close()


class SqlUnitOfWork(SessionUnitOfWork):
    """CodePix's `UnitOfWork`: its repositories, outbox and inbox on one Session."""

    def _bind(self, session: Session) -> None:
        accounts, pix_keys = SqlAccounts(session), SqlPixKeys(session)
        # Annotated with the ports: mypy checks each adapter satisfies its Protocol.
        self.banks: BankRepository = SqlBanks(session)
        self.accounts: AccountRepository = accounts
        self.pix_keys: PixKeyRepository = pix_keys
        self.transactions: TransactionRepository = SqlTransactions(session, pix_keys, accounts)
        self.messages: MessageSink = OutboxSink(session)
        self.inbox: InboxPort = SqlInbox(session)


def create_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine for *url* (SQLite or PostgreSQL), set up for concurrent writers.

    SQLite: WAL journal and ``BEGIN IMMEDIATE``, so two writers queue on the
    lock (up to 30 s) instead of one failing with "database is locked" when
    both try to upgrade a read lock.
    """
    engine = sa.create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: object, record: object) -> None:
            dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_schema(engine: sa.Engine) -> None:
    """Create every table CodePix uses (demos and tests; use migrations in production)."""
    tables.metadata.create_all(engine)
    OUTBOX.create_tables(engine)


def unit_of_work_factory(engine: sa.Engine) -> Callable[[], UnitOfWork]:
    """The `UnitOfWorkFactory` the use cases take."""
    sessions = sessionmaker(engine, autobegin=False, expire_on_commit=False)
    return lambda: SqlUnitOfWork(sessions)
