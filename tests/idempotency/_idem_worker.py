"""A separate process calling an @idempotent function, for the race and crash tests.

Usage: python _idem_worker.py MODE STORE_KIND STORE_URL STORE_NAME REDIS_URL COUNTER KEY [START_AT]
Side effects are counted with Redis INCR on COUNTER (shared by every process).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import redis

from resilience._errors import IdempotencyInProgressError
from resilience.idempotency import (
    RedisStore,
    SqlStore,
    current_idempotency,
    idempotency_table,
    idempotent,
)


def make_store(kind: str, url: str, name: str) -> Any:
    if kind == "redis":
        return RedisStore(redis.Redis.from_url(url), prefix=name)
    import sqlalchemy as sa

    args = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    engine = sa.create_engine(url, **args)
    return SqlStore(engine, idempotency_table(sa.MetaData(), name=name))


def race(
    store: Any, counter: redis.Redis, name: str, key: str, start_at: float, threads: int
) -> None:
    @idempotent(store, key="order_id", namespace="race", in_progress_ttl=20)
    def charge(order_id: str) -> dict[str, Any]:
        n = counter.incr(name)
        time.sleep(0.3)
        return {"charge": f"ch_{order_id}", "n": n}

    outcomes: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        time.sleep(max(0.0, start_at - time.time()))
        try:
            result = json.dumps(charge(key), sort_keys=True)
        except IdempotencyInProgressError:
            result = "in-progress"
        with lock:
            outcomes.append(result)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps(outcomes), flush=True)


def crash(store: Any, counter: redis.Redis, name: str, key: str) -> None:
    @idempotent(store, key="order_id", namespace="crash", in_progress_ttl=2)
    def checkout(order_id: str) -> str:
        ctx = current_idempotency()
        if "charged" not in ctx:
            counter.incr(name + ":step1")
            ctx.checkpoint("charged", "ch_1")
        print("ready", flush=True)
        time.sleep(60)  # SIGKILLed here, after step 1 and before step 2
        return "never"

    checkout(key)


def main() -> None:
    mode, kind, url, name, redis_url, counter_name, key = sys.argv[1:8]
    store = make_store(kind, url, name)
    counter = redis.Redis.from_url(redis_url)
    if mode == "race":
        race(store, counter, counter_name, key, float(sys.argv[8]), int(sys.argv[9]))
    else:
        crash(store, counter, counter_name, key)


if __name__ == "__main__":
    main()
