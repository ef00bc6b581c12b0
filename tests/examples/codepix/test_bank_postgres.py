"""The bank's use cases on PostgreSQL, where concurrent requests really run side by side."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from examples.codepix.adapters.sql import create_engine
from examples.codepix.bank.adapters.sql import (
    bank_unit_of_work,
    create_bank_schema,
    entries,
    transfers,
)
from examples.codepix.bank.application import SendTransfer, Sent
from examples.codepix.bank.domain import EntryKind
from examples.codepix.bank.ports import AccountView

from resilience.testing import postgres_database

DEPOSIT = 10_000


@pytest.fixture
def bank_engine(postgres_dsn: str) -> Iterator[sa.Engine]:
    """A fresh database for one bank holding account ``001-ann`` with `DEPOSIT` cents."""
    admin = postgres_dsn.rsplit("/", 1)[0] + "/postgres"
    with postgres_database(admin, prefix="bank") as dsn:
        engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
        create_bank_schema(engine)
        with bank_unit_of_work(engine)() as uow:
            uow.accounts.add(AccountView("001-ann", "100001", "Ann", 0))
            uow.accounts.post("001-ann", EntryKind.DEPOSIT, DEPOSIT, None)
            uow.commit()
        yield engine
        engine.dispose()


def test_a_double_submit_is_one_transfer_even_when_both_arrive_at_once(
    bank_engine: sa.Engine,
) -> None:
    """The web form's hidden transfer id makes a double click safe: both requests get the
    transfer, one debit, no 500 from the second one's primary key."""
    send = SendTransfer(bank_unit_of_work(bank_engine))
    rounds, clicks = 10, 4

    def click(together: threading.Barrier, transfer_id: str) -> Sent:
        together.wait()
        return send(
            account_id="001-ann",
            pix_key_kind="email",
            pix_key="bob@example.com",
            amount_cents=100,
            transfer_id=transfer_id,
        )

    for n in range(rounds):
        together = threading.Barrier(clicks)
        with ThreadPoolExecutor(clicks) as pool:
            results = list(pool.map(click, [together] * clicks, [f"double-{n}"] * clicks))
        assert [r.created for r in results].count(True) == 1
        assert {r.transfer.id for r in results} == {f"double-{n}"}
    with bank_engine.connect() as conn:
        debits = conn.execute(
            sa.select(sa.func.count()).where(entries.c.kind == "debit")
        ).scalar_one()
        sent = conn.execute(sa.select(sa.func.count()).select_from(transfers)).scalar_one()
    assert debits == sent == rounds
    with bank_unit_of_work(bank_engine)() as uow:
        account = uow.accounts.get("001-ann")
    assert account is not None
    assert account.balance_cents == DEPOSIT - rounds * 100
