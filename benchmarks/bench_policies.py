"""Retry, pipelines and the other policies: the cost of a call that succeeds.

Resilience code wraps every call to a dependency, and nearly every call
succeeds, so the success path is what a service pays for all day. Decorated
cases compare like with like (``@tenacity.retry`` vs ``@Retry(...)``);
``.call`` cases are bound with `functools.partial`, the cheapest wrapper.
"""

from __future__ import annotations

import functools
from typing import Any

from ._harness import Case, Context, Group, Target


def _work() -> int:
    return 1


async def _awork() -> int:
    return 1


# ----------------------------------------------------------------------------- retry


def _tenacity() -> Any:
    import tenacity

    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=5),
        retry=tenacity.retry_if_exception_type(ConnectionError),
    )(_work)


def _tenacity_async() -> Any:
    import tenacity

    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=5),
        retry=tenacity.retry_if_exception_type(ConnectionError),
    )(_awork)


def _stamina() -> Any:
    import stamina

    return stamina.retry(on=ConnectionError, attempts=3)(_work)


def _stamina_async() -> Any:
    import stamina

    return stamina.retry(on=ConnectionError, attempts=3)(_awork)


def _retry() -> Any:
    from resilience.policies import Retry

    return Retry(on=ConnectionError)(_work)


def _retry_call() -> Any:
    from resilience.policies import Retry

    return functools.partial(Retry(on=ConnectionError).call, _work)


def _retry_budget() -> Any:
    from resilience.policies import Retry, RetryBudget

    return Retry(on=ConnectionError, budget=RetryBudget())(_work)


def _retry_async() -> Any:
    from resilience.policies import Retry

    return Retry(on=ConnectionError)(_awork)


# ----------------------------------------------------------------------------- pipeline


def _pybreaker() -> Any:
    import pybreaker

    return functools.partial(pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60).call, _work)


def _pipeline() -> Any:
    from resilience.policies import Bulkhead, CircuitBreaker, Pipeline, Retry

    pipeline = Pipeline(
        Retry(on=ConnectionError), CircuitBreaker("bench"), Bulkhead(64), name="bench"
    )
    return functools.partial(pipeline.call, _work)


def _pipeline_decorated() -> Any:
    from resilience.policies import Bulkhead, CircuitBreaker, Pipeline, Retry

    return Pipeline(Retry(on=ConnectionError), CircuitBreaker("bench"), Bulkhead(64))(_work)


def _pipeline_full() -> Any:
    from resilience.policies import Bulkhead, CircuitBreaker, Fallback, Pipeline, Retry, RetryBudget

    pipeline = Pipeline(
        Fallback(None),
        Bulkhead(64),
        Retry(on=ConnectionError, budget=RetryBudget()),
        CircuitBreaker("bench"),
    )
    return functools.partial(pipeline.call, _work)


def _pipeline_async() -> Any:
    from resilience.policies import Bulkhead, CircuitBreaker, Pipeline, Retry

    pipeline = Pipeline(Retry(on=ConnectionError), CircuitBreaker("bench"), Bulkhead(64))
    return functools.partial(pipeline.acall, _awork)


def _aiobreaker() -> Any:
    import datetime

    from aiobreaker import CircuitBreaker

    breaker = CircuitBreaker(fail_max=5, timeout_duration=datetime.timedelta(seconds=60))
    return functools.partial(breaker.call_async, _awork)


# ----------------------------------------------------------------------------- the others


def _bulkhead() -> Any:
    from resilience.policies import Bulkhead

    return functools.partial(Bulkhead(64).call, _work)


def _ratelimiter() -> Any:
    from resilience.policies import RateLimiter

    return functools.partial(RateLimiter(1e12).call, _work)


def _fallback() -> Any:
    from resilience.policies import Fallback

    return functools.partial(Fallback(None).call, _work)


def _timeout_sync() -> Any:
    from resilience.policies import Timeout

    return functools.partial(Timeout(5).call, _work)


def _timeout_async() -> Any:
    from resilience.policies import Timeout

    return functools.partial(Timeout(5).acall, _awork)


def groups(ctx: Context) -> list[Group]:
    return [
        Group(
            name="retry.success",
            title="Retry: one successful call (sync)",
            baseline="tenacity @retry",
            cases=[
                Case("tenacity @retry", setup=_tenacity, requires=("tenacity",)),
                Case("stamina @retry(on=...)", setup=_stamina, requires=("stamina",)),
                Case("resilience @Retry(on=...)", setup=_retry),
                Case("resilience Retry.call", setup=_retry_call),
                Case(
                    "resilience @Retry + RetryBudget",
                    setup=_retry_budget,
                    note="the budget counts every call (one lock + clock read)",
                ),
                Case("bare call", setup=lambda: _work),
            ],
            targets=[Target("resilience @Retry(on=...)", 0.05)],
            number=20_000,
        ),
        Group(
            name="retry.success.async",
            title="Retry: one successful call (async)",
            baseline="tenacity @retry (async)",
            cases=[
                Case(
                    "tenacity @retry (async)",
                    setup=_tenacity_async,
                    is_async=True,
                    requires=("tenacity",),
                ),
                Case(
                    "stamina @retry (async)",
                    setup=_stamina_async,
                    is_async=True,
                    requires=("stamina",),
                ),
                Case("resilience @Retry (async)", setup=_retry_async, is_async=True),
                Case("bare await", setup=lambda: _awork, is_async=True),
            ],
            number=20_000,
        ),
        Group(
            name="pipeline.success",
            title="Pipeline retry + breaker + bulkhead vs pybreaker alone (sync)",
            baseline="pybreaker alone",
            cases=[
                Case("pybreaker alone", setup=_pybreaker, requires=("pybreaker",)),
                Case("resilience Pipeline(retry, breaker, bulkhead).call", setup=_pipeline),
                Case("resilience @Pipeline(retry, breaker, bulkhead)", setup=_pipeline_decorated),
                Case(
                    "resilience Pipeline(fallback, bulkhead, retry+budget, breaker)",
                    setup=_pipeline_full,
                ),
                Case("bare call", setup=lambda: _work),
            ],
            targets=[Target("resilience Pipeline(retry, breaker, bulkhead).call", 1.0)],
            number=20_000,
        ),
        Group(
            name="pipeline.success.async",
            title="Pipeline retry + breaker + bulkhead vs aiobreaker alone (async)",
            baseline="aiobreaker alone",
            cases=[
                Case(
                    "aiobreaker alone", setup=_aiobreaker, is_async=True, requires=("aiobreaker",)
                ),
                Case(
                    "resilience Pipeline(retry, breaker, bulkhead).acall",
                    setup=_pipeline_async,
                    is_async=True,
                ),
                Case("bare await", setup=lambda: _awork, is_async=True),
            ],
            number=20_000,
        ),
        Group(
            name="policies.overhead",
            title="Bulkhead, rate limiter, fallback, timeout: success-path cost",
            baseline="bare call",
            cases=[
                Case("bare call", setup=lambda: _work),
                Case("Bulkhead.call", setup=_bulkhead),
                Case("RateLimiter.call (local bucket)", setup=_ratelimiter),
                Case("Fallback.call", setup=_fallback),
                Case(
                    "Timeout.call (sync: worker-thread hand-off)",
                    setup=_timeout_sync,
                    note="a thread hand-off per call: use around I/O, not around microsecond work",
                ),
                Case("Timeout.acall (asyncio.timeout)", setup=_timeout_async, is_async=True),
            ],
            number=5_000,
        ),
    ]
