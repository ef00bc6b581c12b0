"""Store factories for the idempotency tests: memory, and real Redis, PostgreSQL, SQLite, MariaDB."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilience.idempotency import MemoryStore, RedisStore, SqlStore, idempotency_table

StoreFactory = Callable[[], Any]


def sql_engine(url: str) -> Any:
    import sqlalchemy as sa

    if url.startswith("sqlite"):
        return sa.create_engine(url, connect_args={"timeout": 30})
    return sa.create_engine(
        url, pool_size=20, max_overflow=80, pool_pre_ping=url.startswith("mysql")
    )


@pytest.fixture
def make_sql_store() -> Iterator[Callable[[str], SqlStore]]:
    """``make_sql_store(url)``: a SqlStore on a fresh uniquely named table, dropped afterwards."""
    import sqlalchemy as sa

    made: list[SqlStore] = []

    def make(url: str) -> SqlStore:
        engine = sql_engine(url)
        table = idempotency_table(sa.MetaData(), name=f"idem_{uuid.uuid4().hex[:10]}")
        store = SqlStore(engine, table)
        store.create_table()
        made.append(store)
        return store

    yield make
    for store in made:
        store.table.drop(store.engine, checkfirst=True)
        store.engine.dispose()


@pytest.fixture(params=["memory", "redis", "postgres", "sqlite", "mariadb"])
def store(request: pytest.FixtureRequest, make_sql_store: Callable[[str], SqlStore]) -> Any:
    """Every store the library ships, each against its real backend."""
    kind = request.param
    if kind == "memory":
        return MemoryStore()
    if kind == "redis":
        client = request.getfixturevalue("redis_client")
        return RedisStore(client, prefix=request.getfixturevalue("redis_prefix"))
    if kind == "postgres":
        return make_sql_store(request.getfixturevalue("postgres_url"))
    if kind == "mariadb":
        return make_sql_store(request.getfixturevalue("mariadb_url"))
    return make_sql_store(request.getfixturevalue("sqlite_url"))


@pytest.fixture(params=["redis", "postgres", "sqlite", "mariadb"])
def server_store(request: pytest.FixtureRequest, make_sql_store: Callable[[str], SqlStore]) -> Any:
    """The stores judged by a server's clock (not the caller's)."""
    kind = request.param
    if kind == "redis":
        client = request.getfixturevalue("redis_client")
        return RedisStore(client, prefix=request.getfixturevalue("redis_prefix"))
    if kind == "postgres":
        return make_sql_store(request.getfixturevalue("postgres_url"))
    if kind == "mariadb":
        return make_sql_store(request.getfixturevalue("mariadb_url"))
    return make_sql_store(request.getfixturevalue("sqlite_url"))
