"""The contract every policy (breaker, retry, timeout, bulkhead, ...) fulfils.

A policy is anything with ``call(fn, *args, **kwargs)`` and
``acall(fn, *args, **kwargs)``. That is all a `Pipeline` needs to nest them, and
it lets a pipeline compose policies as ``outer.call(inner.call, fn, *args)``
without allocating a closure per call.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, overload, runtime_checkable

__all__ = ["Policy", "PolicyDecorator"]

P = ParamSpec("P")
T = TypeVar("T")


@runtime_checkable
class Policy(Protocol):
    """Runs a function under some protection; sync and async flavours."""

    @property
    def name(self) -> str:
        """Used in errors and telemetry."""

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` under the policy."""

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under the policy."""


class PolicyDecorator:
    """Mixin that turns a policy's ``call``/``acall`` into decorator use.

    ``@policy`` on a coroutine function routes through ``acall``; on anything
    else, through ``call``. The wrapper keeps the function's signature.
    """

    __slots__ = ()

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        raise NotImplementedError

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        raise NotImplementedError

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if inspect.iscoroutinefunction(fn):
            acall = self.acall

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await acall(fn, *args, **kwargs)

            return async_wrapper

        call = self.call

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return call(fn, *args, **kwargs)

        return wrapper
