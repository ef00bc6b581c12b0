"""Retry: tenacity strategies, a free success path, budgets, deadlines, hooks, testing mode."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import (
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    RateLimitedError,
    RetryBudgetExhaustedError,
)
from resilience.policies import (
    RateLimiter,
    Retry,
    RetryBudget,
    RetryDetails,
    deadline,
    retry_testing_mode,
    wait_backoff,
    wait_retry_after,
)
from resilience.testing import FakeClock, RecordingTelemetry


class Flaky:
    """Fails with the given errors, in order, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.raised: list[BaseException] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.errors:
            error = self.errors.pop(0)
            self.raised.append(error)
            raise error
        return ("ok", args, kwargs)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def run(policy: Retry, mode: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if mode == "sync":
        return policy.call(fn, *args, **kwargs)

    async def afn(*a: Any, **kw: Any) -> Any:
        await asyncio.sleep(0)
        return fn(*a, **kw)

    return await policy.acall(afn, *args, **kwargs)


async def test_success_path_calls_once_and_never_sleeps(mode: str) -> None:
    clock = FakeClock()
    flaky = Flaky()
    result = await run(Retry(on=ValueError, clock=clock), mode, flaky, 1, k=2)
    assert result == ("ok", (1,), {"k": 2})
    assert flaky.calls == 1
    assert clock.sleeps == []


async def test_retries_declared_errors_with_backoff(mode: str) -> None:
    clock = FakeClock()
    flaky = Flaky(ValueError("a"), ValueError("b"))
    policy = Retry(on=ValueError, wait_initial=1.0, wait_max=10.0, wait_jitter=0.0, clock=clock)
    assert (await run(policy, mode, flaky))[0] == "ok"
    assert flaky.calls == 3
    assert clock.sleeps == [1.0, 2.0]


async def test_undeclared_errors_propagate_at_once(mode: str) -> None:
    clock = FakeClock()
    error = KeyError("nope")
    flaky = Flaky(error)
    with pytest.raises(KeyError) as info:
        await run(Retry(on=ValueError, clock=clock), mode, flaky)
    assert info.value is error
    assert flaky.calls == 1
    assert clock.sleeps == []


async def test_exhaustion_reraises_the_last_error_unchanged(mode: str) -> None:
    errors = [ConnectionError(str(i)) for i in range(5)]
    flaky = Flaky(*errors)
    with pytest.raises(ConnectionError) as info:
        await run(Retry(on=ConnectionError, attempts=3, clock=FakeClock()), mode, flaky)
    assert info.value is errors[2]
    assert flaky.calls == 3


async def test_reraise_false_gives_tenacity_retry_error(mode: str) -> None:
    flaky = Flaky(*[OSError("x")] * 3)
    with pytest.raises(tenacity.RetryError) as info:
        await run(Retry(on=OSError, reraise=False, clock=FakeClock()), mode, flaky)
    assert isinstance(info.value.last_attempt.exception(), OSError)
    assert info.value.last_attempt.attempt_number == 3


async def test_tenacity_strategies_are_used_as_given(mode: str) -> None:
    clock = FakeClock()
    flaky = Flaky(*[TimeoutError()] * 10)
    policy = Retry(
        stop=tenacity.stop_after_attempt(5),
        wait=tenacity.wait_fixed(2) + tenacity.wait_fixed(1),
        retry=tenacity.retry_if_exception_type(TimeoutError),
        clock=clock,
    )
    with pytest.raises(TimeoutError):
        await run(policy, mode, flaky)
    assert flaky.calls == 5
    assert clock.sleeps == [3.0, 3.0, 3.0, 3.0]


async def test_stop_after_delay_follows_the_injected_clock(mode: str) -> None:
    clock = FakeClock()
    flaky = Flaky(*[OSError()] * 100)
    policy = Retry(
        on=OSError,
        stop=tenacity.stop_after_delay(10),
        wait=tenacity.wait_fixed(3),
        clock=clock,
    )
    with pytest.raises(OSError):
        await run(policy, mode, flaky)
    # failures at t=0, 3, 6, 9, 12 (since the first failure): stop once 10 s have passed
    assert flaky.calls == 5
    assert sum(clock.sleeps) == 12


async def test_predicate_decides_what_is_retryable(mode: str) -> None:
    flaky = Flaky(OSError(503, "busy"), OSError(404, "gone"))
    policy = Retry(on=lambda e: isinstance(e, OSError) and e.errno == 503, clock=FakeClock())
    with pytest.raises(OSError) as info:
        await run(policy, mode, flaky)
    assert info.value.errno == 404
    assert flaky.calls == 2


async def test_hooks_and_telemetry_see_every_retry(mode: str) -> None:
    clock = FakeClock()
    telemetry = RecordingTelemetry()
    seen: list[RetryDetails] = []
    errors = [ValueError("1"), ValueError("2")]

    def broken_hook(details: RetryDetails) -> None:
        raise RuntimeError("hooks must not break the call")

    policy = Retry(
        on=ValueError,
        wait=tenacity.wait_fixed(0.5),
        on_retry=[seen.append, broken_hook],
        name="correios",
        clock=clock,
        telemetry=telemetry,
    )
    assert (await run(policy, mode, Flaky(*errors)))[0] == "ok"
    assert [(d.name, d.attempt, d.exception, d.wait) for d in seen] == [
        ("correios", 1, errors[0], 0.5),
        ("correios", 2, errors[1], 0.5),
    ]
    assert seen[1].elapsed == pytest.approx(0.5)
    retries = telemetry.of_kind("retry")
    assert [(e.component, e.name, e.attributes["attempt"]) for e in retries] == [
        ("retry", "correios", 1),
        ("retry", "correios", 2),
    ]


async def test_gave_up_event_names_the_reason(mode: str) -> None:
    telemetry = RecordingTelemetry()
    policy = Retry(on=OSError, attempts=2, clock=FakeClock(), telemetry=telemetry)
    with pytest.raises(OSError):
        await run(policy, mode, Flaky(OSError(), OSError()))
    [event] = telemetry.of_kind("gave_up")
    assert event.attributes["reason"] == "exhausted"
    assert event.attributes["attempts"] == 2


async def test_never_sleeps_past_the_deadline(mode: str) -> None:
    clock = FakeClock()
    error = ConnectionError("down")
    flaky = Flaky(error, ConnectionError())
    policy = Retry(on=ConnectionError, wait=tenacity.wait_fixed(2), clock=clock)
    with deadline(seconds=1.5, clock=clock), pytest.raises(ConnectionError) as info:
        await run(policy, mode, flaky)
    assert info.value is error
    assert flaky.calls == 1
    assert clock.sleeps == []


async def test_sleeps_while_the_deadline_allows(mode: str) -> None:
    clock = FakeClock()
    flaky = Flaky(*[ConnectionError()] * 10)
    policy = Retry(on=ConnectionError, attempts=10, wait=tenacity.wait_fixed(1), clock=clock)
    with deadline(seconds=3.5, clock=clock), pytest.raises(ConnectionError):
        await run(policy, mode, flaky)
    assert clock.sleeps == [1.0, 1.0, 1.0]  # the 4th 1 s sleep would end at 4 s > 3.5 s


async def test_expired_deadline_error_is_not_retried(mode: str) -> None:
    clock = FakeClock()
    flaky = Flaky(DeadlineExceededError(0.0), DeadlineExceededError(0.0))
    policy = Retry(on=TimeoutError, clock=clock)
    with deadline(seconds=1, clock=clock) as d:
        assert d is not None
        clock.advance(1)
        with pytest.raises(DeadlineExceededError):
            await run(policy, mode, flaky)
    assert flaky.calls == 1


async def test_testing_mode_turns_off_sleeps_and_restores(mode: str) -> None:
    clock = FakeClock()
    policy = Retry(on=OSError, attempts=5, wait_initial=30, clock=clock)
    with retry_testing_mode():
        assert (await run(policy, mode, Flaky(OSError(), OSError())))[0] == "ok"
        assert clock.sleeps == []
        with retry_testing_mode(attempts=1):
            flaky = Flaky(OSError())
            with pytest.raises(OSError):
                await run(policy, mode, flaky)
            assert flaky.calls == 1
        flaky = Flaky(OSError(), OSError())
        await run(policy, mode, flaky)
        assert flaky.calls == 3  # the inner block's cap is gone again
    await run(policy, mode, Flaky(OSError()))
    assert len(clock.sleeps) == 1
    assert clock.sleeps[0] <= 30


def test_wait_backoff_is_exponential_capped_and_jittered() -> None:
    def waits(strategy: wait_backoff, n: int) -> list[float]:
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        result = []
        for attempt in range(1, n + 1):
            state.attempt_number = attempt
            result.append(strategy(state))
        return result

    assert waits(wait_backoff(0.1, 1.0, jitter=0), 6) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1, 1])
    for _ in range(50):
        full = waits(wait_backoff(0.1, 1.0, jitter=1), 6)
        assert all(0 <= w <= cap for w, cap in zip(full, [0.1, 0.2, 0.4, 0.8, 1, 1], strict=True))
        equal = waits(wait_backoff(1.0, 8.0, jitter=0.5), 4)
        assert all(cap / 2 <= w <= cap for w, cap in zip(equal, [1, 2, 4, 8], strict=True))
    assert waits(wait_backoff(1.0, 5.0, jitter=0), 200)[-1] == 5.0  # no overflow


