"""Idempotency keys: our decorator and middleware against AWS Lambda Powertools and raw redis-py.

Every new-key case uses a fresh key per call (a per-run prefix, deleted at the
end); replay cases hit one key completed during setup.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import warnings
from typing import Any

from ._harness import Budget, Case, Context, Group, Target

RAW = "raw redis SET NX (1 round trip)"
OURS_NEW = "resilience @idempotent + RedisStore"
PT_NEW = "powertools idempotent_function + Redis"
OURS_REPLAY = "resilience replay (RedisStore)"
PT_REPLAY = "powertools replay (Redis)"


def _prefix() -> str:
    return f"bench:idem:{os.urandom(4).hex()}:"


class _Redis:
    """One client and key prefix per case, cleaned up in teardown."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = _prefix()
        self.counter = itertools.count()

        self.store: Any = None

    def cleanup(self) -> None:
        if self.store is not None:
            self.store.close()
        keys = list(self.client.scan_iter(match=f"{self.prefix}*", count=1000))
        keys += list(self.client.scan_iter(match="*bench_idem_pt*", count=1000))
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start : start + 500])
        self.client.close()


def _raw_setnx(ctx: Context) -> Any:
    r = _Redis(ctx.redis_url())

    def op() -> object:
        return r.client.set(f"{r.prefix}{next(r.counter)}", "1", nx=True, px=60_000)

    op.res = r  # type: ignore[attr-defined]
    return op


def _ours(ctx: Context, replay: bool) -> Any:
    from resilience.idempotency import RedisStore, idempotent

    r = _Redis(ctx.redis_url())
    store = r.store = RedisStore(r.client, prefix=r.prefix)

    @idempotent(store, key="order_id", ttl=600, heartbeat=True)
    def charge(order_id: str, amount: int) -> dict[str, Any]:
        return {"charge": order_id, "amount": amount}

    if replay:
        charge("fixed", 100)

        def op() -> object:
            return charge("fixed", 100)
    else:

        def op() -> object:
            return charge(str(next(r.counter)), 100)

    op.res = r  # type: ignore[attr-defined]
    return op


def _powertools(ctx: Context, replay: bool) -> Any:
    from aws_lambda_powertools.utilities.idempotency import (
        IdempotencyConfig,
        idempotent_function,
    )

    try:  # Powertools 3.x: the Redis layer's current name (RedisCachePersistenceLayer is deprecated)
        from aws_lambda_powertools.utilities.idempotency.persistence.cache import (
            CachePersistenceLayer as Layer,
        )
    except ImportError:  # pragma: no cover - older 3.x
        from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
            RedisCachePersistenceLayer as Layer,
        )

    r = _Redis(ctx.redis_url())
    layer = Layer(client=r.client)
    config = IdempotencyConfig(expires_after_seconds=600)
    warnings.filterwarnings("ignore", message="Couldn't determine the remaining time left")
    tag = f"bench_idem_pt{os.urandom(3).hex()}"

    @idempotent_function(
        data_keyword_argument="order", persistence_store=layer, config=config, key_prefix=tag
    )
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        return {"charge": order["id"], "amount": order["amount"]}

    if replay:
        charge(order={"id": "fixed", "amount": 100})

        def op() -> object:
            return charge(order={"id": "fixed", "amount": 100})
    else:

        def op() -> object:
            return charge(order={"id": str(next(r.counter)), "amount": 100})

    op.res = r  # type: ignore[attr-defined]
    return op


def _teardown(op: Any) -> None:
    op.res.cleanup()


def _bare() -> Any:
    def charge(order_id: str, amount: int) -> dict[str, Any]:
        return {"charge": order_id, "amount": amount}

    return lambda: charge("fixed", 100)


def _memory_replay() -> Any:
    from resilience.idempotency import MemoryStore, idempotent

    @idempotent(MemoryStore(), key="order_id")
    def charge(order_id: str, amount: int) -> dict[str, Any]:
        return {"charge": order_id, "amount": amount}

    charge("fixed", 100)
    return lambda: charge("fixed", 100)


