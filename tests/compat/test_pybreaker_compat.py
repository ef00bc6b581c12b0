"""pybreaker-style user code, run against real pybreaker AND the resilience facade.

Every scenario is written once against the pybreaker API and returns a trace
of what the user can observe (results, exception types and messages,
``current_state``, counters, listener callbacks). The traces of both
implementations must be identical, and each test also asserts the expected
facts so both cannot be wrong together.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pybreaker as real_pybreaker
import pytest

from resilience import CircuitOpenError, ConfigurationError
from resilience.compat import pybreaker as facade
from resilience.policies import Policy

IMPLEMENTATIONS = {"pybreaker": real_pybreaker, "facade": facade}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def pb(request: pytest.FixtureRequest) -> types.ModuleType:
    return IMPLEMENTATIONS[request.param]


class Boom(Exception):
    pass


class Business(Exception):
    pass


def _ok() -> str:
    return "ok"


def _boom() -> str:
    raise Boom("down")


def attempt(trace: list[Any], cb: Any, fn: Callable[[], Any]) -> None:
    try:
        trace.append(("ok", cb.call(fn)))
    except Exception as exc:
        trace.append((type(exc).__name__, str(exc)))
    trace.append(("state", cb.current_state, cb.fail_counter, cb.success_counter))


def recorder(pb: types.ModuleType, trace: list[Any]) -> Any:
    class Recorder(pb.CircuitBreakerListener):  # type: ignore[name-defined,misc]
        def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
            trace.append(("before_call", args, kwargs))

        def failure(self, cb: Any, exc: BaseException) -> None:
            trace.append(("failure", type(exc).__name__))

        def success(self, cb: Any) -> None:
            trace.append(("success",))

        def state_change(self, cb: Any, old: Any, new: Any) -> None:
            trace.append(("state_change", old.name if old else None, new.name))

    return Recorder()


# ---------------------------------------------------------------------- scenarios


def scenario_trip_and_reject(pb: types.ModuleType) -> list[Any]:
    trace: list[Any] = []
    cb = pb.CircuitBreaker(fail_max=3, reset_timeout=60, name="correios")
    called: list[int] = []

    def tracked() -> str:
        called.append(1)
        return "ok"

    attempt(trace, cb, _boom)
    attempt(trace, cb, _ok)  # resets the streak
    for _ in range(3):
        attempt(trace, cb, _boom)
    attempt(trace, cb, tracked)
    trace.append(("called", len(called)))
    trace.append(("name", cb.name, cb.fail_max, cb.reset_timeout, cb.success_threshold))
    return trace


def scenario_no_new_error_on_trip(pb: types.ModuleType) -> list[Any]:
    trace: list[Any] = []
    cb = pb.CircuitBreaker(fail_max=2, throw_new_error_on_trip=False)
    for _ in range(3):
        attempt(trace, cb, _boom)
    return trace


def scenario_recovery(pb: types.ModuleType) -> list[Any]:
    trace: list[Any] = []
    cb = pb.CircuitBreaker(fail_max=1, reset_timeout=0.05, success_threshold=2)
    cb.add_listener(recorder(pb, trace))
    attempt(trace, cb, _boom)
    time.sleep(0.1)
    attempt(trace, cb, _ok)  # half-open, one success of two
    attempt(trace, cb, _boom)  # the trial fails: open again
    time.sleep(0.1)
    attempt(trace, cb, _ok)
    attempt(trace, cb, _ok)  # closes
    attempt(trace, cb, _ok)
    return trace


def scenario_exclusions(pb: types.ModuleType) -> list[Any]:
    trace: list[Any] = []
    cb = pb.CircuitBreaker(
        fail_max=2, exclude=[Business, lambda e: "ignore me" in str(e)], listeners=[]
    )
    cb.add_listener(recorder(pb, trace))

    def business() -> str:
        raise Business("no such order")

    def soft() -> str:
        raise Boom("ignore me")

    attempt(trace, cb, _boom)
    attempt(trace, cb, business)  # excluded: counts as a success
    attempt(trace, cb, soft)
    attempt(trace, cb, _boom)
    cb.add_excluded_exception(Boom)
    attempt(trace, cb, _boom)
    cb.remove_excluded_exception(Boom)
    attempt(trace, cb, _boom)
    attempt(trace, cb, _boom)
    trace.append(("excluded", len(cb.excluded_exceptions)))
    trace.append(("system", cb.is_system_error(Boom()), cb.is_system_error(Business())))
    return trace


def scenario_manual_and_listeners(pb: types.ModuleType) -> list[Any]:
    trace: list[Any] = []
    first, second = recorder(pb, trace), recorder(pb, [])
    cb = pb.CircuitBreaker(fail_max=5, reset_timeout=60, listeners=[first])
    cb.add_listeners(second)
    cb.remove_listener(second)
    trace.append(("listeners", len(cb.listeners)))
    trace.append(("open", cb.open()))
    attempt(trace, cb, _ok)
    cb.half_open()
    trace.append(("state", cb.current_state, cb.state.name))
    attempt(trace, cb, lambda: "trial")
    cb.open()
    cb.close()
    attempt(trace, cb, _ok)
    cb.fail_max = 1
    attempt(trace, cb, _boom)
    cb.name = "renamed"
    trace.append(("name", cb.name))
    return trace


def scenario_decorator_and_context_manager(pb: types.ModuleType) -> list[Any]:
    trace: list[Any] = []
    cb = pb.CircuitBreaker(fail_max=2)

    @cb
    def add(a: int, b: int) -> int:
        return a + b

    @cb()
    def fail(reason: str) -> None:
        raise Boom(reason)

    trace.append(("add", add(1, 2), add.__name__))
    with pytest.raises(Boom):
        fail("x")
    with cb.calling():
        trace.append(("inside", cb.current_state))
    trace.append(("after ok block", cb.fail_counter))
    for _ in range(2):  # the second failing block trips the breaker
        try:
            with cb.calling():
                raise Boom("in block")
        except Exception as exc:
            trace.append((type(exc).__name__, str(exc)))
    trace.append(("after failing blocks", cb.current_state, cb.fail_counter))
    try:
        with cb.calling():
            trace.append("never")
    except Exception as exc:
        trace.append((type(exc).__name__, str(exc)))
    return trace


def scenario_tripping_block(pb: types.ModuleType) -> list[Any]:
    trace: list[Any] = []
    cb = pb.CircuitBreaker(fail_max=1)
    try:
        with cb.calling():
            raise Boom("in block")
    except Exception as exc:
        trace.append((type(exc).__name__, str(exc), cb.current_state))
    return trace


def scenario_generator(pb: types.ModuleType) -> list[Any]:
    trace: list[Any] = []
    cb = pb.CircuitBreaker(fail_max=1)

    @cb
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    trace.append(("values", list(numbers(3)), cb.fail_counter, cb.current_state))
    return trace


def scenario_storage_initially_open(pb: types.ModuleType) -> list[Any]:
    trace: list[Any] = []
    cb = pb.CircuitBreaker(state_storage=pb.CircuitMemoryStorage(pb.STATE_OPEN), reset_timeout=60)
    trace.append(("initial", cb.current_state))
    attempt(trace, cb, _ok)  # no opening time known: the first call is a trial
    trace.append(("constants", pb.STATE_OPEN, pb.STATE_CLOSED, pb.STATE_HALF_OPEN))
    return trace


SCENARIOS = [
    scenario_trip_and_reject,
    scenario_no_new_error_on_trip,
    scenario_recovery,
    scenario_exclusions,
    scenario_manual_and_listeners,
    scenario_decorator_and_context_manager,
    scenario_tripping_block,
    scenario_generator,
    scenario_storage_initially_open,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_facade_matches_pybreaker(scenario: Callable[[types.ModuleType], list[Any]]) -> None:
    assert scenario(facade) == scenario(real_pybreaker)


# ---------------------------------------------------------------------- explicit expectations


def test_trip_and_reject(pb: types.ModuleType) -> None:
    trace = scenario_trip_and_reject(pb)
    assert trace[-4] == (
        "CircuitBreakerError",
        "Timeout not elapsed yet, circuit breaker still open",
    )
    assert trace[-3] == ("state", "open", 3, 0)
    assert trace[-1] == ("name", "correios", 3, 60, 1)
    assert ("CircuitBreakerError", "Failures threshold reached, circuit breaker opened") in trace
    assert ("called", 0) in trace


def test_recovery_sequence(pb: types.ModuleType) -> None:
    trace = scenario_recovery(pb)
    changes = [t for t in trace if t[0] == "state_change"]
    assert changes == [
        ("state_change", "closed", "open"),
        ("state_change", "open", "half-open"),
        ("state_change", "half-open", "open"),
        ("state_change", "open", "half-open"),
        ("state_change", "half-open", "closed"),
    ]
    assert ("CircuitBreakerError", "Trial call failed, circuit breaker opened") in trace
    assert trace[-1] == ("state", "closed", 0, 0)


def test_decorator_and_context_manager(pb: types.ModuleType) -> None:
    trace = scenario_decorator_and_context_manager(pb)
    assert trace[0] == ("add", 3, "add")
    assert ("Boom", "in block") in trace
    assert ("CircuitBreakerError", "Failures threshold reached, circuit breaker opened") in trace
    assert trace[-2] == ("after failing blocks", "open", 2)
    assert trace[-1] == (
        "CircuitBreakerError",
        "Timeout not elapsed yet, circuit breaker still open",
    )


def test_exclusions_count_as_success(pb: types.ModuleType) -> None:
    trace = scenario_exclusions(pb)
    assert trace[-1] == ("system", True, False)
    assert trace.count(("success",)) >= 3


def test_no_new_error_on_trip_raises_the_original(pb: types.ModuleType) -> None:
    trace = scenario_no_new_error_on_trip(pb)
    assert trace[2] == ("Boom", "down")
    assert trace[3] == ("state", "open", 2, 0)
    assert trace[4][0] == "CircuitBreakerError"


# ---------------------------------------------------------------------- facade specifics


def test_facade_error_is_a_resilience_circuit_open_error() -> None:
    cb = facade.CircuitBreaker(fail_max=1, name="correios")
    with pytest.raises(facade.CircuitBreakerError) as tripped:
        cb.call(_boom)
    assert isinstance(tripped.value, CircuitOpenError)
    assert isinstance(tripped.value.__cause__, Boom)
    with pytest.raises(CircuitOpenError) as info:
        cb.call(_ok)
    assert info.value.name == "correios"
    assert info.value.state == "open"
    assert 59 < info.value.retry_after <= 60
    assert str(facade.CircuitBreakerError("custom")) == "custom"


def test_facade_call_async_and_async_decorator() -> None:
    cb = facade.CircuitBreaker(fail_max=2)

    @cb
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    async def fail() -> None:
        raise Boom("down")

    async def scenario() -> None:
        assert await fetch(21) == 42
        assert await cb.call_async(fetch, 1) == 2
        with pytest.raises(Boom):
            await cb.call_async(fail)
        with pytest.raises(facade.CircuitBreakerError):
            await cb.call_async(fail)
        with pytest.raises(facade.CircuitBreakerError):
            await fetch(1)

    asyncio.run(scenario())
    assert cb.current_state == "open"


def test_facade_unknown_state_names() -> None:
    with pytest.raises(ConfigurationError, match="ajar"):
        facade.CircuitMemoryStorage("ajar")
    storage = facade.CircuitMemoryStorage("closed")
    cb = facade.CircuitBreaker(state_storage=storage)
    storage.state = "open"
    assert cb.current_state == "open"
    assert storage.state == "open"
    assert storage.opened_at is not None
    assert storage.name == "memory"


def test_facade_storage_reads_through() -> None:
    storage = facade.CircuitMemoryStorage(facade.STATE_CLOSED)
    cb = facade.CircuitBreaker(fail_max=3, state_storage=storage)
    for _ in range(2):
        with pytest.raises(Boom):
            cb.call(_boom)
    assert storage.counter == 2
    assert storage.success_counter == 0
    assert "closed" in repr(cb)


def test_facade_rejects_in_half_open_while_trials_run() -> None:
    # pybreaker would queue the second caller behind its lock; the facade says no at once.
    cb = facade.CircuitBreaker(fail_max=1, reset_timeout=0)
    with pytest.raises(facade.CircuitBreakerError):
        cb.call(_boom)
    seen: list[str] = []

    def trial() -> str:
        try:
            cb.call(_ok)
        except facade.CircuitBreakerError as exc:
            seen.append(exc.state)
        return "trial"

    assert cb.call(trial) == "trial"
    assert seen == ["half-open"]
    assert cb.current_state == "closed"


# ---------------------------------------------------------------------- as_policy


def test_as_policy_wraps_a_real_pybreaker_breaker() -> None:
    from resilience.policies import Fallback, Pipeline

    real = real_pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60, name="legacy")
    policy = facade.as_policy(real)
    assert isinstance(policy, Policy)
    assert policy.name == "legacy"
    assert policy.breaker is real
    assert policy.call(_ok) == "ok"
    with pytest.raises(Boom):
        policy.call(_boom)
    with pytest.raises(CircuitOpenError) as tripped:
        policy.call(_boom)
    assert isinstance(tripped.value.__cause__, real_pybreaker.CircuitBreakerError)
    with pytest.raises(CircuitOpenError) as info:
        policy.call(_ok)
    assert info.value.name == "legacy"
    assert 59 <= info.value.retry_after <= 60
    pipeline = Pipeline(Fallback("cached"), policy)
    assert pipeline.call(_ok) == "cached"


def test_as_policy_async() -> None:
    real = real_pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60)
    policy = facade.as_policy(real, name="legacy-async")

    async def aok() -> str:
        await asyncio.sleep(0)
        return "ok"

    async def aboom() -> str:
        raise Boom("down")

    async def scenario() -> None:
        assert await policy.acall(aok) == "ok"
        with pytest.raises(Boom):
            await policy.acall(aboom)
        with pytest.raises(CircuitOpenError):
            await policy.acall(aboom)  # trips: pybreaker's error, translated
        with pytest.raises(CircuitOpenError) as info:
            await policy.acall(aok)
        assert info.value.name == "legacy-async"

    asyncio.run(scenario())
    assert real.current_state == "open"


def test_as_policy_refuses_other_objects() -> None:
    with pytest.raises(ConfigurationError, match="breaker"):
        facade.as_policy(object())


# ---------------------------------------------------------------------- Redis storage


def test_redis_storage_shares_the_state_between_breakers(
    pb: types.ModuleType, redis_client: Any, redis_prefix: str
) -> None:
    namespace = f"{redis_prefix}legacy"
    first = pb.CircuitBreaker(
        fail_max=2,
        reset_timeout=60,
        name="legacy",
        state_storage=pb.CircuitRedisStorage(pb.STATE_CLOSED, redis_client, namespace=namespace),
    )
    second = pb.CircuitBreaker(
        fail_max=2,
        reset_timeout=60,
        name="legacy",
        state_storage=pb.CircuitRedisStorage(pb.STATE_CLOSED, redis_client, namespace=namespace),
    )
    assert first.call(_ok) == "ok"
    with pytest.raises(Boom):
        first.call(_boom)
    with pytest.raises(pb.CircuitBreakerError):
        first.call(_boom)
    assert first.current_state == "open"
    deadline = time.monotonic() + 3
    while second.current_state != "open" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert second.current_state == "open"
    with pytest.raises(pb.CircuitBreakerError):
        second.call(_ok)
    second.close()
    deadline = time.monotonic() + 3
    while first.current_state != "closed" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.current_state == "closed"
    assert first.call(_ok) == "ok"


def scenario_setters(pb: types.ModuleType) -> list[Any]:
    trace: list[Any] = []
    cb = pb.CircuitBreaker(fail_max=5, reset_timeout=60, success_threshold=1)
    cb.fail_max = 2
    cb.reset_timeout = 0.05
    cb.success_threshold = 2
    trace.append(("settings", cb.fail_max, cb.reset_timeout, cb.success_threshold))
    cb.add_excluded_exceptions(KeyError, IndexError)
    trace.append(("excluded", len(cb.excluded_exceptions)))
    attempt(trace, cb, _boom)
    attempt(trace, cb, _boom)
    time.sleep(0.1)
    attempt(trace, cb, _ok)
    attempt(trace, cb, _ok)
    return trace


def test_setters_take_effect_on_a_live_breaker() -> None:
    ours, theirs = scenario_setters(facade), scenario_setters(real_pybreaker)
    assert ours == theirs
    assert ours[0] == ("settings", 2, 0.05, 2)
    assert ours[-3] == ("state", "half-open", 0, 1)
    assert ours[-1] == ("state", "closed", 0, 0)
