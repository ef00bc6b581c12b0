"""Pipeline: several policies around one call, outermost first.

``Pipeline(fallback, retry, breaker, bulkhead, timeout)`` runs a call as
``fallback.call(retry.call, breaker.call, bulkhead.call, timeout.call, fn, *args)``:
each policy's ``call(fn, *args)`` calls ``fn(*args)``, so handing it the next
policy's bound ``call`` as ``fn`` nests them with no closure allocated per call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from resilience._errors import ConfigurationError, PolicyError
from resilience._telemetry import Telemetry

from ._base import Policy, PolicyDecorator
from ._support import DEFAULT_TELEMETRY, check_name, emit

__all__ = ["Pipeline"]

P = ParamSpec("P")
T = TypeVar("T")


def _view(policy: Any, skip: int) -> Any:
    """The policy as seen from inside a pipeline where *skip* plumbing args precede the user's."""
    hook = getattr(policy, "_for_pipeline", None)
    return policy if hook is None or skip == 0 else hook(skip)


class Pipeline(PolicyDecorator):
    """Compose policies, outermost first; use it like any single policy.

    Works as ``@pipeline``, ``pipeline.call(fn, *args)`` and
    ``await pipeline.acall(fn, *args)``. A `PolicyError` escaping the pipeline
    is reported to telemetry under the pipeline's name, then re-raised.
    See ``docs/policies/pipeline.md`` for the recommended order.
    """

    __slots__ = ("_ahead", "_atail", "_head", "_tail", "_telemetry", "name", "policies")

    def __init__(
        self, *policies: Policy, name: str = "pipeline", telemetry: Telemetry = DEFAULT_TELEMETRY
    ) -> None:
        if not policies:
            raise ConfigurationError("policies", "a pipeline needs at least one policy")
        for index, policy in enumerate(policies):
            if not isinstance(policy, Policy):
                raise ConfigurationError(
                    "policies",
                    f"item {index} ({policy!r}) is not a policy (needs name, call and acall)",
                )
        self.name = check_name(name)
        self.policies: tuple[Policy, ...] = tuple(policies)
        self._telemetry = telemetry
        self._build(0)

    def _build(self, extra_skip: int) -> None:
        count = len(self.policies)
        views = [_view(p, count - i - 1 + extra_skip) for i, p in enumerate(self.policies)]
        self._head: Callable[..., Any] = views[0].call
        self._tail: tuple[Callable[..., Any], ...] = tuple(v.call for v in views[1:])
        self._ahead: Callable[..., Any] = views[0].acall
        self._atail: tuple[Callable[..., Any], ...] = tuple(v.acall for v in views[1:])

    def _for_pipeline(self, skip: int) -> Pipeline:
        twin = Pipeline.__new__(Pipeline)
        twin.name = self.name
        twin.policies = self.policies
        twin._telemetry = self._telemetry
        twin._build(skip)
        return twin

    def _rejected(self, exc: PolicyError) -> None:
        emit(self._telemetry, "pipeline", self.name, "rejected", error=type(exc).__name__)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through every policy."""
        try:
            result: T = self._head(*self._tail, fn, *args, **kwargs)
        except PolicyError as exc:
            self._rejected(exc)
            raise
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through every policy."""
        try:
            result: T = await self._ahead(*self._atail, fn, *args, **kwargs)
        except PolicyError as exc:
            self._rejected(exc)
            raise
        return result

    def __repr__(self) -> str:
        inner = ", ".join(repr(p) for p in self.policies)
        return f"Pipeline({inner}, name={self.name!r})"
