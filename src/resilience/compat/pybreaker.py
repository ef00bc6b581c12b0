"""Run code written for pybreaker on the resilience engine, unchanged.

``import resilience.compat.pybreaker as pybreaker`` gives the names pybreaker
1.x exports (`CircuitBreaker`, `CircuitBreakerListener`, `CircuitBreakerError`,
`CircuitMemoryStorage`, `CircuitRedisStorage`, ``STATE_*``) with pybreaker's
observable behaviour: consecutive-failure counting (``fail_max``), the
``reset_timeout``, ``success_threshold`` trial successes to close, excluded
exceptions counting as successes, the same listener callbacks in the same
order, the same error messages and ``current_state`` strings.

What changes is underneath: the state machine is `resilience`'s
`BreakerCore`, so no lock is held while the protected function runs
(pybreaker holds its ``RLock`` around the call, serialising every caller of
one breaker), half-open admits ``success_threshold`` trials at a time and
rejects the rest instead of queueing them, a call costs a fraction of
pybreaker's, and `CircuitBreakerError` is also a `resilience.CircuitOpenError`.

`as_policy` goes the other way: it wraps an existing *real*
``pybreaker.CircuitBreaker`` as a `resilience.policies.Policy`, for a
pipeline stage while a codebase migrates.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import inspect
import logging
import time
import types
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from resilience._clock import SYSTEM_CLOCK, Clock, MonotonicClock
from resilience._errors import CircuitOpenError, ConfigurationError
from resilience.policies._base import PolicyDecorator
from resilience.policies._breaker_config import CircuitBreakerConfig, CircuitState
from resilience.policies._breaker_core import BreakerCore, Epoch, Rejection, Transition
from resilience.policies._breaker_windows import FAILURE

if TYPE_CHECKING:
    from resilience.policies._breaker_redis import RedisSharedState

__all__ = [
    "STATE_CLOSED",
    "STATE_HALF_OPEN",
    "STATE_OPEN",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitBreakerListener",
    "CircuitBreakerState",
    "CircuitBreakerStorage",
    "CircuitMemoryStorage",
    "CircuitRedisStorage",
    "PybreakerPolicy",
    "as_policy",
]

STATE_OPEN = "open"
STATE_CLOSED = "closed"
STATE_HALF_OPEN = "half-open"

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger("resilience.compat.pybreaker")
_UTC = _dt.UTC

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
# (Enum attribute access costs ~0.2 µs on CPython 3.11: hot paths use these module constants.)

_TO_PYBREAKER = {
    CircuitState.CLOSED: STATE_CLOSED,
    CircuitState.OPEN: STATE_OPEN,
    CircuitState.HALF_OPEN: STATE_HALF_OPEN,
    CircuitState.FORCED_OPEN: STATE_OPEN,
    CircuitState.DISABLED: STATE_CLOSED,
    CircuitState.METRICS_ONLY: STATE_CLOSED,
}
_FROM_PYBREAKER = {
    STATE_CLOSED: CircuitState.CLOSED,
    STATE_OPEN: CircuitState.OPEN,
    STATE_HALF_OPEN: CircuitState.HALF_OPEN,
}

_GeneratorType = types.GeneratorType

_MSG_TRIPPED = "Failures threshold reached, circuit breaker opened"
_MSG_TRIAL_FAILED = "Trial call failed, circuit breaker opened"
_MSG_STILL_OPEN = "Timeout not elapsed yet, circuit breaker still open"


def _pybreaker_state(name: str) -> CircuitState:
    try:
        return _FROM_PYBREAKER[name]
    except KeyError:
        valid = ", ".join(_FROM_PYBREAKER)
        raise ConfigurationError(
            "state", f"unknown pybreaker state {name!r}; valid: {valid}"
        ) from None


class CircuitBreakerError(CircuitOpenError):
    """pybreaker's "the circuit is open" error, also a `resilience.CircuitOpenError`.

    ``str(error)`` is pybreaker's message, so log parsing and tests that match
    on it keep working; ``name``, ``state`` and ``retry_after`` are there for
    code that handles every resilience rejection alike.
    """

    def __init__(
        self,
        message: str = "",
        *,
        name: str = "",
        state: str = STATE_OPEN,
        retry_after: float = 0.0,
    ) -> None:
        self.name = name
        self.state = state
        self.retry_after = retry_after
        Exception.__init__(self, message)


class CircuitBreakerState:
    """What pybreaker passes to ``state_change``: an object with a ``name``."""

    __slots__ = ("_breaker", "name")

    def __init__(self, breaker: CircuitBreaker, name: str) -> None:
        self._breaker = breaker
        self.name = name

    def __repr__(self) -> str:
        return f"<CircuitBreakerState {self.name!r}>"


class CircuitBreakerListener:
    """Subclass and override the callbacks you need (pybreaker's listener API).

    Callbacks run on the caller's thread with no breaker lock held.
    """

    def before_call(
        self, cb: CircuitBreaker, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        """Called before an admitted call runs (not for rejected calls)."""

    def failure(self, cb: CircuitBreaker, exc: BaseException) -> None:
        """Called when a call fails with a non-excluded exception."""

    def success(self, cb: CircuitBreaker) -> None:
        """Called when a call succeeds (or fails with an excluded exception)."""

    def state_change(
        self,
        cb: CircuitBreaker,
        old_state: CircuitBreakerState | None,
        new_state: CircuitBreakerState,
    ) -> None:
        """Called after the breaker changed state."""


class CircuitBreakerStorage:
    """Where a breaker keeps its state; pybreaker's storage interface.

    On the resilience engine the counters live in the breaker's core; a
    storage gives the initial state and, once the breaker is built, reads
    through to it so code inspecting the storage sees the live values.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._breaker: CircuitBreaker | None = None
        self._initial = STATE_CLOSED

    @property
    def name(self) -> str:
        """``"memory"`` or ``"redis"``."""
        return self._name

    def _attach(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    @property
    def state(self) -> str:
        """The breaker's state as a pybreaker string."""
        if self._breaker is None:
            return self._initial
        return self._breaker.current_state

    @state.setter
    def state(self, state: str) -> None:
        if self._breaker is None:
            _pybreaker_state(state)
            self._initial = state
            return
        {STATE_OPEN: self._breaker.open, STATE_HALF_OPEN: self._breaker.half_open}.get(
            state, self._breaker.close
        )()

    @property
    def counter(self) -> int:
        """Consecutive failures."""
        return 0 if self._breaker is None else self._breaker.fail_counter

    @property
    def success_counter(self) -> int:
        """Successful trial calls in half-open."""
        return 0 if self._breaker is None else self._breaker.success_counter

    @property
    def opened_at(self) -> _dt.datetime | None:
        """Wall-clock time the circuit last opened."""
        return None if self._breaker is None else self._breaker._opened_at

    def increment_counter(self) -> None:
        """Not needed by the engine (it counts outcomes itself); kept for the interface."""

    def reset_counter(self) -> None:
        """Not needed by the engine; kept for the interface."""

    def increment_success_counter(self) -> None:
        """Not needed by the engine; kept for the interface."""

    def reset_success_counter(self) -> None:
        """Not needed by the engine; kept for the interface."""


class CircuitMemoryStorage(CircuitBreakerStorage):
    """In-process state (pybreaker's default storage)."""

    def __init__(self, state: str) -> None:
        super().__init__("memory")
        _pybreaker_state(state)
        self._initial = state


class CircuitRedisStorage(CircuitBreakerStorage):
    """State shared by every process through Redis, on `RedisSharedState`.

    Accepts pybreaker's arguments. Consistency is resilience's, not
    pybreaker's key-per-counter scheme: the state and the open deadline are
    decided atomically in Redis and every process follows them within
    ``sync_interval`` seconds; the keys live under ``namespace`` (default
    ``"pybreaker"``), they are not pybreaker's keys, so do not mix real
    pybreaker processes and facade processes on one breaker. If Redis is
    unreachable each process keeps protecting itself with its local state
    (``fallback_circuit_state`` is accepted for compatibility and unused:
    the local state is a better fallback than a constant).
    """

    def __init__(
        self,
        state: str,
        redis_object: Any,
        namespace: str | None = None,
        fallback_circuit_state: str = STATE_CLOSED,
        cluster_mode: bool = False,
        *,
        sync_interval: float = 0.1,
    ) -> None:
        super().__init__("redis")
        _pybreaker_state(state)
        _pybreaker_state(fallback_circuit_state)
        self._initial = state
        self._redis = redis_object
        self._namespace = namespace or "pybreaker"
        self._sync_interval = sync_interval

    def _shared(self) -> RedisSharedState:
        from resilience.policies._breaker_redis import RedisSharedState

        return RedisSharedState(
            self._redis, prefix=f"{self._namespace}:", sync_interval=self._sync_interval
        )


class CircuitBreaker:
    """pybreaker's ``CircuitBreaker`` API on the resilience engine.

    Same constructor, methods and properties as pybreaker 1.x; ``clock`` is
    an addition for tests. ``call_async`` awaits an asyncio coroutine
    function (pybreaker's needs Tornado), and the decorator routes
    ``async def`` functions through it.
    """

    def __init__(  # noqa: PLR0917 - pybreaker's signature is positional
        self,
        fail_max: int = 5,
        reset_timeout: float = 60,
        success_threshold: int = 1,
        exclude: Iterable[type[BaseException] | Callable[[Any], bool]] | None = None,
        listeners: Sequence[CircuitBreakerListener] | None = None,
        state_storage: CircuitBreakerStorage | None = None,
        name: str | None = None,
        throw_new_error_on_trip: bool = True,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        storage = state_storage or CircuitMemoryStorage(STATE_CLOSED)
        initial = _pybreaker_state(storage.state)
        self._clock = clock
        self._now: Callable[[], float] = (
            time.monotonic if type(clock) is MonotonicClock else clock.monotonic
        )
        self._fail_max = fail_max
        self._reset_timeout = reset_timeout
        self._success_threshold = success_threshold
        config = CircuitBreakerConfig(
            consecutive_failures=fail_max,
            open_duration=reset_timeout,
            max_open_duration=max(reset_timeout, 0.0),
            permitted_calls_in_half_open=success_threshold,
            window_size=max(fail_max, 1),
            minimum_calls=1,
            record_exceptions=(BaseException,),
            initial_state=initial,
        )
        self._core = BreakerCore(config, self._now())
        if initial is CircuitState.OPEN:
            self._core.open_until = self._now()  # pybreaker: no opening time known -> trial now
        self._excluded: list[type[BaseException] | Callable[[Any], bool]] = list(exclude or [])
        self._excluded_types: tuple[type[BaseException], ...] = ()
        self._excluded_callables: tuple[Callable[[Any], bool], ...] = ()
        self._refresh_exclusions()
        self._listeners: list[CircuitBreakerListener] = list(listeners or [])
        self._name = name
        self._throw_new_error_on_trip = throw_new_error_on_trip
        self._opened_at: _dt.datetime | None = None
        self._state_obj = CircuitBreakerState(self, _TO_PYBREAKER[initial])
        self._state_storage = storage
        self._shared: RedisSharedState | None = None
        storage._attach(self)
        if isinstance(storage, CircuitRedisStorage):
            self._shared = storage._shared()
            self._shared.bind(name or "pybreaker", self._core, self._now, self._announce)

    # ------------------------------------------------------------------ configuration

    def _refresh_exclusions(self) -> None:
        # Like pybreaker: a plain class is matched with issubclass, anything else is called.
        self._excluded_types = tuple(e for e in self._excluded if type(e) is type)
        self._excluded_callables = tuple(
            e  # type: ignore[misc]
            for e in self._excluded
            if type(e) is not type and callable(e)
        )

    @property
    def fail_max(self) -> int:
        """Consecutive failures that open the circuit."""
        return self._fail_max

    @fail_max.setter
    def fail_max(self, number: int) -> None:
        self._fail_max = number
        self._core.tune(consecutive_failures=number)

    @property
    def reset_timeout(self) -> float:
        """Seconds the circuit stays open before a trial call."""
        return self._reset_timeout

    @reset_timeout.setter
    def reset_timeout(self, timeout: float) -> None:
        self._reset_timeout = timeout
        self._core.tune(open_duration=timeout)

    @property
    def success_threshold(self) -> int:
        """Successful trial calls needed to close from half-open."""
        return self._success_threshold

    @success_threshold.setter
    def success_threshold(self, threshold: int) -> None:
        self._success_threshold = threshold
        self._core.tune(permitted_calls_in_half_open=threshold)

    @property
    def excluded_exceptions(self) -> tuple[type[BaseException] | Callable[[Any], bool], ...]:
        """Exception types (or predicates) that are business errors, not failures."""
        return tuple(self._excluded)

    def add_excluded_exception(self, exception: type[BaseException]) -> None:
        """Treat *exception* as a business error (counts as a success)."""
        self._excluded.append(exception)
        self._refresh_exclusions()

    def add_excluded_exceptions(self, *exceptions: type[BaseException]) -> None:
        """Treat each of *exceptions* as a business error."""
        for exc in exceptions:
            self.add_excluded_exception(exc)

    def remove_excluded_exception(self, exception: type[BaseException]) -> None:
        """Count *exception* as a failure again."""
        self._excluded.remove(exception)
        self._refresh_exclusions()

    def is_system_error(self, exception: BaseException) -> bool:
        """Whether *exception* signals a malfunction (not excluded)."""
        if self._excluded_types and isinstance(exception, self._excluded_types):
            return False
        return all(not predicate(exception) for predicate in self._excluded_callables)

    @property
    def listeners(self) -> tuple[CircuitBreakerListener, ...]:
        """The registered listeners."""
        return tuple(self._listeners)

    def add_listener(self, listener: CircuitBreakerListener) -> None:
        """Register *listener*."""
        self._listeners.append(listener)

    def add_listeners(self, *listeners: CircuitBreakerListener) -> None:
        """Register each of *listeners*."""
        self._listeners.extend(listeners)

    def remove_listener(self, listener: CircuitBreakerListener) -> None:
        """Unregister *listener*."""
        self._listeners.remove(listener)

    @property
    def name(self) -> str | None:
        """The breaker's name, if given."""
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        self._name = name

    # ------------------------------------------------------------------ state

    @property
    def core(self) -> BreakerCore:
        """The resilience state machine underneath."""
        return self._core

    @property
    def current_state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        if self._shared is not None:
            self._shared.before_call(self._now())
        return _TO_PYBREAKER[self._core.epoch.state]

    @property
    def state(self) -> CircuitBreakerState:
        """The state object (its ``name`` is `current_state`)."""
        name = self.current_state
        if self._state_obj.name != name:
            self._state_obj = CircuitBreakerState(self, name)
        return self._state_obj

    @property
    def fail_counter(self) -> int:
        """Consecutive failures so far."""
        return self._core.consecutive

    @property
    def success_counter(self) -> int:
        """Consecutive successful trial calls in half-open."""
        return self._core.ho_successes

    def open(self) -> bool:
        """Open the circuit now; returns ``throw_new_error_on_trip`` like pybreaker."""
        self._core.transition(_OPEN, self._now(), "manual")
        self._announce()
        return self._throw_new_error_on_trip

    def half_open(self) -> None:
        """Admit trial calls now."""
        self._core.transition(_HALF_OPEN, self._now(), "manual")
        self._announce()

    def close(self) -> None:
        """Close the circuit now and reset the counters."""
        self._core.transition(_CLOSED, self._now(), "manual")
        self._announce()

    def _announce(self) -> list[Transition]:
        transitions = self._core.drain()
        for t in transitions:
            if t.to_state is _OPEN:
                self._opened_at = _dt.datetime.now(_UTC)
            old = self._state_obj
            new = CircuitBreakerState(self, _TO_PYBREAKER[t.to_state])
            self._state_obj = new
            if self._shared is not None:
                self._shared.transitioned(t)
            for listener in self._listeners:
                listener.state_change(self, old, new)
        return transitions

    # ------------------------------------------------------------------ calls

    def _admit(self) -> Epoch:
        now = self._now()
        if self._shared is not None:
            self._shared.before_call(now)
        permit = self._core.try_acquire(now)
        if self._core.events:
            self._announce()
        if type(permit) is Rejection:
            raise CircuitBreakerError(
                _MSG_STILL_OPEN,
                name=self._name or "",
                state=_TO_PYBREAKER[permit.state],
                retry_after=permit.retry_after,
            )
        return permit  # type: ignore[return-value]

    def _succeeded(self, permit: Epoch) -> None:
        core = self._core
        state = permit.state
        core.record(permit, 0, 0.0 if state is _CLOSED else self._now())
        if self._shared is not None:
            self._shared.recorded(0, self._now())
        if core.events:
            self._announce()
        for listener in self._listeners:
            listener.success(self)

    def _failed(self, permit: Epoch, exc: BaseException) -> None:
        """Record a failure; raise `CircuitBreakerError` if it tripped the breaker."""
        if not self.is_system_error(exc):
            self._succeeded(permit)
            return
        core = self._core
        now = self._now()
        core.record(permit, FAILURE, now)
        if self._shared is not None:
            self._shared.recorded(FAILURE, now)
        for listener in self._listeners:
            listener.failure(self, exc)
        if not core.events:
            return
        for t in self._announce():
            if t.to_state is _OPEN and self._throw_new_error_on_trip:
                message = _MSG_TRIAL_FAILED if t.from_state is _HALF_OPEN else _MSG_TRIPPED
                raise CircuitBreakerError(
                    message, name=self._name or "", retry_after=t.open_duration
                ) from exc

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func(*args, **kwargs)`` under the breaker (no lock held while it runs)."""
        core = self._core
        permit = core.epoch
        if permit.state is _CLOSED and not self._listeners and self._shared is None:
            # The common case, kept short: closed, nobody listening.
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                self._failed(permit, exc)
                raise
            if type(result) is _GeneratorType:
                return self._generator(permit, cast("Generator[Any, Any, Any]", result))  # type: ignore[return-value]
            core.record_success(permit)  # a success while closed never changes the state
            return result
        if permit.state is not _CLOSED or self._shared is not None:
            permit = self._admit()
        for listener in self._listeners:
            listener.before_call(self, func, *args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._failed(permit, exc)
            raise
        if type(result) is _GeneratorType:
            return self._generator(permit, cast("Generator[Any, Any, Any]", result))  # type: ignore[return-value]
        self._succeeded(permit)
        return result

    def _generator(self, permit: Epoch, gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        try:
            result = yield from gen
        except BaseException as exc:
            self._failed(permit, exc)
            raise
        self._succeeded(permit)
        return result

    async def call_async(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``func(*args, **kwargs)`` under the breaker (asyncio, not Tornado)."""
        permit = self._core.epoch
        if permit.state is not _CLOSED or self._shared is not None:
            permit = self._admit()
        for listener in self._listeners:
            listener.before_call(self, func, *args, **kwargs)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            self._failed(permit, exc)
            raise
        self._succeeded(permit)
        return result

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """``with breaker.calling(): ...`` protects the block like `call` protects a function."""
        permit = self._core.epoch
        if permit.state is not _CLOSED or self._shared is not None:
            permit = self._admit()
        for listener in self._listeners:
            listener.before_call(self, _block)
        try:
            yield
        except BaseException as exc:
            self._failed(permit, exc)
            raise
        self._succeeded(permit)

    def __call__(self, *call_args: Any, **call_kwargs: Any) -> Any:
        """Decorator: ``@breaker`` or ``@breaker()``; ``async def`` functions are awaited."""
        call_kwargs.pop("__pybreaker_call_async", None)

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    return await self.call_async(func, *args, **kwargs)

                return async_wrapper

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self.call(func, *args, **kwargs)

            return wrapper

        if call_args:
            return decorate(call_args[0])
        return decorate

    def __repr__(self) -> str:
        return f"<resilience.compat.pybreaker.CircuitBreaker name={self._name!r} state={self.current_state!r}>"


def _block() -> None:
    """Stands for the ``with`` block in ``before_call`` (pybreaker passes an internal generator)."""


class PybreakerPolicy(PolicyDecorator):
    """An existing ``pybreaker.CircuitBreaker`` as a `resilience.policies.Policy`.

    Rejections (pybreaker's ``CircuitBreakerError``) are re-raised as
    `resilience.CircuitOpenError` (the original chained as ``__cause__``), so
    fallbacks and retries in a pipeline treat every breaker alike. The sync
    path uses pybreaker's own ``call`` (its lock is held during the call, as
    in pybreaker); the async path uses ``calling()``, which does not hold it
    across the ``await``.
    """

    __slots__ = ("_breaker", "_error", "_name")

    def __init__(self, breaker: Any, name: str | None = None) -> None:
        import pybreaker

        if not isinstance(breaker, pybreaker.CircuitBreaker):
            raise ConfigurationError(
                "breaker", f"must be a pybreaker.CircuitBreaker, got {type(breaker).__name__}"
            )
        self._breaker = breaker
        self._error: type[BaseException] = pybreaker.CircuitBreakerError
        self._name = name or breaker.name or "pybreaker"

    @property
    def name(self) -> str:
        """The policy's name (the breaker's name unless overridden)."""
        return self._name

    @property
    def breaker(self) -> Any:
        """The wrapped ``pybreaker.CircuitBreaker``."""
        return self._breaker

    def _rejection(self, exc: BaseException) -> CircuitOpenError:
        breaker = self._breaker
        retry_after = 0.0
        opened_at = breaker._state_storage.opened_at
        if opened_at is not None:
            deadline = opened_at + _dt.timedelta(seconds=breaker.reset_timeout)
            retry_after = max((deadline - _dt.datetime.now(_UTC)).total_seconds(), 0.0)
        error = CircuitOpenError(self._name, breaker.current_state, retry_after)
        error.__cause__ = exc
        return error

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return self._breaker.call(fn, *args, **kwargs)
        except self._error as exc:
            raise self._rejection(exc) from exc

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        context = self._breaker.calling()
        try:
            context.__enter__()
        except self._error as exc:
            raise self._rejection(exc) from exc
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            try:
                context.__exit__(type(exc), exc, exc.__traceback__)
            except self._error as tripped:
                raise self._rejection(tripped) from exc
            raise
        context.__exit__(None, None, None)
        return result


def as_policy(breaker: Any, name: str | None = None) -> PybreakerPolicy:
    """Adapt an existing ``pybreaker.CircuitBreaker`` into a pipeline stage."""
    return PybreakerPolicy(breaker, name)
