"""Fallback: answer with something degraded-but-useful when the protection says no.

When the postal API is down, a checkout should still quote a flat-rate
shipping price rather than fail. A fallback turns the policies' fast
rejections (open circuit, full bulkhead, timeout) into that answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, ParamSpec, TypeVar

from resilience._errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    TimeoutExceededError,
)
from resilience._telemetry import Telemetry

from ._base import PolicyDecorator
from ._support import DEFAULT_TELEMETRY, check_name, emit

__all__ = ["DEFAULT_FALLBACK_ON", "Fallback"]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_FALLBACK_ON: Final[tuple[type[BaseException], ...]] = (
    CircuitOpenError,
    BulkheadFullError,
    TimeoutExceededError,
)
"""Errors a `Fallback` handles unless told otherwise: the policies' own "not now" answers.

The protected function's own errors (a 404, a validation error) are not in
the list: hiding those behind a default value would hide bugs.
"""

_MISSING: Final[Any] = object()


class Fallback(PolicyDecorator):
    """Return *value*, or ``handler(exc, *args, **kwargs)``, when the call fails with *on*.

    *on* is a tuple of exception types (default `DEFAULT_FALLBACK_ON`) or a
    predicate ``(exc) -> bool``. The handler receives the original error and
    the call's arguments; under ``acall`` it may be a coroutine function.
    Anything not matched propagates unchanged.
    """

    __slots__ = ("_handler", "_match", "_skip", "_telemetry", "_value", "name")

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        handler: Callable[..., Any] | None = None,
        on: tuple[type[BaseException], ...]
        | type[BaseException]
        | Callable[[BaseException], bool] = DEFAULT_FALLBACK_ON,
        name: str = "fallback",
        telemetry: Telemetry = DEFAULT_TELEMETRY,
    ) -> None:
        if (value is _MISSING) == (handler is None):
            raise ConfigurationError("handler", "pass exactly one of value= or handler=")
        if handler is not None and not callable(handler):
            raise ConfigurationError("handler", f"must be callable, got {handler!r}")
        if isinstance(on, type):
            on = (on,)
        if isinstance(on, tuple):
            if not on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
                raise ConfigurationError(
                    "on", f"must be exception types or a predicate, got {on!r}"
                )
            types = on
            self._match: Callable[[BaseException], bool] = lambda exc: isinstance(exc, types)
        elif callable(on):
            self._match = on
        else:
            raise ConfigurationError("on", f"must be exception types or a predicate, got {on!r}")
        self._value = value
        self._handler = handler
        self.name = check_name(name)
        self._telemetry = telemetry
        self._skip = 0  # leading positional args that are inner policies (inside a Pipeline)

    def _for_pipeline(self, skip: int) -> Fallback:
        """A twin that hides the *skip* pipeline plumbing arguments from the handler."""
        twin = Fallback.__new__(Fallback)
        for slot in Fallback.__slots__:
            object.__setattr__(twin, slot, getattr(self, slot))
        twin._skip = skip
        return twin

    def _recover(self, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        emit(self._telemetry, "fallback", self.name, "fallback", error=type(exc).__name__)
        if self._handler is None:
            return self._value
        return self._handler(exc, *args[self._skip :], **kwargs)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn``; on a matching error return the fallback."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not self._match(exc):
                raise
            result: T = self._recover(exc, args, kwargs)
            return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn``; on a matching error return (or await) the fallback."""
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if not self._match(exc):
                raise
            result = self._recover(exc, args, kwargs)
            if inspect.isawaitable(result):
                result = await result
            value: T = result
            return value

    def __repr__(self) -> str:
        kind = "value" if self._handler is None else "handler"
        return f"Fallback(name={self.name!r}, {kind})"
