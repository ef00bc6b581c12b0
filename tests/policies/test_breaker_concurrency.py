"""Concurrency: exact half-open admission, and no lock held while the function runs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pybreaker
import pytest

from resilience import CircuitOpenError
from resilience.compat import pybreaker as facade
from resilience.policies import CircuitBreaker, CircuitBreakerConfig, CircuitState

PERMITTED = 5


def half_open_breaker() -> CircuitBreaker:
    breaker = CircuitBreaker("trials", CircuitBreakerConfig(permitted_calls_in_half_open=PERMITTED))
    breaker.transition_to_half_open()
    return breaker


def test_200_threads_on_a_half_open_breaker_get_exactly_the_permitted_trials() -> None:
    breaker = half_open_breaker()
    threads_n = 200
    entered: list[int] = []
    rejected: list[CircuitOpenError] = []
    guard = threading.Lock()
    release = threading.Event()
    start = threading.Barrier(threads_n)

    def trial() -> str:
        with guard:
            entered.append(1)
        release.wait(10)
        return "ok"

    def worker() -> None:
        start.wait()
        try:
            breaker.call(trial)
        except CircuitOpenError as exc:
            with guard:
                rejected.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(entered) + len(rejected) < threads_n and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        assert len(entered) == PERMITTED
        assert len(rejected) == threads_n - PERMITTED
        assert all(e.state == "half_open" for e in rejected)
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert breaker.state is CircuitState.CLOSED  # the five trials succeeded
    assert breaker.metrics().not_permitted_calls == threads_n - PERMITTED


async def test_2000_tasks_on_a_half_open_breaker_get_exactly_the_permitted_trials() -> None:
    breaker = half_open_breaker()
    tasks_n = 2000
    entered = 0
    release = asyncio.Event()

    async def trial() -> str:
        nonlocal entered
        entered += 1
        await release.wait()
        return "ok"

    async def worker() -> str:
        try:
            return await breaker.acall(trial)
        except CircuitOpenError:
            return "rejected"

    tasks = [asyncio.create_task(worker()) for _ in range(tasks_n)]
    for _ in range(100):
        await asyncio.sleep(0)
        if sum(t.done() for t in tasks) == tasks_n - PERMITTED:
            break
    assert entered == PERMITTED
    assert sum(t.done() for t in tasks) == tasks_n - PERMITTED
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("ok") == PERMITTED
    assert results.count("rejected") == tasks_n - PERMITTED
    assert breaker.state is CircuitState.CLOSED


CALL = 0.05
THREADS = 8


def _parallel_elapsed(call: Callable[[Callable[[], Any]], Any]) -> float:
    """Wall time for THREADS threads each making one CALL-long call through *call*."""
    barrier = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def work() -> str:
        time.sleep(CALL)
        return "ok"

    def worker() -> None:
        barrier.wait()
        try:
            call(work)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join(30)
    elapsed = time.perf_counter() - started
    assert not errors
    return elapsed


def _best_of(call: Callable[[Callable[[], Any]], Any], attempts: int = 3) -> float:
    return min(_parallel_elapsed(call) for _ in range(attempts))


def test_no_lock_is_held_while_the_protected_function_runs() -> None:
    ours = CircuitBreaker("parallel")
    with_listener = CircuitBreaker("parallel-slow-lane", listeners=[lambda e: None])
    real = pybreaker.CircuitBreaker()
    compat = facade.CircuitBreaker()

    ours_s = _best_of(ours.call)
    slow_lane_s = _best_of(with_listener.call)
    compat_s = _best_of(compat.call)
    pybreaker_s = _parallel_elapsed(real.call)

    assert ours_s < 2 * CALL, f"8 parallel calls took {ours_s:.3f}s through resilience"
    assert slow_lane_s < 2 * CALL, f"8 parallel calls took {slow_lane_s:.3f}s (locked lane)"
    assert compat_s < 2 * CALL, f"8 parallel calls took {compat_s:.3f}s through the facade"
    # The contrast: pybreaker holds its RLock around the call, so the calls queue.
    assert pybreaker_s > 4 * CALL, f"pybreaker took only {pybreaker_s:.3f}s"


async def test_async_calls_overlap_through_one_breaker() -> None:
    breaker = CircuitBreaker("aparallel")

    async def work() -> str:
        await asyncio.sleep(CALL)
        return "ok"

    started = time.perf_counter()
    results = await asyncio.gather(*(breaker.acall(work) for _ in range(50)))
    elapsed = time.perf_counter() - started
    assert results == ["ok"] * 50
    assert elapsed < 4 * CALL


def test_threads_hammering_a_closed_breaker_keep_exact_counts() -> None:
    breaker = CircuitBreaker(
        "hammer",
        CircuitBreakerConfig(window_size=1000, minimum_calls=1000, failure_rate_threshold=100),
    )
    per_thread = 2000

    def worker(fail_every: int) -> None:
        for i in range(per_thread):
            try:
                breaker.call(_maybe_fail, i % fail_every == 0)
            except ValueError:
                pass

    threads = [threading.Thread(target=worker, args=(10,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    m = breaker.metrics()
    assert m.buffered_calls == 1000
    # one failure in ten per thread, interleaved: the last 1000 slots hold about 100 failures
    assert 50 <= m.failed_calls <= 150
    assert m.state is CircuitState.CLOSED


def _maybe_fail(fail: bool) -> int:
    if fail:
        raise ValueError("x")
    return 1


@pytest.mark.parametrize("permitted", [1, 3])
def test_half_open_trials_decide_once_under_contention(permitted: int) -> None:
    breaker = CircuitBreaker(
        "decide", CircuitBreakerConfig(permitted_calls_in_half_open=permitted, open_duration=60)
    )
    for _ in range(5):
        breaker.transition_to_half_open()
        barrier = threading.Barrier(16)
        outcomes: list[str] = []

        def worker(barrier: threading.Barrier = barrier, outcomes: list[str] = outcomes) -> None:
            barrier.wait()
            try:
                breaker.call(_maybe_fail, True)
            except ValueError:
                outcomes.append("failed")
            except CircuitOpenError:
                outcomes.append("rejected")

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert breaker.state is CircuitState.OPEN
        assert 1 <= outcomes.count("failed") <= permitted