def _memory_new() -> Any:
    from resilience.idempotency import MemoryStore, idempotent

    counter = itertools.count()

    @idempotent(MemoryStore(), key="order_id", heartbeat=False)
    def charge(order_id: str, amount: int) -> dict[str, Any]:
        return {"charge": order_id, "amount": amount}

    return lambda: charge(str(next(counter)), 100)


def _decorator_replay_async() -> Any:
    from resilience.idempotency import MemoryStore, idempotent

    @idempotent(MemoryStore(), key="key")
    async def handle(key: str, body: bytes) -> dict[str, Any]:
        return {"status": 201, "body": body.decode()}

    asyncio.run(handle("k", b'{"amount":100}'))
    return lambda: handle("k", b'{"amount":100}')


def _middleware_replay() -> Any:
    from resilience.idempotency import IdempotencyMiddleware, MemoryStore

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b'{"charge":"ch_1"}'
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"17")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    mw = IdempotencyMiddleware(app, store=MemoryStore())
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/charges",
        "raw_path": b"/charges",
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k"), (b"authorization", b"Bearer x")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"amount":100}', "more_body": False}

    async def send(message: Any) -> None:
        return None

    asyncio.run(mw(scope, receive, send))
    return lambda: mw(scope, receive, send)


def groups(ctx: Context) -> list[Group]:
    pt = ("aws_lambda_powertools", "redis")
    return [
        Group(
            name="idempotency.new_key",
            title="First call with a new key (claim + store the result), Redis on loopback",
            baseline=RAW,
            cases=[
                Case(RAW, setup=lambda: _raw_setnx(ctx), requires=("redis",), teardown=_teardown),
                Case(
                    OURS_NEW,
                    setup=lambda: _ours(ctx, replay=False),
                    requires=("redis",),
                    teardown=_teardown,
                    note="2 round trips: SET NX GET + WATCH claims, MULTI/SET/EXEC completes",
                ),
                Case(
                    PT_NEW,
                    setup=lambda: _powertools(ctx, replay=False),
                    requires=pt,
                    teardown=_teardown,
                ),
            ],
            targets=[Target(OURS_NEW, 2.2), Target(OURS_NEW, 0.9, against=PT_NEW)],
            number=1000,
            rounds=9,
            quick_number=5,
        ),
        Group(
            name="idempotency.replay",
            title="Repeat call with a completed key (replay the stored result), Redis on loopback",
            baseline=RAW,
            cases=[
                Case(RAW, setup=lambda: _raw_setnx(ctx), requires=("redis",), teardown=_teardown),
                Case(
                    OURS_REPLAY,
                    setup=lambda: _ours(ctx, replay=True),
                    requires=("redis",),
                    teardown=_teardown,
                    note="1 round trip: SET NX GET returns the stored result",
                ),
                Case(
                    PT_REPLAY,
                    setup=lambda: _powertools(ctx, replay=True),
                    requires=pt,
                    teardown=_teardown,
                ),
            ],
            targets=[Target(OURS_REPLAY, 1.3), Target(OURS_REPLAY, 0.4, against=PT_REPLAY)],
            number=1000,
            rounds=9,
            quick_number=5,
        ),
        Group(
            name="idempotency.memory",
            title="MemoryStore overhead against a bare call (budget: ≤ 3 µs per call)",
            baseline="bare call",
            cases=[
                Case("bare call", setup=_bare),
                Case("MemoryStore replay", setup=_memory_replay),
                Case("MemoryStore new key", setup=_memory_new),
            ],
            budgets=[Budget("MemoryStore replay", 3_000.0)],
            number=20_000,
        ),
        Group(
            name="idempotency.middleware",
            title="HTTP replay through the ASGI middleware vs the decorator (in process, memory store)",
            baseline="decorator replay (async)",
            cases=[
                Case("decorator replay (async)", setup=_decorator_replay_async, is_async=True),
                Case("middleware replay (ASGI)", setup=_middleware_replay, is_async=True),
            ],
            targets=[Target("middleware replay (ASGI)", 1.5)],
            number=20_000,
        ),
    ]
