"""Fallback: a degraded answer for the policies' rejections, never for the function's own bugs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from resilience import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    RateLimitedError,
    TimeoutExceededError,
)
from resilience.policies import DEFAULT_FALLBACK_ON, Fallback
from resilience.testing import RecordingTelemetry


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def run(policy: Fallback, mode: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    if mode == "sync":
        return policy.call(fn, *args, **kw)

    async def afn(*a: Any, **k: Any) -> Any:
        await asyncio.sleep(0)
        return fn(*a, **k)

    return await policy.acall(afn, *args, **kw)


def raiser(error: BaseException) -> Callable[..., Any]:
    def fn(*args: Any, **kwargs: Any) -> Any:
        raise error

    return fn


@pytest.mark.parametrize(
    "error",
    [
        CircuitOpenError("correios", "open", 3.0),
        BulkheadFullError("correios", 4),
        TimeoutExceededError(2.0),
        DeadlineExceededError(0.5),
    ],
)
async def test_default_errors_get_the_value(mode: str, error: BaseException) -> None:
    telemetry = RecordingTelemetry()
    policy = Fallback({"price": "19.90", "flat": True}, name="flat-rate", telemetry=telemetry)
    assert await run(policy, mode, raiser(error)) == {"price": "19.90", "flat": True}
    [event] = telemetry.of_kind("fallback")
    assert (event.name, event.attributes["error"]) == ("flat-rate", type(error).__name__)


async def test_the_functions_own_errors_propagate(mode: str) -> None:
    error = LookupError("unknown zip code")
    with pytest.raises(LookupError) as info:
        await run(Fallback(0), mode, raiser(error))
    assert info.value is error
    with pytest.raises(RateLimitedError):  # not in the default list
        await run(Fallback(0), mode, raiser(RateLimitedError("x", 1.0)))


async def test_success_is_untouched(mode: str) -> None:
    assert await run(Fallback(0), mode, lambda x, y: x * y, 6, y=7) == 42


async def test_handler_sees_the_error_and_the_arguments(mode: str) -> None:
    seen: list[tuple[BaseException, tuple[Any, ...], dict[str, Any]]] = []

    def handler(exc: BaseException, *args: Any, **kwargs: Any) -> str:
        seen.append((exc, args, kwargs))
        return f"flat:{args[0]}"

    error = CircuitOpenError("correios", "open", 5.0)
    policy = Fallback(handler=handler)
    assert await run(policy, mode, raiser(error), "01310-100", weight=2) == "flat:01310-100"
    assert seen == [(error, ("01310-100",), {"weight": 2})]


async def test_async_handler_is_awaited() -> None:
    async def handler(exc: BaseException, zip_code: str) -> str:
        await asyncio.sleep(0)
        return f"async-flat:{zip_code}:{type(exc).__name__}"

    async def down(zip_code: str) -> str:
        raise TimeoutExceededError(1.0)

    assert (
        await Fallback(handler=handler).acall(down, "123") == "async-flat:123:TimeoutExceededError"
    )


async def test_custom_on_types_and_predicate(mode: str) -> None:
    assert await run(Fallback("x", on=KeyError), mode, raiser(KeyError())) == "x"
    status = Fallback("cached", on=lambda e: isinstance(e, OSError) and e.errno == 503)
    assert await run(status, mode, raiser(OSError(503, "unavailable"))) == "cached"
    with pytest.raises(OSError):
        await run(status, mode, raiser(OSError(404, "missing")))


async def test_handler_failure_keeps_the_original_as_context(mode: str) -> None:
    original = BulkheadFullError("b", 1)

    def broken(exc: BaseException) -> None:
        raise RuntimeError("fallback broke")

    with pytest.raises(RuntimeError) as info:
        await run(Fallback(handler=broken), mode, raiser(original))
    assert info.value.__context__ is original


async def test_decorator_on_both_flavours() -> None:
    policy = Fallback("flat")

    @policy
    def quote() -> str:
        raise CircuitOpenError("c", "open", 1.0)

    @policy
    async def aquote() -> str:
        raise CircuitOpenError("c", "open", 1.0)

    assert quote() == "flat"
    assert await aquote() == "flat"


def test_default_on_is_the_policies_rejections() -> None:
    assert set(DEFAULT_FALLBACK_ON) == {CircuitOpenError, BulkheadFullError, TimeoutExceededError}


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        ((), {}, "handler"),
        ((1,), {"handler": lambda e: 2}, "handler"),
        ((), {"handler": 3}, "handler"),
        ((1,), {"on": ()}, "on"),
        ((1,), {"on": (KeyError, 5)}, "on"),
        ((1,), {"on": "KeyError"}, "on"),
        ((1,), {"name": ""}, "name"),
    ],
)
def test_bad_configuration_names_the_field(
    args: tuple[Any, ...], kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Fallback(*args, **kwargs)
    assert info.value.field == field


def test_none_is_a_valid_fallback_value() -> None:
    assert Fallback(None).call(raiser(TimeoutExceededError(1))) is None
