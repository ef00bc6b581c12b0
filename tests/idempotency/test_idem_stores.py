"""The store contract, run against every store on its real backend."""

from __future__ import annotations

import time
from typing import Any

import pytest

from resilience._errors import IdempotencyLeaseLostError, IdempotencyRecordError
from resilience.idempotency import (
    Claimed,
    Completed,
    InProgress,
    MemoryStore,
    Mismatch,
    RedisStore,
    SqlStore,
)

FP, OTHER_FP = "a" * 64, "b" * 64


def test_first_claim_wins_then_in_progress(store: Any) -> None:
    first = store.claim("k", FP, "t1", 30, 60)
    assert first == Claimed("t1")
    second = store.claim("k", FP, "t2", 30, 60)
    assert isinstance(second, InProgress)
    assert 25 < second.retry_after <= 30


def test_complete_then_replay_and_mismatch(store: Any) -> None:
    store.claim("k", FP, "t1", 30, 60)
    store.complete("k", "t1", "r42", 60)
    assert store.claim("k", FP, "t2", 30, 60) == Completed("r42")
    assert store.claim("k", OTHER_FP, "t3", 30, 60) == Mismatch()
    assert store.claim("k", FP, "t4", 30, 60) == Completed("r42")


def test_mismatch_while_in_progress(store: Any) -> None:
    store.claim("k", FP, "t1", 30, 60)
    assert store.claim("k", OTHER_FP, "t2", 30, 60) == Mismatch()


def test_release_lets_a_retry_claim(store: Any) -> None:
    store.claim("k", FP, "t1", 30, 60)
    store.release("k", "t1")
    assert store.claim("k", FP, "t2", 30, 60) == Claimed("t2")


def test_release_without_checkpoints_frees_the_key_for_any_payload(store: Any) -> None:
    store.claim("k", FP, "t1", 30, 60)
    store.release("k", "t1")
    assert store.claim("k", OTHER_FP, "t2", 30, 60) == Claimed("t2")


def test_checkpoints_survive_release_and_pin_the_payload(store: Any) -> None:
    store.claim("k", FP, "t1", 30, 60)
    store.checkpoint("k", "t1", "charged", '"ch_1"')
    store.checkpoint("k", "t1", "emailed", "true")
    store.release("k", "t1")
    assert store.claim("k", OTHER_FP, "t2", 30, 60) == Mismatch()
    assert store.claim("k", FP, "t3", 30, 60) == Claimed(
        "t3", {"charged": '"ch_1"', "emailed": "true"}
    )


def test_fencing_rejects_a_stale_owner(store: Any) -> None:
    store.claim("k", FP, "t1", 30, 60)
    for op in (
        lambda: store.complete("k", "stale", "r1", 60),
        lambda: store.release("k", "stale"),
        lambda: store.renew("k", "stale", 30),
        lambda: store.checkpoint("k", "stale", "x", "1"),
    ):
        with pytest.raises(IdempotencyLeaseLostError):
            op()
    store.complete("k", "t1", "r1", 60)
    with pytest.raises(IdempotencyLeaseLostError):
        store.complete("k", "t1", "r2", 60)  # completed: even the old owner may not rewrite
    with pytest.raises(IdempotencyLeaseLostError):
        store.release("missing", "t1")


def test_renew_extends_the_lease(store: Any) -> None:
    store.claim("k", FP, "t1", 1, 60)
    store.renew("k", "t1", 50)
    outcome = store.claim("k", FP, "t2", 1, 60)
    assert isinstance(outcome, InProgress)
    assert outcome.retry_after > 40


def test_lease_expiry_lets_a_retry_take_over_and_fences_the_old_owner(server_store: Any) -> None:
    store = server_store
    store.claim("k", FP, "t1", 0.3, 60)
    store.checkpoint("k", "t1", "step1", "1")
    time.sleep(0.45)
    assert store.claim("k", FP, "t2", 30, 60) == Claimed("t2", {"step1": "1"})
    with pytest.raises(IdempotencyLeaseLostError):
        store.checkpoint("k", "t1", "step2", "2")
    with pytest.raises(IdempotencyLeaseLostError):
        store.complete("k", "t1", "late", 60)
    store.complete("k", "t2", "ok", 60)
    assert store.claim("k", FP, "t3", 30, 60) == Completed("ok")


