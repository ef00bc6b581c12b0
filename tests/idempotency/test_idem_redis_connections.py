"""The blocking RedisStore's own connections: the WATCH they carry, their number, their state.

A claim keeps a connection WATCHing its record until it settles. These tests
break that connection in the ways real deployments do and check the fence
still holds: a completion never overwrites another owner's record.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from resilience._errors import IdempotencyLeaseLostError
from resilience.idempotency import Claimed, Completed, RedisStore

FP = "a" * 64


def _takeover(store: RedisStore, other: RedisStore) -> None:
    """*store*'s lease on "k" (0.2 s) lapses and *other* claims the key as "t2"."""
    time.sleep(0.3)
    assert other.claim("k", FP, "t2", 30, 60) == Claimed("t2")


def _assert_fenced(store: RedisStore, other: RedisStore) -> None:
    with pytest.raises(IdempotencyLeaseLostError):
        store.complete("k", "t1", "stale", 60)
    other.complete("k", "t2", "fresh", 60)  # the new owner's result is the one kept
    assert other.claim("k", FP, "t3", 30, 60) == Completed("fresh")


def test_a_claim_connection_closed_locally_never_completes_unfenced(
    redis_client: Any, redis_prefix: str
) -> None:
    """A reconnect drops the WATCH: the completion must go to the fenced script."""
    store = RedisStore(redis_client, prefix=redis_prefix)
    other = RedisStore(redis_client, prefix=redis_prefix)
    try:
        store.claim("k", FP, "t1", 0.2, 60)
        assert store._direct is not None
        store._direct.held["t1"].conn.disconnect()  # e.g. `close()` racing a running call
        _takeover(store, other)
        _assert_fenced(store, other)
    finally:
        store.close()
        other.close()


def test_a_health_check_reconnect_never_completes_unfenced(
    redis_url: str, redis_client: Any, redis_prefix: str
) -> None:
    """The server drops the claim's connection; redis-py's health check would reconnect it."""
    import redis

    name = f"idem-{uuid.uuid4().hex[:8]}"
    url = urlsplit(redis_url)  # the constructor's defaults: the health check retries, reconnecting
    client = redis.Redis(
        host=url.hostname or "127.0.0.1",
        port=url.port or 6379,
        health_check_interval=0.05,
        client_name=name,
    )
    assert client.connection_pool.make_connection().retry.get_retries() > 0
    store = RedisStore(client, prefix=redis_prefix)
    other = RedisStore(redis_client, prefix=redis_prefix)
    try:
        store.claim("k", FP, "t1", 0.2, 60)
        killed = [c for c in redis_client.client_list() if c.get("name") == name]
        assert killed
        for c in killed:
            redis_client.client_kill_filter(_id=c["id"])
        _takeover(store, other)
        _assert_fenced(store, other)
    finally:
        store.close()
        other.close()
        client.close()


def test_an_interrupt_between_replies_never_leaves_a_reply_for_the_next_call(
    redis_client: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C lands between the claim's two replies; the next claim must not read the stale one."""
    store = RedisStore(redis_client, prefix=redis_prefix)
    try:
        store.claim("warm", FP, "t0", 30, 60)
        store.complete("warm", "t0", "r0", 60)  # one connected connection, idle again
        direct = store._direct
        assert direct is not None
        ((conn, _),) = direct._idle
        real = conn.read_response
        calls = []

        def interrupted(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            reply = real(*args, **kwargs)
            if len(calls) == 1:
                raise KeyboardInterrupt  # after the SET's reply, before the WATCH's
            return reply

        monkeypatch.setattr(conn, "read_response", interrupted)
        with pytest.raises(KeyboardInterrupt):
            store.claim("k1", FP, "t1", 30, 60)
        monkeypatch.setattr(conn, "read_response", real)
        assert store.claim("k2", FP, "t2", 30, 60) == Claimed("t2")
        store.complete("k2", "t2", "r2", 60)
        assert store.claim("k2", FP, "t3", 30, 60) == Completed("r2")
    finally:
        store.close()


def test_connections_stay_within_the_clients_pool_limit(redis_url: str, redis_prefix: str) -> None:
    """64 calls at once on a pool of 4: connections stay bounded, and every call completes."""
    import redis

    name = f"idem-{uuid.uuid4().hex[:8]}"
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=4, client_name=name)
    client = redis.Redis(connection_pool=pool)
    store = RedisStore(client, prefix=redis_prefix)
    admin = redis.Redis.from_url(redis_url)
    peak = 0
    barrier = threading.Barrier(64)
    errors: list[BaseException] = []

    def call(i: int) -> None:
        nonlocal peak
        try:
            assert store.claim(f"k{i}", FP, f"t{i}", 30, 60) == Claimed(f"t{i}")
            barrier.wait(30)  # every claim is open at this point
            if i == 0:
                peak = sum(c.get("name") == name for c in admin.client_list())
            barrier.wait(30)
            store.complete(f"k{i}", f"t{i}", f"r{i}", 60)
        except BaseException as exc:  # reported below with the test's own assertion
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(64)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        # the store's own (at most 4) plus the client's pool (at most 4), which takes the
        # claims the store has no connection for: never one per call
        assert 1 <= peak <= 8
        assert store._direct is not None
        assert store._direct._open <= 4
        assert [store.claim(f"k{i}", FP, "again", 30, 60) for i in range(64)] == [
            Completed(f"r{i}") for i in range(64)
        ]
    finally:
        store.close()
        client.close()
        admin.close()