async def test_budget_exhaustion_is_chained_from_the_original_error(mode: str) -> None:
    clock = FakeClock()
    budget = RetryBudget(
        ratio=0.0, min_retries_per_second=0.2, ttl=10, name="correios", clock=clock
    )
    policy = Retry(on=OSError, attempts=10, budget=budget, clock=clock, wait_initial=0.01)
    flaky = Flaky(*[OSError("boom")] * 10)
    with pytest.raises(RetryBudgetExhaustedError) as info:
        await run(policy, mode, flaky)
    assert info.value.name == "correios"
    assert isinstance(info.value.__cause__, OSError)
    assert flaky.calls == 3  # reserve = 0.2/s * 10 s = 2 retries


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "on"),
        ({"on": ()}, "on"),
        ({"on": 42}, "on"),
        ({"on": (ValueError, "x")}, "on"),
        ({"on": ValueError, "retry": tenacity.retry_always}, "retry"),
        ({"retry": tenacity.retry_if_result(lambda r: r is None)}, "retry"),
        (
            {"retry": tenacity.retry_if_exception_type() | tenacity.retry_if_not_result(bool)},
            "retry",
        ),
        ({"on": ValueError, "attempts": 0}, "attempts"),
        ({"on": ValueError, "attempts": True}, "attempts"),
        ({"on": ValueError, "attempts": 2, "stop": tenacity.stop_never}, "stop"),
        ({"on": ValueError, "stop": 3}, "stop"),
        ({"on": ValueError, "wait": tenacity.wait_fixed(1), "wait_max": 3}, "wait"),
        ({"on": ValueError, "wait_initial": -1}, "wait_initial"),
        ({"on": ValueError, "wait_initial": 2, "wait_max": 1}, "wait_max"),
        ({"on": ValueError, "wait_jitter": 1.5}, "wait_jitter"),
        ({"on": ValueError, "wait_jitter": float("nan")}, "wait_jitter"),
        ({"on": ValueError, "budget": 0.1}, "budget"),
        ({"on": ValueError, "on_retry": [print, 3]}, "on_retry"),
        ({"on": ValueError, "name": ""}, "name"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Retry(**kwargs)
    assert info.value.field == field


def test_testing_mode_validates_attempts() -> None:
    with pytest.raises(ConfigurationError) as info, retry_testing_mode(attempts=0):
        pass
    assert info.value.field == "attempts"


async def test_decorator_keeps_metadata_for_sync_and_async() -> None:
    clock = FakeClock()
    calls = {"sync": 0, "async": 0}

    @Retry(on=ValueError, clock=clock)
    def quote(zip_code: str) -> str:
        """Quote shipping."""
        calls["sync"] += 1
        if calls["sync"] < 2:
            raise ValueError
        return f"quote:{zip_code}"

    @Retry(on=ValueError, clock=clock)
    async def aquote(zip_code: str) -> str:
        """Quote shipping, async."""
        calls["async"] += 1
        if calls["async"] < 3:
            raise ValueError
        return f"aquote:{zip_code}"

    assert quote.__name__ == "quote"
    assert quote.__doc__ == "Quote shipping."
    assert aquote.__name__ == "aquote"
    assert asyncio.iscoroutinefunction(aquote)
    assert quote("01310") == "quote:01310"
    assert await aquote("01310") == "aquote:01310"
    assert calls == {"sync": 2, "async": 3}


def test_cancellation_is_never_retried() -> None:
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    policy = Retry(on=lambda e: True, clock=FakeClock())
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(policy.acall(cancelled))
    assert calls == 1


def test_budget_shared_by_threads_is_never_overdrawn() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1, ttl=10, clock=clock)
    policies = [Retry(on=OSError, attempts=3, budget=budget, clock=clock) for _ in range(4)]
    outcomes: list[str] = []
    lock = threading.Lock()
    calls = 0

    def always_fails() -> None:
        nonlocal calls
        with lock:
            calls += 1
        raise OSError

    def worker(policy: Retry) -> None:
        for _ in range(250):
            try:
                policy.call(always_fails)
            except RetryBudgetExhaustedError:
                kind = "budget"
            except OSError:
                kind = "exhausted"
            with lock:
                outcomes.append(kind)

    with retry_testing_mode():
        threads = [threading.Thread(target=worker, args=(p,)) for p in policies for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    logical = len(outcomes)
    retries = calls - logical
    assert logical == 2000
    # Never more than the budget: reserve (1/s * 10 s) + 20 % of 2000 calls.
    assert retries <= 10 + 0.2 * 2000
    assert retries >= 400  # and it is actually spent, not refused early
    assert outcomes.count("budget") > 0


async def test_budget_shared_by_tasks_is_never_overdrawn() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0, ttl=10, clock=clock)
    policy = Retry(on=OSError, attempts=5, budget=budget, clock=clock)
    calls = 0

    async def always_fails() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise OSError

    results = await asyncio.gather(
        *(policy.acall(always_fails) for _ in range(1000)), return_exceptions=True
    )
    assert calls - len(results) <= 100
    assert calls - len(results) >= 90  # the budget is actually usable, not just refusing
    assert any(isinstance(r, RetryBudgetExhaustedError) for r in results)


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.floats(min_value=0, max_value=2),
    floor=st.floats(min_value=0, max_value=5),
    ops=st.lists(st.booleans(), max_size=300),
)
def test_budget_matches_its_definition_within_one_window(
    ratio: float, floor: float, ops: list[bool]
) -> None:
    """True = a call (deposit), False = a retry asking for permission; time stands still."""
    budget = RetryBudget(ratio=ratio, min_retries_per_second=floor, ttl=10, clock=FakeClock())
    calls = retries = 0
    for is_call in ops:
        if is_call:
            budget.deposit()
            calls += 1
        else:
            expected = retries + 1 <= floor * 10 + ratio * calls
            assert budget.try_withdraw() is expected
            retries += expected
    assert budget.available() == pytest.approx(max(0.0, floor * 10 + ratio * calls - retries))


