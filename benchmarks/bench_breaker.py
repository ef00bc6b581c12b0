"""Circuit breaker: one successful call through a closed breaker, sync and async.

Every case calls the same trivial function through the library's ``call``
entry point bound with `functools.partial` (the cheapest wrapper Python has),
so the figures compare the breakers' own bookkeeping.
"""

from __future__ import annotations

import functools
from typing import Any

from ._harness import Case, Context, Group, Target


def _work() -> int:
    return 1


async def _awork() -> int:
    return 1


def _pybreaker() -> Any:
    import pybreaker

    return functools.partial(pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60).call, _work)


def _circuitbreaker() -> Any:
    from circuitbreaker import CircuitBreaker

    return functools.partial(CircuitBreaker(failure_threshold=5, recovery_timeout=60).call, _work)


def _resilience() -> Any:
    from resilience.policies import CircuitBreaker

    return functools.partial(CircuitBreaker("bench").call, _work)


def _resilience_decorated() -> Any:
    from resilience.policies import CircuitBreaker

    return CircuitBreaker("bench")(_work)


def _facade() -> Any:
    from resilience.compat import pybreaker as facade

    return functools.partial(facade.CircuitBreaker(fail_max=5, reset_timeout=60).call, _work)


def _aiobreaker() -> Any:
    import datetime

    from aiobreaker import CircuitBreaker

    breaker = CircuitBreaker(fail_max=5, timeout_duration=datetime.timedelta(seconds=60))
    return functools.partial(breaker.call_async, _awork)


def _purgatory() -> Any:
    from purgatory import AsyncCircuitBreakerFactory

    factory = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)

    async def op() -> int:
        async with await factory.get_breaker("bench"):
            return await _awork()

    return op


def _resilience_async() -> Any:
    from resilience.policies import CircuitBreaker

    return functools.partial(CircuitBreaker("bench").acall, _awork)


def groups(ctx: Context) -> list[Group]:
    return [
        Group(
            name="breaker.sync",
            title="Circuit breaker, sync: one successful call through a closed breaker",
            baseline="pybreaker",
            cases=[
                Case("pybreaker", setup=_pybreaker, requires=("pybreaker",)),
                Case("circuitbreaker", setup=_circuitbreaker, requires=("circuitbreaker",)),
                Case("resilience CircuitBreaker", setup=_resilience),
                Case("resilience decorator", setup=_resilience_decorated),
                Case("resilience.compat.pybreaker facade", setup=_facade),
                Case("bare call", setup=lambda: _work),
            ],
            targets=[
                Target("resilience CircuitBreaker", 0.3),
                Target("resilience.compat.pybreaker facade", 0.5),
            ],
            number=50_000,
        ),
        Group(
            name="breaker.async",
            title="Circuit breaker, async: one successful awaited call through a closed breaker",
            baseline="aiobreaker",
            cases=[
                Case("aiobreaker", setup=_aiobreaker, is_async=True, requires=("aiobreaker",)),
                Case("purgatory", setup=_purgatory, is_async=True, requires=("purgatory",)),
                Case("resilience async", setup=_resilience_async, is_async=True),
                Case("bare await", setup=lambda: _awork, is_async=True),
            ],
            targets=[Target("resilience async", 0.4)],
            number=20_000,
        ),
    ]
