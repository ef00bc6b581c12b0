"""Timeout: cancellation for async, a bounded worker pool for sync, and deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from resilience import (
    BulkheadFullError,
    ConfigurationError,
    DeadlineExceededError,
    TimeoutExceededError,
)
from resilience.policies import Timeout, deadline, remaining
from resilience.testing import FakeClock, RecordingTelemetry


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Blocks sync workers until the test ends, so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def test_sync_result_and_errors_pass_through() -> None:
    policy = Timeout(1.0)
    assert policy.call(lambda a, b=0: a + b, 1, b=2) == 3
    with pytest.raises(KeyError):
        policy.call({}.__getitem__, "missing")


def test_sync_function_raising_timeout_error_is_not_confused_with_ours() -> None:
    def own_timeout() -> None:
        raise TimeoutError("socket timed out")

    with pytest.raises(TimeoutError) as info:
        Timeout(1.0).call(own_timeout)
    assert not isinstance(info.value, TimeoutExceededError)


def test_sync_stops_waiting_but_the_worker_runs_on(gate: threading.Event) -> None:
    telemetry = RecordingTelemetry()
    policy = Timeout(0.05, name="correios", telemetry=telemetry)
    finished = threading.Event()

    def hangs() -> str:
        gate.wait(10)
        finished.set()
        return "late"

    started = time.monotonic()
    with pytest.raises(TimeoutExceededError) as info:
        policy.call(hangs)
    waited = time.monotonic() - started
    assert 0.04 <= waited < 2.0
    assert info.value.timeout == 0.05
    assert "correios" in str(info.value)
    assert policy.busy_workers == 1  # Python cannot kill the thread...
    gate.set()
    assert finished.wait(5)  # ...it finishes on its own, and its slot comes back
    for _ in range(200):
        if policy.busy_workers == 0:
            break
        time.sleep(0.01)
    assert policy.busy_workers == 0
    [event] = telemetry.of_kind("timeout")
    assert event.name == "correios"


def test_sync_pool_is_bounded_and_rejects_when_saturated(gate: threading.Event) -> None:
    policy = Timeout(0.02, max_workers=3, name="correios")
    for _ in range(3):
        with pytest.raises(TimeoutExceededError):
            policy.call(gate.wait, 10)
    before = threading.active_count()
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(BulkheadFullError) as info:
            policy.call(gate.wait, 10)
    assert time.monotonic() - started < 1.0  # rejected at once, not after 20 timeouts
    assert info.value.max_concurrent == 3
    assert "all 3 worker threads are still busy" in str(info.value)
    assert threading.active_count() == before  # no thread was added for rejected calls
    gate.set()
    for _ in range(200):
        if policy.busy_workers == 0:
            break
        time.sleep(0.01)
    assert policy.call(lambda: "recovered") == "recovered"


def test_sync_many_callers_never_exceed_max_workers(gate: threading.Event) -> None:
    policy = Timeout(0.05, max_workers=4, name="bounded")
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller() -> None:
        try:
            policy.call(gate.wait, 10)
            kind = "ok"
        except TimeoutExceededError:
            kind = "timeout"
        except BulkheadFullError:
            kind = "full"
        with lock:
            outcomes.append(kind)

    callers = [threading.Thread(target=caller) for _ in range(40)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    workers = [t for t in threading.enumerate() if t.name.startswith("resilience-timeout-bounded")]
    assert len(workers) <= 4
    assert outcomes.count("timeout") <= 4
    assert outcomes.count("full") >= 36


def test_sync_worker_sees_the_callers_deadline() -> None:
    clock = FakeClock()
    with deadline(seconds=3.0, clock=clock):
        assert Timeout(10).call(remaining) == 3.0


def test_sync_deadline_tighter_than_timeout(gate: threading.Event) -> None:
    with deadline(seconds=0.05), pytest.raises(DeadlineExceededError):
        Timeout(10).call(gate.wait, 10)


def test_sync_expired_deadline_does_not_start_the_call() -> None:
    clock = FakeClock()
    calls: list[int] = []
    with deadline(seconds=1, clock=clock):
        clock.advance(2)
        with pytest.raises(DeadlineExceededError) as info:
            Timeout(5).call(calls.append, 1)
    assert calls == []
    assert "not started" in str(info.value)


async def test_async_cancels_the_call() -> None:
    telemetry = RecordingTelemetry()
    cleaned_up = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned_up.set()
        return "late"

    started = time.monotonic()
    with pytest.raises(TimeoutExceededError) as info:
        await Timeout(0.05, telemetry=telemetry).acall(slow)
    assert not isinstance(info.value, DeadlineExceededError)
    assert time.monotonic() - started < 2.0
    assert cleaned_up.is_set()  # really cancelled, not abandoned
    assert len(telemetry.of_kind("timeout")) == 1


async def test_async_result_and_own_timeout_error_pass_through() -> None:
    async def ok(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    async def own_timeout() -> None:
        raise TimeoutError("socket")

    policy = Timeout(1)
    assert await policy.acall(ok, 21) == 42
    with pytest.raises(TimeoutError) as info:
        await policy.acall(own_timeout)
    assert not isinstance(info.value, TimeoutExceededError)


async def test_async_deadline_tighter_than_timeout() -> None:
    async with deadline(seconds=0.05):
        with pytest.raises(DeadlineExceededError):
            await Timeout(10).acall(asyncio.sleep, 10)


async def test_async_expired_deadline_does_not_start_the_call() -> None:
    clock = FakeClock()
    calls: list[int] = []

    async def work() -> None:
        calls.append(1)

    async with deadline(seconds=1, clock=clock):
        clock.advance(1)
        with pytest.raises(DeadlineExceededError):
            await Timeout(5).acall(work)
    assert calls == []


async def test_decorator_on_both_flavours() -> None:
    policy = Timeout(0.05)

    @policy
    def fast() -> str:
        return "sync"

    @policy
    async def slow() -> None:
        await asyncio.sleep(5)

    assert fast() == "sync"
    with pytest.raises(TimeoutExceededError):
        await slow()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seconds": 0}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"seconds": float("inf")}, "seconds"),
        ({"seconds": "1"}, "seconds"),
        ({"seconds": 1, "max_workers": 0}, "max_workers"),
        ({"seconds": 1, "name": None}, "name"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Timeout(**kwargs)
    assert info.value.field == field


def test_idle_workers_leave_and_the_pool_keeps_working() -> None:
    policy = Timeout(2.0, max_workers=4, name="idle-exit")
    policy._pool.idle_exit = 0.05
    gate = threading.Barrier(4)
    # four concurrent calls force four threads
    callers = [threading.Thread(target=policy.call, args=(gate.wait, 5)) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert policy._pool.threads == 4
    for _ in range(300):
        if policy._pool.threads == 0:
            break
        time.sleep(0.01)
    assert policy._pool.threads == 0  # idle threads went away
    assert policy.busy_workers == 0
    # ...and new calls still get a worker each, up to the limit
    results = []
    for i in range(20):
        results.append(policy.call(lambda i=i: i * 2))
        if i % 5 == 0:
            time.sleep(0.06)  # let some workers time out in between
    assert results == [i * 2 for i in range(20)]
    assert policy._pool.threads <= 4