def test_result_ttl_expires(server_store: Any) -> None:
    store = server_store
    store.claim("k", FP, "t1", 0.2, 0.3)
    store.complete("k", "t1", "r", 0.3)
    assert store.claim("k", OTHER_FP, "t2", 30, 60) == Mismatch()
    time.sleep(0.45)
    assert store.claim("k", OTHER_FP, "t3", 30, 60) == Claimed("t3")


def test_memory_store_uses_its_clock() -> None:
    from resilience.testing import FakeClock

    clock = FakeClock()
    store = MemoryStore(clock)
    store.claim("k", FP, "t1", 5, 60)
    clock.advance(4.9)
    assert isinstance(store.claim("k", FP, "t2", 5, 60), InProgress)
    clock.advance(0.2)
    assert store.claim("k", FP, "t3", 5, 60) == Claimed("t3")
    store.complete("k", "t3", "r", 10)
    clock.advance(11)
    assert store.purge_expired() == 1
    assert len(store) == 0


async def test_async_methods(store: Any) -> None:
    if isinstance(store, SqlStore):
        from resilience.idempotency._store import as_async_store

        store = as_async_store(store)  # blocking stores are bridged through worker threads
    if isinstance(store, RedisStore):
        import redis.asyncio

        client = redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0")
        store = RedisStore(async_client=client, prefix=store.prefix)
    try:
        assert await store.aclaim("k", FP, "t1", 30, 60) == Claimed("t1")
        await store.arenew("k", "t1", 30)
        await store.acheckpoint("k", "t1", "s", "1")
        await store.arelease("k", "t1")
        assert await store.aclaim("k", FP, "t2", 30, 60) == Claimed("t2", {"s": "1"})
        await store.acomplete("k", "t2", "done", 60)
        assert await store.aclaim("k", FP, "t3", 30, 60) == Completed("done")
        with pytest.raises(IdempotencyLeaseLostError):
            await store.acomplete("k", "t2", "again", 60)
    finally:
        if isinstance(store, RedisStore):
            await client.aclose()


# --------------------------------------------------------------------------- garbage in the store


def test_redis_corrupted_records(redis_client: Any, redis_prefix: str) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix)
    redis_client.set(store.redis_key("wrongtype"), "garbage")
    with pytest.raises(IdempotencyRecordError):
        store.claim("wrongtype", FP, "t", 30, 60)
    redis_client.hset(store.redis_key("noshape"), mapping={"x": "1"})
    with pytest.raises(IdempotencyRecordError):
        store.claim("noshape", FP, "t", 30, 60)
    redis_client.hset(store.redis_key("badstate"), mapping={"f": FP, "s": "z"})
    with pytest.raises(IdempotencyRecordError):
        store.claim("badstate", FP, "t", 30, 60)
    redis_client.hset(store.redis_key("noresult"), mapping={"f": FP, "s": "d"})
    with pytest.raises(IdempotencyRecordError):
        store.claim("noresult", FP, "t", 30, 60)


@pytest.mark.parametrize("backend", ["postgres", "sqlite", "mariadb"])
def test_sql_corrupted_records(
    backend: str, request: pytest.FixtureRequest, make_sql_store: Any
) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    store: SqlStore = make_sql_store(url)
    store.claim("badstate", FP, "t1", 30, 60)
    store.claim("badcp", FP, "t1", 0.05, 60)
    store.claim("noresult", FP, "t1", 30, 60)
    c = store.table.c
    with store.engine.begin() as conn:
        conn.execute(store.table.update().where(c.key == "badstate").values(state="z"))
        conn.execute(store.table.update().where(c.key == "badcp").values(checkpoints="{oops"))
        conn.execute(store.table.update().where(c.key == "noresult").values(state="d"))
    time.sleep(0.1)
    for key in ("badstate", "badcp", "noresult"):
        with pytest.raises(IdempotencyRecordError):
            store.claim(key, FP, "t2", 30, 60)


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_sql_purge_expired(
    backend: str, request: pytest.FixtureRequest, make_sql_store: Any
) -> None:
    store: SqlStore = make_sql_store(request.getfixturevalue(f"{backend}_url"))
    for i in range(7):
        store.claim(f"k{i}", FP, "t", 0.05, 0.05)
        store.complete(f"k{i}", "t", "r", 0.05)
    store.claim("live", FP, "t", 30, 60)
    time.sleep(0.15)
    assert store.purge_expired(batch_size=3) == 7
    assert isinstance(store.claim("live", FP, "t2", 30, 60), InProgress)
