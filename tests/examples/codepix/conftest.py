"""Shared CodePix fixtures: a seeded database (two banks, three accounts)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from examples.codepix.adapters.sql import create_engine, create_schema, unit_of_work_factory
from examples.codepix.application import OpenAccount, RegisterBank, UnitOfWorkFactory


@dataclass(frozen=True)
class CodePixDb:
    engine: sa.Engine
    uow: UnitOfWorkFactory


def seed(uow: UnitOfWorkFactory) -> None:
    """Bank 001 with Ann and Carl, bank 002 with Bob."""
    RegisterBank(uow)("001", "Banco Um")
    RegisterBank(uow)("002", "Banco Dois")
    open_account = OpenAccount(uow)
    open_account(bank_code="001", account_id="acc-ann", number="1001", owner_name="Ann")
    open_account(bank_code="001", account_id="acc-carl", number="1002", owner_name="Carl")
    open_account(bank_code="002", account_id="acc-bob", number="2001", owner_name="Bob")


@pytest.fixture
def codepix_db(sqlite_url: str) -> Iterator[CodePixDb]:
    engine = create_engine(sqlite_url)
    create_schema(engine)
    uow = unit_of_work_factory(engine)
    seed(uow)
    yield CodePixDb(engine, uow)
    engine.dispose()
