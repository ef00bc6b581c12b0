"""Leases under faults: a lost lease is visible to the running call, and renewals never hang."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from resilience._errors import IdempotencyLeaseLostError
from resilience.idempotency import (
    Claimed,
    MemoryStore,
    RedisStore,
    SqlStore,
    current_idempotency,
    idempotent,
)

pytestmark = pytest.mark.integration  # loopback proxies and lock-holding transactions

FP = "a" * 64


class FlakyRenewals:
    """A real store whose renewals can be made to fail, as during a network blip."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.failing = threading.Event()

    def claim(self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float) -> Any:
        return self.store.claim(key, fingerprint, token, lease_ttl, ttl)

    def complete(self, key: str, token: str, payload: str, ttl: float) -> None:
        self.store.complete(key, token, payload, ttl)

    def release(self, key: str, token: str) -> None:
        self.store.release(key, token)

    def renew(self, key: str, token: str, lease_ttl: float) -> None:
        if self.failing.is_set():
            raise ConnectionError("renewal lost on the way")
        self.store.renew(key, token, lease_ttl)

    def checkpoint(self, key: str, token: str, name: str, data: str) -> None:
        self.store.checkpoint(key, token, name, data)


def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_a_lost_lease_is_visible_and_stops_the_next_side_effect(server_store: Any) -> None:
    flaky = FlakyRenewals(server_store)
    effects: list[str] = []
    seen: dict[str, bool] = {}
    taken_over = threading.Event()

    @idempotent(flaky, key="order", in_progress_ttl=0.6)
    def pay(order: str) -> str:
        ctx = current_idempotency()
        effects.append("charge")
        seen["at_start"] = ctx.lease_lost
        flaky.failing.set()  # renewals stop reaching the store: the lease lapses there
        _wait_until(lambda: ctx.lease_lost)  # judged from the last confirmed renewal
        seen["by_time"] = True
        taken_over.wait(10)  # another caller takes the key over on the store's clock
        flaky.failing.clear()
        _wait_until(lambda: ctx.lease is not None and ctx.lease.lost)  # the store says no
        ctx.ensure_lease()  # raises: the second side effect never happens
        effects.append("ship")
        return "first"

    errors: list[BaseException] = []

    def first() -> None:
        try:
            pay("o1")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    _wait_until(lambda: "by_time" in seen)
    server = server_store
    _wait_until(
        lambda: type(server.claim(_store_key(pay, "o1"), _fp(pay), "t2", 30, 60)) is Claimed
    )
    taken_over.set()
    thread.join(20)
    assert seen["at_start"] is False
    assert effects == ["charge"]
    assert len(errors) == 1
    assert isinstance(errors[0], IdempotencyLeaseLostError)
    # the stale owner's release was fenced off: the new owner still holds the key
    server.complete(_store_key(pay, "o1"), "t2", 'r"second"', 60)
    assert pay("o1") == "second"


def _store_key(fn: Any, key: str) -> str:
    from resilience.idempotency._core import scoped_key

    return scoped_key(f"{fn.__module__}.{fn.__qualname__}", "", key)


def _fp(fn: Any) -> str:
    from resilience.idempotency._core import fingerprint

    return fingerprint({"order": "o1"})


def test_without_a_heartbeat_the_lease_counts_as_lost_after_in_progress_ttl() -> None:
    @idempotent(MemoryStore(), key="k", in_progress_ttl=0.2, heartbeat=False)
    def job(k: str) -> bool:
        ctx = current_idempotency()
        before = ctx.lease_lost
        time.sleep(0.25)
        with pytest.raises(IdempotencyLeaseLostError):
            ctx.ensure_lease()
        return before

    assert job("a") is False


async def test_async_lost_lease_is_visible(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    store = RedisStore(async_client=client, prefix=redis_prefix)

    @idempotent(store, key="k", in_progress_ttl=0.3)
    async def job(k: str) -> str:
        import asyncio

        ctx = current_idempotency()
        # a rival overwrites the record (as after a lapse); the next heartbeat is refused
        name = store.redis_key(ctx.key)
        await client.set(name, f"p\nrival\n{FP}\n\n60000\n{ctx.key}", px=60_000)
        for _ in range(250):  # up to 5 s for the next heartbeat
            if ctx.lease_lost:
                break
            await asyncio.sleep(0.02)
        ctx.ensure_lease()
        return "unreachable"

    try:
        with pytest.raises(IdempotencyLeaseLostError):
            await job("a")
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- renewals never hang


class StallingProxy:
    """A TCP proxy to the real Redis that can stop forwarding, like a stalled server."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while not self.closed.is_set():
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream)
                self.sockets += [client, server]
                threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        with contextlib.suppress(OSError):
            while not self.closed.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.05)
                if self.stalled.is_set():
                    continue  # bytes wait in the kernel: the "server" answers nothing
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for s in self.sockets:
            s.close()


@pytest.fixture
def stalling_proxy(redis_client: Any) -> Iterator[StallingProxy]:
    kwargs = redis_client.connection_pool.connection_kwargs
    proxy = StallingProxy((kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379)))
    yield proxy
    proxy.close()


def test_redis_renewal_gives_up_on_a_stalled_server(
    stalling_proxy: StallingProxy, redis_prefix: str
) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=stalling_proxy.port)
    store = RedisStore(client, prefix=redis_prefix, renew_timeout=0.3)
    try:
        assert store.claim("k", FP, "t1", 30, 60) == Claimed("t1")
        store.renew("k", "t1", 30)
        stalling_proxy.stalled.set()
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            store.renew("k", "t1", 30)
        assert time.monotonic() - started < 2.0  # not the client's unbounded default
        stalling_proxy.stalled.clear()
        store.renew("k", "t1", 30)  # a fresh connection: the next beat works again
        store.complete("k", "t1", "r1", 60)
    finally:
        store.close()
        client.close()


@pytest.mark.parametrize("backend", ["postgres", "sqlite", "mariadb"])
def test_sql_renewal_gives_up_on_a_locked_record(
    backend: str, request: pytest.FixtureRequest, make_sql_store: Any
) -> None:
    import sqlalchemy as sa

    url = request.getfixturevalue(f"{backend}_url")
    store: SqlStore = make_sql_store(url)
    store = SqlStore(store.engine, store.table, renew_timeout=0.3)
    assert store.claim("k", FP, "t1", 30, 60) == Claimed("t1")
    locker = store.engine.connect()
    try:
        if backend != "sqlite":  # another transaction holds the record's row lock
            locker.execute(sa.select(store.table).with_for_update())
        else:  # another transaction holds SQLite's write lock
            locker.exec_driver_sql("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError):
            store.renew("k", "t1", 30)
        assert time.monotonic() - started < 3.0  # not the engine's 30 s busy timeout
    finally:
        locker.rollback()
        locker.close()
    store.renew("k", "t1", 30)  # the lock is gone: renewals work again
    store.complete("k", "t1", "r1", 60)
    with store.engine.connect() as conn:  # the pooled connection got its old timeout back
        if backend == "sqlite":
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
