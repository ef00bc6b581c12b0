"""Pipeline: order, argument plumbing, composition with every policy, sync and async."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from resilience import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    RetryBudgetExhaustedError,
    TimeoutExceededError,
)
from resilience.policies import (
    Bulkhead,
    CircuitBreaker,
    CircuitBreakerConfig,
    Fallback,
    Pipeline,
    Policy,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
)
from resilience.testing import FakeClock, RecordingTelemetry


class Tracer:
    """A bare `Policy` (no PolicyDecorator): records entry and exit."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.log.append(f"{self.name}>")
        try:
            return fn(*args, **kwargs)
        finally:
            self.log.append(f"<{self.name}")

    async def acall(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        self.log.append(f"{self.name}>")
        try:
            return await fn(*args, **kwargs)
        finally:
            self.log.append(f"<{self.name}")


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def run(policy: Pipeline, mode: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    if mode == "sync":
        return policy.call(fn, *args, **kw)

    async def afn(*a: Any, **k: Any) -> Any:
        await asyncio.sleep(0)
        return fn(*a, **k)

    return await policy.acall(afn, *args, **kw)


async def test_outermost_first_and_arguments_reach_the_function(mode: str) -> None:
    log: list[str] = []
    pipeline = Pipeline(Tracer("a", log), Tracer("b", log), Tracer("c", log), name="p")
    assert isinstance(pipeline, Policy)

    def fn(*args: Any, **kwargs: Any) -> Any:
        log.append("fn")
        return args, kwargs

    assert await run(pipeline, mode, fn, 1, "two", three=3) == ((1, "two"), {"three": 3})
    assert log == ["a>", "b>", "c>", "fn", "<c", "<b", "<a"]


async def test_single_policy_pipeline(mode: str) -> None:
    log: list[str] = []
    assert await run(Pipeline(Tracer("only", log)), mode, lambda x: x + 1, 1) == 2
    assert log == ["only>", "<only"]


async def test_fallback_handler_sees_only_the_callers_arguments(mode: str) -> None:
    seen: list[tuple[Any, ...]] = []

    def flat_rate(exc: BaseException, *args: Any, **kwargs: Any) -> str:
        seen.append((type(exc).__name__, args, kwargs))
        return "flat"

    log: list[str] = []
    inner = Pipeline(Tracer("x", log), Fallback(handler=flat_rate), Tracer("y", log))
    outer = Pipeline(Tracer("o", log), inner, Tracer("z", log))

    def down(zip_code: str, weight: int = 1) -> str:
        raise BulkheadFullError("correios", 1)

    assert await run(outer, mode, down, "01310", weight=3) == "flat"
    assert seen == [("BulkheadFullError", ("01310",), {"weight": 3})]


async def test_retry_breaker_fallback_compose(mode: str) -> None:
    clock = FakeClock()
    telemetry = RecordingTelemetry()
    breaker = CircuitBreaker(
        "correios",
        CircuitBreakerConfig(
            window_size=4, minimum_calls=4, failure_rate_threshold=50, open_duration=30
        ),
        clock=clock,
    )
    calls = 0

    def postal_api(zip_code: str) -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    pipeline = Pipeline(
        Fallback("flat-rate", on=(CircuitOpenError, ConnectionError)),
        Retry(on=ConnectionError, attempts=2, clock=clock),
        breaker,
        name="logistics",
        telemetry=telemetry,
    )
    results = [await run(pipeline, mode, postal_api, "01310") for _ in range(5)]
    assert results == ["flat-rate"] * 5
    assert breaker.state.value == "open"
    assert calls == 4  # two calls x two attempts opened it; the rest failed fast
    before = calls
    await run(pipeline, mode, postal_api, "01310")
    assert calls == before  # open: the API is not touched


async def test_retry_around_timeout_retries_timeouts() -> None:
    attempts = 0

    async def sometimes_slow() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            await asyncio.sleep(10)
        return "fast enough"

    pipeline = Pipeline(
        Retry(on=TimeoutExceededError, attempts=3, clock=FakeClock()), Timeout(0.02)
    )
    assert await pipeline.acall(sometimes_slow) == "fast enough"
    assert attempts == 3


async def test_rejections_are_reported_under_the_pipelines_name(mode: str) -> None:
    telemetry = RecordingTelemetry()
    clock = FakeClock()
    pipeline = Pipeline(
        Retry(
            on=OSError,
            budget=RetryBudget(ratio=0, min_retries_per_second=0, clock=clock),
            clock=clock,
        ),
        name="logistics",
        telemetry=telemetry,
    )

    def fails() -> None:
        raise OSError

    with pytest.raises(RetryBudgetExhaustedError):
        await run(pipeline, mode, fails)
    [event] = telemetry.of_kind("rejected")
    assert (event.component, event.name, event.attributes["error"]) == (
        "pipeline",
        "logistics",
        "RetryBudgetExhaustedError",
    )
    with pytest.raises(OSError):  # the function's own errors are not "rejections"
        await run(Pipeline(Tracer("t", []), telemetry=telemetry), mode, fails)
    assert len(telemetry.of_kind("rejected")) == 1


async def test_all_policies_together_on_the_success_path(mode: str) -> None:
    clock = FakeClock()
    pipeline = Pipeline(
        Fallback("fallback"),
        Retry(on=ConnectionError, budget=RetryBudget(clock=clock), clock=clock),
        CircuitBreaker("all", clock=clock),
        RateLimiter(1000, clock=clock),
        Bulkhead(4),
        Timeout(5),
    )
    assert await run(pipeline, mode, lambda a, b: a + b, 40, b=2) == 42


async def test_decorator_on_both_flavours() -> None:
    pipeline = Pipeline(Bulkhead(2), Fallback("fb"))

    @pipeline
    def quote(zip_code: str) -> str:
        return f"q:{zip_code}"

    @pipeline
    async def aquote(zip_code: str) -> str:
        raise CircuitOpenError("c", "open", 1)

    assert quote.__name__ == "quote"
    assert quote("1") == "q:1"
    assert await aquote("1") == "fb"


@pytest.mark.parametrize(
    ("policies", "kwargs", "field"),
    [
        ((), {}, "policies"),
        ((object(),), {}, "policies"),
        ((Bulkhead(1), "retry"), {}, "policies"),
        ((Bulkhead(1),), {"name": ""}, "name"),
    ],
)
def test_bad_configuration_names_the_field(
    policies: tuple[Any, ...], kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Pipeline(*policies, **kwargs)
    assert info.value.field == field