def test_budget_forgets_calls_and_retries_older_than_ttl() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0, ttl=10, clock=clock)
    for _ in range(10):
        budget.deposit()
    assert budget.available() == 5
    for _ in range(5):
        assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.advance(5)
    for _ in range(4):
        budget.deposit()
    assert budget.available() == 2  # 0.5 * 14 calls - 5 retries
    clock.advance(5.5)  # the first 10 calls and the 5 retries are now older than ttl
    assert budget.available() == 2  # 0.5 * 4 calls
    clock.advance(100)
    assert budget.available() == 0


class Throttled(Exception):
    def __init__(self, retry_after: object) -> None:
        self.retry_after = retry_after


async def test_wait_retry_after_listens_to_the_error(mode: str) -> None:
    clock = FakeClock()
    flaky = Flaky(
        RateLimitedError("partner", 2.5),
        CircuitOpenError("correios", "open", 7.0),
        Throttled(10_000),  # a bogus hint is capped
        Throttled(float("nan")),  # garbage hints fall back
        Throttled(True),
        ConnectionError(),  # no hint at all
    )
    policy = Retry(
        on=(RateLimitedError, CircuitOpenError, Throttled, ConnectionError),
        attempts=10,
        wait=wait_retry_after(tenacity.wait_fixed(0.5), maximum=30),
        clock=clock,
    )
    assert (await run(policy, mode, flaky))[0] == "ok"
    assert clock.sleeps == [2.5, 7.0, 30.0, 0.5, 0.5, 0.5]


async def test_retry_around_a_rate_limiter_waits_exactly_for_the_token(mode: str) -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, burst=1, clock=clock)
    retry = Retry(on=RateLimitedError, wait=wait_retry_after(), clock=clock)

    first = await run(retry, mode, limiter.call, lambda: "first")
    second = await run(retry, mode, limiter.call, lambda: "second")  # bucket empty: waits
    assert (first, second) == ("first", "second")
    assert clock.sleeps == [pytest.approx(0.25)]  # exactly one token interval, no guessing


def test_wait_retry_after_validates() -> None:
    with pytest.raises(ConfigurationError) as info:
        wait_retry_after(maximum=0)
    assert info.value.field == "maximum"
    with pytest.raises(ConfigurationError) as info:
        wait_retry_after(fallback=3)  # type: ignore[arg-type]
    assert info.value.field == "fallback"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": float("nan")}, "ratio"),
        ({"ratio": 5000}, "ratio"),
        ({"min_retries_per_second": -1}, "min_retries_per_second"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_budget_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RetryBudget(**kwargs)
    assert info.value.field == field
