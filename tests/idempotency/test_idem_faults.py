"""Races, crashes and clock skew against the real servers.

Side effects are counted in Redis (INCR), a place every thread and process shares.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from resilience._errors import IdempotencyInProgressError, IdempotencyLeaseLostError
from resilience.idempotency import RedisStore, SqlStore, current_idempotency, idempotent
from resilience.testing import FakeClock

pytestmark = pytest.mark.integration  # spawns and kills processes

WORKER = Path(__file__).with_name("_idem_worker.py")


def _describe(store: Any, redis_url: str) -> tuple[str, str, str]:
    if isinstance(store, RedisStore):
        return "redis", redis_url, store.prefix
    assert isinstance(store, SqlStore)
    return "sql", store.engine.url.render_as_string(hide_password=False), store.table.name


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.timeout(60)
def test_64_threads_and_4_processes_run_the_body_once(
    server_store: Any, redis_client: Any, redis_url: str, redis_prefix: str
) -> None:
    kind, url, name = _describe(server_store, redis_url)
    counter = f"{redis_prefix}effects"
    start_at = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "race",
                kind,
                url,
                name,
                redis_url,
                counter,
                "o-1",
                str(start_at),
                "4",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for _ in range(4)
    ]

    @idempotent(server_store, key="order_id", namespace="race", in_progress_ttl=20)
    def charge(order_id: str) -> dict[str, Any]:
        n = redis_client.incr(counter)
        time.sleep(0.3)
        return {"charge": f"ch_{order_id}", "n": n}

    outcomes: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        time.sleep(max(0.0, start_at - time.time()))
        try:
            result = json.dumps(charge("o-1"), sort_keys=True)
        except IdempotencyInProgressError:
            result = "in-progress"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=call) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    for proc in procs:
        out, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0
        outcomes.extend(json.loads(out.strip().splitlines()[-1]))

    assert len(outcomes) == 64 + 4 * 4
    assert int(redis_client.get(counter)) == 1  # the side effect ran exactly once
    results = {o for o in outcomes if o != "in-progress"}
    assert results == {json.dumps({"charge": "ch_o-1", "n": 1}, sort_keys=True)}
    assert charge("o-1") == {"charge": "ch_o-1", "n": 1}  # and now everyone replays it


@pytest.mark.timeout(60)
def test_sigkill_mid_call_then_retry_resumes_after_the_lease(
    server_store: Any, redis_client: Any, redis_url: str, redis_prefix: str
) -> None:
    kind, url, name = _describe(server_store, redis_url)
    counter = f"{redis_prefix}crash"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "crash", kind, url, name, redis_url, counter, "o-9"],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.8)  # longer than a third of the lease: the heartbeat has renewed it by now
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    killed_at = time.monotonic()

    step2: list[str] = []

    @idempotent(server_store, key="order_id", namespace="crash", in_progress_ttl=2)
    def checkout(order_id: str) -> str:
        ctx = current_idempotency()
        if "charged" not in ctx:
            redis_client.incr(counter + ":step1")
            ctx.checkpoint("charged", "ch_new")
        step2.append(ctx.get("charged"))
        return f"shipped {ctx.get('charged')}"

    with pytest.raises(IdempotencyInProgressError) as info:
        checkout("o-9")  # the dead caller's lease still holds
    assert info.value.retry_after <= 2.0
    time.sleep(max(0.0, 2.2 - (time.monotonic() - killed_at)))
    assert checkout("o-9") == "shipped ch_1"
    assert checkout("o-9") == "shipped ch_1"
    assert step2 == ["ch_1"]  # step 2 ran once, resuming from the dead caller's checkpoint
    assert int(redis_client.get(counter + ":step1")) == 1  # step 1's side effect happened once


def test_the_callers_clock_does_not_matter(server_store: Any) -> None:
    """Leases are judged by the server: callers whose clocks are hours apart agree."""
    ahead, behind = FakeClock(start=10 * 3600.0), FakeClock(start=-10 * 3600.0)
    gate = threading.Event()
    started = threading.Event()
    errors: list[BaseException] = []

    def first_body(order_id: str) -> str:
        started.set()
        gate.wait(10)
        return "first"

    first = idempotent(
        server_store,
        key="order_id",
        namespace="skew",
        in_progress_ttl=1,
        heartbeat=False,
        clock=ahead,
    )(first_body)
    second = idempotent(
        server_store,
        key="order_id",
        namespace="skew",
        in_progress_ttl=1,
        heartbeat=False,
        clock=behind,
    )(lambda order_id: "second")

    def run_first() -> None:
        try:
            first("o")
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run_first)
    worker.start()
    assert started.wait(10)
    ahead.advance(3600)  # the first caller's clock leaps an hour: the lease must not care
    with pytest.raises(IdempotencyInProgressError):
        second("o")
    time.sleep(1.2)  # real time: now the server says the (unrenewed) lease is over
    assert second("o") == "second"
    gate.set()
    worker.join(10)
    assert len(errors) == 1
    assert isinstance(errors[0], IdempotencyLeaseLostError)  # the stale owner is fenced off
    assert second("o") == "second"


def test_a_call_longer_than_its_lease_keeps_it(server_store: Any) -> None:
    calls: list[int] = []

    @idempotent(server_store, key="k", namespace="renew", in_progress_ttl=0.6)
    def long_call(k: str) -> str:
        calls.append(1)
        time.sleep(1.6)  # well over two leases: only the heartbeat keeps the key
        return "done"

    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(long_call("a")))
    worker.start()
    time.sleep(1.1)
    with pytest.raises(IdempotencyInProgressError):
        long_call("a")
    worker.join(10)
    assert results == ["done"]  # completed with its own token: the lease was never lost
    assert long_call("a") == "done"
    assert calls == [1]


async def test_async_decorator_on_async_redis(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    import asyncio

    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    store = RedisStore(async_client=client, prefix=redis_prefix)
    calls: list[int] = []

    @idempotent(store, key="k", in_progress_ttl=5)
    async def charge(k: str) -> dict[str, int]:
        calls.append(1)
        await current_idempotency().acheckpoint("half", 1)
        await asyncio.sleep(0.2)
        return {"n": len(calls)}

    try:
        outcomes = await asyncio.gather(*(charge("a") for _ in range(20)), return_exceptions=True)
        ok = [o for o in outcomes if not isinstance(o, BaseException)]
        assert all(
            isinstance(o, IdempotencyInProgressError)
            for o in outcomes
            if isinstance(o, BaseException)
        )
        assert ok == [{"n": 1}]
        assert await charge("a") == {"n": 1}
        assert calls == [1]
    finally:
        await client.aclose()


def test_waiting_duplicates_all_get_the_first_result(server_store: Any) -> None:
    calls: list[int] = []

    @idempotent(server_store, key="k", namespace="wait", wait=10, poll_interval=0.05)
    def slow(k: str) -> dict[str, int]:
        calls.append(1)
        time.sleep(0.4)
        return {"n": len(calls)}

    results: list[object] = []
    lock = threading.Lock()

    def call() -> None:
        value = slow("a")
        with lock:
            results.append(value)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [{"n": 1}] * 8  # nobody saw in-progress: they waited for the outcome
    assert calls == [1]
