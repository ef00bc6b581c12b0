"""Rate limiter: a local token bucket on a fake clock, and a fleet-wide one in real Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import ConfigurationError, RateLimitedError
from resilience.policies import LocalTokenBucket, RateLimiter, RedisTokenBucket, deadline
from resilience.testing import FakeClock, RecordingTelemetry


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def run(limiter: RateLimiter, mode: str, value: Any = "ok") -> Any:
    if mode == "sync":
        return limiter.call(lambda: value)

    async def afn() -> Any:
        return value

    return await limiter.acall(afn)


async def test_burst_then_reject_with_retry_after(mode: str) -> None:
    clock = FakeClock()
    telemetry = RecordingTelemetry()
    limiter = RateLimiter(2.0, burst=3, name="correios", clock=clock, telemetry=telemetry)
    assert [await run(limiter, mode, i) for i in range(3)] == [0, 1, 2]
    with pytest.raises(RateLimitedError) as info:
        await run(limiter, mode)
    assert info.value.name == "correios"
    assert info.value.retry_after == pytest.approx(0.5)
    assert telemetry.of_kind("rejected")[0].attributes["retry_after"] == pytest.approx(0.5)
    clock.advance(0.5)
    assert await run(limiter, mode) == "ok"
    with pytest.raises(RateLimitedError):
        await run(limiter, mode)
    clock.advance(100)  # refill is capped at the burst
    for _ in range(3):
        await run(limiter, mode)
    with pytest.raises(RateLimitedError):
        await run(limiter, mode)
    assert clock.sleeps == []


async def test_waiting_callers_reserve_tokens_in_order(mode: str) -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, burst=1, max_wait=0.25, clock=clock)
    await run(limiter, mode)
    await run(limiter, mode)  # waits 0.1 s for its token
    assert clock.sleeps == [pytest.approx(0.1)]
    # Without time passing, reservations queue up: 0.1 s, then 0.2 s, then over max_wait.
    bucket = LocalTokenBucket(clock)
    assert bucket.take(10.0, 1.0, 0.25) == (True, 0.0)
    assert bucket.take(10.0, 1.0, 0.25) == (True, pytest.approx(0.1))
    assert bucket.take(10.0, 1.0, 0.25) == (True, pytest.approx(0.2))
    granted, wait = bucket.take(10.0, 1.0, 0.25)
    assert not granted
    assert wait == pytest.approx(0.3)


async def test_wait_never_outlives_the_deadline(mode: str) -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, burst=1, max_wait=10.0, clock=clock)
    await run(limiter, mode)
    with deadline(seconds=0.5, clock=clock), pytest.raises(RateLimitedError) as info:
        await run(limiter, mode)
    assert info.value.retry_after == pytest.approx(1.0)
    assert clock.sleeps == []


def test_local_bucket_is_thread_safe() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, burst=50, clock=clock)
    granted = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(100):
            try:
                limiter.call(lambda: None)
            except RateLimitedError:
                continue
            with lock:
                granted.append(1)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 50  # time stood still: exactly the burst


def test_default_burst_is_one_second_of_rate() -> None:
    assert RateLimiter(20).burst == 20
    assert RateLimiter(0.2).burst == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": float("inf")}, "rate"),
        ({"rate": 1, "burst": 0.5}, "burst"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({"rate": 1, "max_wait": -0.1}, "max_wait"),
        ({"rate": 1, "bucket": object()}, "bucket"),
        ({"rate": 1, "name": ""}, "name"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RateLimiter(**kwargs)
    assert info.value.field == field


# ----------------------------------------------------------------------------- Redis


def test_redis_bucket_limits_and_expires(redis_client: Any, redis_prefix: str) -> None:
    key = f"{redis_prefix}rl"
    limiter = RateLimiter(5.0, burst=5, bucket=RedisTokenBucket(redis_client, key))
    outcomes = []
    retry_afters = []
    for _ in range(10):
        try:
            limiter.call(lambda: None)
            outcomes.append("ok")
        except RateLimitedError as exc:
            retry_afters.append(exc.retry_after)
            outcomes.append("limited")
    assert all(0 < r <= 0.2 + 1e-6 for r in retry_afters)
    assert outcomes.count("ok") in (5, 6)  # 5 burst (+1 if 200 ms passed meanwhile)
    ttl = redis_client.pttl(key)
    assert 0 < ttl <= 3000  # the key goes away once the bucket would be full again


def test_redis_bucket_waits_for_a_reserved_token(redis_client: Any, redis_prefix: str) -> None:
    limiter = RateLimiter(
        10.0, burst=1, max_wait=1.0, bucket=RedisTokenBucket(redis_client, f"{redis_prefix}w")
    )
    started = time.monotonic()
    for _ in range(3):
        limiter.call(lambda: None)
    assert time.monotonic() - started >= 0.15  # two waits of ~0.1 s each


def test_redis_bucket_is_shared_by_threads_with_their_own_clients(
    redis_url: str, redis_prefix: str
) -> None:
    import redis

    key = f"{redis_prefix}threads"
    granted = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def instance() -> None:
        client = redis.Redis.from_url(redis_url)
        limiter = RateLimiter(1.0, burst=12, bucket=RedisTokenBucket(client, key))
        start.wait(10)
        for _ in range(20):
            try:
                limiter.call(lambda: None)
            except RateLimitedError:
                continue
            with lock:
                granted.append(1)
        client.close()

    threads = [threading.Thread(target=instance) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 12 <= len(granted) <= 14  # the burst, plus at most a token or two refilled meanwhile


_WORKER = textwrap.dedent(
    """
    import sys, time, redis
    from resilience import RateLimitedError
    from resilience.policies import RateLimiter, RedisTokenBucket
    url, key, run_for = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = redis.Redis.from_url(url)
    client.ping()
    limiter = RateLimiter(20.0, burst=5, bucket=RedisTokenBucket(client, key))
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())  # every process starts at the same instant
    time.sleep(max(0.0, start_at - time.time()))
    began = time.time()
    granted = 0
    while time.time() < start_at + run_for:
        try:
            limiter.call(lambda: None)
            granted += 1
        except RateLimitedError as exc:
            time.sleep(min(exc.retry_after, 0.01))
    print(granted, began, flush=True)
    """
)


def test_redis_bucket_holds_the_rate_across_processes(redis_url: str, redis_prefix: str) -> None:
    key = f"{redis_prefix}procs"
    run_for = 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_url, key, str(run_for)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:  # wait until every process has imported and connected
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        start_at = time.time() + 0.3
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at}\n")
            proc.stdin.flush()
        counts = []
        began = []
        for proc in procs:
            out, _ = proc.communicate(timeout=25)
            assert proc.returncode == 0
            granted, started = out.split()
            counts.append(int(granted))
            began.append(float(started))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    total = sum(counts)
    # Fleet-wide: burst + rate * duration, whatever the number of processes.
    assert total <= 5 + 20.0 * run_for + 2
    # ...and the limit is usable: most of the rate was granted while anyone was running
    # (a process started late on a loaded machine shortens that window).
    window = start_at + run_for - min(began)
    assert total >= 0.6 * 20.0 * window
    assert window > 0.5 * run_for
    assert sum(1 for c in counts if c > 0) >= 2  # the processes really shared it


async def test_redis_bucket_with_asyncio_client(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        limiter = RateLimiter(2.0, burst=2, bucket=RedisTokenBucket(client, f"{redis_prefix}a"))

        async def work() -> str:
            return "ok"

        assert await limiter.acall(work) == "ok"
        assert await limiter.acall(work) == "ok"
        with pytest.raises(RateLimitedError):
            await limiter.acall(work)
        with pytest.raises(ConfigurationError):
            limiter.call(lambda: None)  # an asyncio client cannot serve sync calls
    finally:
        await client.aclose()


def test_garbage_in_the_redis_key_is_an_error_not_a_free_pass(
    redis_client: Any, redis_prefix: str
) -> None:
    key = f"{redis_prefix}garbage"
    redis_client.set(key, "not a hash")
    redis_client.pexpire(key, 60_000)
    limiter = RateLimiter(5.0, bucket=RedisTokenBucket(redis_client, key))
    import redis

    with pytest.raises(redis.ResponseError):
        limiter.call(lambda: None)
    assert asyncio.iscoroutinefunction(limiter.acall)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
    steps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
)
def test_local_bucket_never_exceeds_burst_plus_rate_and_retry_after_is_honest(
    rate: float, burst: int, steps: list[float]
) -> None:
    clock = FakeClock()
    bucket = LocalTokenBucket(clock)
    start = clock.monotonic()
    granted = 0
    for step in steps:
        clock.advance(step)
        ok, wait = bucket.take(rate, burst, 0.0)
        if ok:
            granted += 1
            assert wait == 0.0
        else:
            # retry_after is not a guess: a copy of the bucket, *wait* seconds later, has a token
            assert wait > 0
            later = FakeClock(start=clock.monotonic())
            probe = LocalTokenBucket(later)
            probe._tokens, probe._stamp = bucket._tokens, bucket._stamp
            later.advance(wait)
            assert probe.take(rate, burst, 0.0) == (True, 0.0)
        assert granted <= burst + rate * (clock.monotonic() - start) + 1e-6
