"""``@idempotent``: run at most once per key, replay the outcome afterwards."""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import json
import os
import time
import typing
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

from resilience._clock import SYSTEM_CLOCK, Clock
from resilience._errors import (
    ConfigurationError,
    IdempotencyError,
    IdempotencyLeaseLostError,
    IdempotencyRecordError,
)

from . import _core
from ._core import JsonSerializer, Raise, Replay, Serializer, Wait
from ._heartbeat import AsyncLease, Lease, start_lease
from ._store import (
    AsyncIdempotencyStore,
    Claimed,
    Completed,
    IdempotencyStore,
    as_async_store,
)

__all__ = [
    "IdempotencyContext",
    "IdempotencyOptions",
    "Idempotent",
    "current_idempotency",
    "idempotent",
]

P = ParamSpec("P")
R = TypeVar("R")

KeyFunc = Callable[..., object]
Scope = Callable[[], str] | contextvars.ContextVar[str]
FinalErrors = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)

_current: contextvars.ContextVar[IdempotencyContext | None] = contextvars.ContextVar(
    "resilience_idempotency", default=None
)
_CALL_KEY = "idempotency_key"
_NO_KEY = object()


@dataclass(frozen=True, slots=True)
class IdempotencyOptions:
    """Timing and size limits, validated at construction.

    Attributes:
        ttl: seconds a stored outcome is replayed before the key may run again.
        in_progress_ttl: the lease: seconds a claim holds without a heartbeat.
            A crashed caller blocks its key this long; a live one renews it.
        wait: seconds a duplicate waits for the first call's outcome instead of
            failing at once with `IdempotencyInProgressError` (``None``: don't wait).
        poll_interval: how often a waiting duplicate asks again.
        max_result_bytes: larger results are not stored; the call's side effect
            still happened, so `IdempotencyPayloadTooLargeError` is stored instead
            and replayed (never re-run). ``None``: no limit of ours.
        heartbeat: renew the lease every ``in_progress_ttl / 3`` while running.
    """

    ttl: float = 86_400.0
    in_progress_ttl: float = 60.0
    wait: float | None = None
    poll_interval: float = 0.1
    max_result_bytes: int | None = 1_000_000
    heartbeat: bool = True

    def __post_init__(self) -> None:
        _core.positive("ttl", self.ttl)
        _core.positive("in_progress_ttl", self.in_progress_ttl)
        _core.positive("wait", self.wait, allow_none=True)
        _core.positive("poll_interval", self.poll_interval)
        _core.positive("max_result_bytes", self.max_result_bytes, allow_none=True)
        if self.in_progress_ttl > self.ttl:
            raise ConfigurationError("in_progress_ttl", "must not exceed ttl")


class IdempotencyContext:
    """The running call's handle on its idempotency record (see `current_idempotency`).

    ``checkpoint`` records a recovery point fenced by this call's owner token;
    after a crash, the next attempt sees every recorded point through ``get``
    and ``resumed``, and skips the steps already done. ``via=`` writes through
    another view of the store, e.g. ``sql_store.in_session(session)`` so the
    checkpoint or the completion commits with the business transaction.

    ``lease_lost`` / ``ensure_lease()`` tell a long call that its claim may be
    gone (another caller may be running the same key), so it can stop before
    its next side effect.
    """

    __slots__ = (
        "_astore",
        "_checkpoints",
        "_serializer",
        "_store",
        "_ttl",
        "completed",
        "key",
        "lease",
        "token",
        "valid_until",
    )

    def __init__(  # noqa: PLR0917 - built only by the drivers
        self,
        key: str,
        token: str,
        checkpoints: Mapping[str, str],
        store: IdempotencyStore | None,
        astore: AsyncIdempotencyStore | None,
        serializer: Serializer,
        ttl: float,
        valid_until: float,
    ) -> None:
        self.key = key
        self.token = token
        self.valid_until = valid_until  # without a heartbeat: when the claim's lease surely ends
        self.lease: Lease | AsyncLease | None = None
        self._checkpoints = dict(checkpoints)
        self._store = store
        self._astore = astore
        self._serializer = serializer
        self._ttl = ttl
        self.completed = False

    @property
    def lease_lost(self) -> bool:
        """True once this call can no longer be sure it still owns its key.

        That is when the store refused a heartbeat (another caller took the key
        over), or when no claim or renewal has been confirmed for a whole lease
        (``in_progress_ttl``, counted from when the request was sent, so it errs
        early). Long calls check it before each side effect; stores fence the
        writes of a stale owner either way.
        """
        lease = self.lease
        if lease is not None:
            return not lease.holds
        return time.monotonic() >= self.valid_until

    def ensure_lease(self) -> None:
        """Raise `IdempotencyLeaseLostError` when `lease_lost`: call it before a side effect."""
        if self.lease_lost:
            raise IdempotencyLeaseLostError(self.key)

    @property
    def resumed(self) -> bool:
        """True when an earlier attempt left recovery points behind."""
        return bool(self._checkpoints)

    @property
    def checkpoints(self) -> frozenset[str]:
        """Names of the recovery points recorded so far."""
        return frozenset(self._checkpoints)

    def get(self, name: str, default: Any = None) -> Any:
        """The data stored with checkpoint *name*, or *default* if it was never reached."""
        if name not in self._checkpoints:
            return default
        try:
            return json.loads(self._checkpoints[name])
        except ValueError as exc:
            raise IdempotencyRecordError(
                self.key, f"checkpoint {name!r} of idempotency key {self.key!r} is unreadable"
            ) from exc

    def __contains__(self, name: object) -> bool:
        return name in self._checkpoints

    def _encode(self, name: str, data: Any) -> str:
        if not isinstance(name, str) or not name:
            raise IdempotencyError(self.key, "checkpoint names must be non-empty strings")
        return _core.canonical_json(data)

    def _sync_store(self, via: IdempotencyStore | None) -> IdempotencyStore:
        store = via or self._store
        if store is None:
            raise IdempotencyError(self.key, "this store is async: use acheckpoint/acomplete")
        return store

    def checkpoint(
        self, name: str, data: Any = None, *, via: IdempotencyStore | None = None
    ) -> None:
        """Record that step *name* is done, with JSON-able *data* (one round trip)."""
        text = self._encode(name, data)
        self._sync_store(via).checkpoint(self.key, self.token, name, text)
        self._checkpoints[name] = text

    async def acheckpoint(
        self, name: str, data: Any = None, *, via: AsyncIdempotencyStore | None = None
    ) -> None:
        """Async `checkpoint`."""
        text = self._encode(name, data)
        store = via or self._astore or as_async_store(self._sync_store(None))
        await store.acheckpoint(self.key, self.token, name, text)
        self._checkpoints[name] = text

    def complete(self, result: Any, *, via: IdempotencyStore | None = None) -> None:
        """Store *result* now (e.g. inside the business transaction) instead of on return.

        The function should then return the same value; the decorator will not
        write again.
        """
        self._sync_store(via).complete(
            self.key, self.token, _core.encode_result(self._serializer, result), self._ttl
        )
        self.completed = True

    async def acomplete(self, result: Any, *, via: AsyncIdempotencyStore | None = None) -> None:
        """Async `complete`."""
        store = via or self._astore or as_async_store(self._sync_store(None))
        await store.acomplete(
            self.key, self.token, _core.encode_result(self._serializer, result), self._ttl
        )
        self.completed = True

    def __repr__(self) -> str:
        return f"IdempotencyContext(key={self.key!r}, checkpoints={sorted(self._checkpoints)})"


def current_idempotency() -> IdempotencyContext:
    """The context of the `@idempotent` call running in this task or thread.

    Raises `IdempotencyError` when called outside one, so a step that needs a
    recovery point can never silently run unprotected.
    """
    ctx = _current.get()
    if ctx is None:
        raise IdempotencyError("", "current_idempotency() called outside an @idempotent call")
    return ctx


class _Tokens:
    """Owner tokens: a random per-process prefix and a counter (unique, and cheap per call).

    A fresh prefix after ``fork()`` keeps children from reusing the parent's tokens.
    """

    __slots__ = ("next", "prefix")

    def __init__(self) -> None:
        self.prefix = os.urandom(12).hex()
        self.next = itertools.count().__next__


_TOKENS = _Tokens()


def _token() -> str:
    tokens = _TOKENS
    return tokens.prefix + hex(tokens.next())


def _after_fork_in_child() -> None:
    global _TOKENS  # noqa: PLW0603 - the process-wide generator is replaced on purpose
    _TOKENS = _Tokens()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Binder:
    """Maps a call's arguments to ``{parameter: value}`` without `inspect.Signature.bind` on the hot path."""

    __slots__ = ("_defaults", "_names", "_signature", "_simple", "full")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._signature = inspect.signature(fn)
        params = list(self._signature.parameters.values())
        self._simple = all(
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY) for p in params
        )
        self._names = tuple(p.name for p in params if p.kind != p.KEYWORD_ONLY)
        self._defaults = tuple((p.name, p.default) for p in params if p.default is not p.empty)
        # Every parameter can be passed by position: a call passing them all so needs no defaults.
        self.full = len(self._names) if self._simple and len(self._names) == len(params) else -1

    @property
    def parameters(self) -> Collection[str]:
        return self._signature.parameters.keys()

    @property
    def names(self) -> tuple[str, ...]:
        """Parameters that can be passed by position, in order."""
        return self._names

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if not kwargs and len(args) == self.full:
            return dict(zip(self._names, args, strict=True))
        if self._simple and len(args) <= len(self._names):
            bound = dict(zip(self._names, args, strict=False))
            bound.update(kwargs)
            for name, default in self._defaults:
                if name not in bound:
                    bound[name] = default
            return bound
        ba = self._signature.bind(*args, **kwargs)
        ba.apply_defaults()
        return dict(ba.arguments)


class Idempotent:
    """The configured decorator returned by `idempotent` (reusable on many functions)."""

    __slots__ = (
        "_exclude",
        "_final",
        "_final_types",
        "_include",
        "_key",
        "_namespace",
        "_result_type",
        "_scope",
        "_serializer",
        "clock",
        "options",
        "store",
    )

    def __init__(
        self,
        store: IdempotencyStore | AsyncIdempotencyStore,
        *,
        key: str | KeyFunc | None,
        namespace: str | None,
        scope: Scope | None,
        include: Collection[str] | None,
        exclude: Collection[str],
        final_errors: FinalErrors,
        serializer: Serializer,
        result_type: Any,
        options: IdempotencyOptions,
        clock: Clock,
    ) -> None:
        if not isinstance(store, IdempotencyStore | AsyncIdempotencyStore):
            raise ConfigurationError("store", f"{store!r} is not an idempotency store")
        if key is not None and not (isinstance(key, str) and key) and not callable(key):
            raise ConfigurationError("key", "must be an argument name, a callable or None")
        if include is not None and isinstance(include, str):
            raise ConfigurationError("include", "must be a collection of names, not a string")
        if isinstance(exclude, str):
            raise ConfigurationError("exclude", "must be a collection of names, not a string")
        if scope is not None and not (isinstance(scope, contextvars.ContextVar) or callable(scope)):
            raise ConfigurationError("scope", "must be a callable returning str or a ContextVar")
        if not isinstance(serializer, Serializer):
            raise ConfigurationError("serializer", "must have dumps(value) and loads(text, type)")
        self.store = store
        self._key = key
        self._namespace = namespace
        self._scope = scope
        self._include = None if include is None else frozenset(include)
        self._exclude = frozenset(exclude)
        if isinstance(final_errors, type):
            final_errors = (final_errors,)
        if isinstance(final_errors, tuple):
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in final_errors):
                raise ConfigurationError("final_errors", "must hold exception classes")
            types = final_errors
            self._final_types = types
            self._final: Callable[[BaseException], bool] = lambda exc: isinstance(exc, types)
        elif callable(final_errors):
            self._final_types = ()
            self._final = final_errors
        else:
            raise ConfigurationError("final_errors", "must be exception types or a predicate")
        self._serializer = serializer
        self._result_type = result_type
        self.options = options
        self.clock = clock

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        call = _Call(self, fn)
        if inspect.iscoroutinefunction(fn):
            arun = call.arun

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await arun(args, kwargs)

            return cast("Callable[P, R]", async_wrapper)

        run = call.run

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run(args, kwargs)

        return cast("Callable[P, R]", wrapper)


class _Call:
    """One decorated function: the precomputed parts plus the sync and async drivers."""

    __slots__ = (
        "_astore",
        "_binder",
        "_fast_arity",
        "_fields",
        "_flat_args",
        "_flat_bound",
        "_fn",
        "_key_arg",
        "_key_from_call",
        "_key_index",
        "_key_prefix",
        "_labels",
        "_namespace",
        "_plain_json",
        "_result_type",
        "_spec",
        "_sync_store",
    )

    def __init__(self, spec: Idempotent, fn: Callable[..., Any]) -> None:
        self._spec = spec
        self._fn = fn
        self._binder = _Binder(fn)
        params = self._binder.parameters
        self._key_from_call = _CALL_KEY not in params
        key = spec._key
        if isinstance(key, str) and key not in params:
            raise ConfigurationError("key", f"{fn.__qualname__} has no parameter {key!r}")
        if spec._include is not None:
            unknown = spec._include - set(params)
            if unknown:
                raise ConfigurationError("include", f"unknown parameters {sorted(unknown)}")
            self._fields: frozenset[str] = spec._include - spec._exclude
        else:
            self._fields = frozenset(params) - spec._exclude - {"self", "cls"}
        self._namespace = spec._namespace or f"{fn.__module__}.{fn.__qualname__}"
        # Precomputed per function, so a call only joins strings: the store key
        # without a scope, the key's argument name, and the fingerprint's labels.
        self._key_prefix = _core.scoped_key(self._namespace, "", "")
        self._key_arg = key if isinstance(key, str) else None
        self._labels = _core.field_labels(self._fields)
        position = {name: i for i, name in enumerate(self._binder.names)}
        nowhere = 1 << 30  # an index no call reaches: the fast path steps aside
        arg_plan = tuple((position.get(name, nowhere), label) for name, label in self._labels)
        self._flat_args = _core.flat_fingerprinter(arg_plan)
        self._flat_bound = _core.flat_fingerprinter(self._labels)
        self._key_index = position.get(key, nowhere) if isinstance(key, str) else nowhere
        # The common call: every argument by position, the key among them, no scope.
        simple = self._key_index != nowhere and spec._scope is None
        self._fast_arity = self._binder.full if simple else -1
        self._result_type = spec._result_type
        self._plain_json: bool | None = None  # replays need only the JSON scanner (known later)
        store = spec.store
        sync_ok = isinstance(store, IdempotencyStore) and getattr(store, "sync_capable", True)
        self._sync_store = cast("IdempotencyStore", store) if sync_ok else None
        self._astore = as_async_store(spec.store)

    # ------------------------------------------------------------------ pure parts

    def _result_type_of(self) -> Any:
        if self._result_type is None:
            try:
                hint = typing.get_type_hints(self._fn).get("return")
            except Exception:  # unresolvable forward references: replay plain JSON
                hint = None
            self._result_type = hint if hint is not None else type(None)
        return None if self._result_type is type(None) else self._result_type

    def _decoder(self, key: str) -> Callable[[str], tuple[bool, Any]]:
        def decode(payload: str) -> tuple[bool, Any]:
            return _core.decode_payload(
                key,
                payload,
                self._spec._serializer,
                self._result_type_of(),
                self._spec._final_types,
            )

        return decode

    def _prepare(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str, str]:
        """``(store key, fingerprint, the caller's key)``; errors name the caller's key."""
        if not kwargs and len(args) == self._fast_arity:
            raw_key = args[self._key_index]
            if type(raw_key) is str and raw_key:
                flat = self._flat_args(args)
                if flat is not None:
                    return self._key_prefix + raw_key, flat, raw_key
        call_key = kwargs.pop(_CALL_KEY, _NO_KEY) if self._key_from_call else _NO_KEY
        # Every parameter passed by position: read fields and key straight from args.
        positional = not kwargs and len(args) == self._binder.full
        bound = None if positional else self._binder.bind(args, kwargs)
        spec = self._spec
        if call_key is not _NO_KEY:
            raw: object = call_key
        elif self._key_arg is not None:
            raw = args[self._key_index] if bound is None else bound[self._key_arg]
        elif spec._key is not None:
            raw = cast("KeyFunc", spec._key)(*args, **kwargs)
        else:
            raise IdempotencyError(
                "", f"{self._fn.__qualname__} needs an idempotency key: pass idempotency_key=..."
            )
        shown = raw if type(raw) is str else str(raw)
        if raw is None or not shown:
            raise IdempotencyError("", f"empty idempotency key for {self._fn.__qualname__}")
        scope = spec._scope
        if scope is None:
            key = self._key_prefix + shown
        else:
            if isinstance(scope, contextvars.ContextVar):
                try:
                    scope_value = scope.get()
                except LookupError:
                    raise IdempotencyError(
                        shown, f"idempotency scope {scope.name!r} is not set"
                    ) from None
            else:
                scope_value = scope()
            key = _core.scoped_key(self._namespace, str(scope_value), shown)
        try:
            fp = self._flat_args(args) if bound is None else self._flat_bound(bound)
            if fp is None:
                if bound is None:
                    bound = self._binder.bind(args, kwargs)
                fp = _core.fingerprint_fields(bound, self._labels)
        except (TypeError, ValueError) as exc:
            raise IdempotencyError(
                shown, f"cannot fingerprint the arguments of {self._fn.__qualname__}: {exc}"
            ) from exc
        return key, fp, shown

    def _replayed(self, shown: str, payload: str) -> Any:
        if self._plain_json and payload[:1] == "r":  # the default: the JSON scanner alone
            value = _core.plain_json_result(payload)
            if value is not _core.UNREADABLE:
                return value
        return self._replayed_in_general(shown, payload)

    def _replayed_in_general(self, shown: str, payload: str) -> Any:
        if self._plain_json is None:
            self._plain_json = type(self._spec._serializer) is JsonSerializer and (
                _core.is_plain(self._result_type_of())
            )
        if payload[:1] == "r" and type(self._spec._serializer) is JsonSerializer:
            value = _core.json_result(payload, self._result_type_of())
            if value is not _core.UNREADABLE:
                return value
        ok, value = _core.decode_payload(
            shown, payload, self._spec._serializer, self._result_type_of(), self._spec._final_types
        )
        if ok:
            return value
        raise value

    def _outcome_payload(self, key: str, result: Any) -> str:
        return _core.result_payload(
            self._spec._serializer, key, result, self._spec.options.max_result_bytes
        )

    # ------------------------------------------------------------------ blocking driver

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        store = self._sync_store
        if store is None:
            raise IdempotencyError("", "this store is async-only: decorate an async function")
        spec = self._spec
        opts = spec.options
        key, fp, shown = self._prepare(args, kwargs)
        sent = time.monotonic()
        outcome = store.claim(key, fp, _token(), opts.in_progress_ttl, opts.ttl)
        # The two common outcomes skip the general decision loop below.
        if type(outcome) is Completed:
            return self._replayed(shown, outcome.payload)
        if type(outcome) is Claimed:
            return self._run_owned(store, key, shown, outcome, sent, args, kwargs)
        deadline = None if opts.wait is None else spec.clock.monotonic() + opts.wait
        decode = self._decoder(shown)
        while True:
            step = _core.decide(
                outcome,
                key=shown,
                now=spec.clock.monotonic() if deadline is not None else 0.0,
                deadline=deadline,
                poll_interval=opts.poll_interval,
                decode=decode,
            )
            if isinstance(step, Wait):
                spec.clock.sleep(step.delay)
                sent = time.monotonic()
                outcome = store.claim(key, fp, _token(), opts.in_progress_ttl, opts.ttl)
                continue
            break
        if isinstance(step, Replay):
            return step.value
        if isinstance(step, Raise):
            raise step.error
        return self._run_owned(store, key, shown, step, sent, args, kwargs)

    def _context(
        self,
        key: str,
        owned: Claimed | _core.Run,
        store: IdempotencyStore | None,
        async_store: AsyncIdempotencyStore | None,
        sent: float,
    ) -> IdempotencyContext:
        """The context a running call sees; its lease is judged from *sent* (the claim's send)."""
        opts = self._spec.options
        return IdempotencyContext(
            key,
            owned.token,
            owned.checkpoints,
            store,
            async_store,
            self._spec._serializer,
            opts.ttl,
            sent + opts.in_progress_ttl,
        )

    def _run_owned(  # noqa: PLR0917 - private, called from two places
        self,
        store: IdempotencyStore,
        key: str,
        shown: str,
        claim: Claimed | _core.Run,
        sent: float,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        opts = self._spec.options
        token = claim.token
        ctx = self._context(key, claim, store, None, sent)
        reset = _current.set(ctx)
        lease: Lease | None = None
        if opts.heartbeat:
            lease = ctx.lease = start_lease(
                lambda: store.renew(key, token, opts.in_progress_ttl),
                opts.in_progress_ttl / 3,
                opts.in_progress_ttl,
                sent,
            )
        try:
            result = self._fn(*args, **kwargs)
        except BaseException as exc:
            if lease is not None:
                lease.stop()
            # Even after ctx.complete(): its transaction may have rolled back. If it did
            # commit, the store refuses this (the key is done) and we only add a note.
            self._settle_failure(exc, store.complete, store.release, key, token)
            raise
        finally:
            _current.reset(reset)
        if lease is not None:
            lease.stop()
        if not ctx.completed:
            payload = self._outcome_payload(shown, result)
            store.complete(key, token, payload, opts.ttl)
            if payload[:1] == "e":
                raise self._decoder(shown)(payload)[1]
        return result

    def _settle_failure(
        self,
        exc: BaseException,
        complete: Callable[[str, str, str, float], None],
        release: Callable[[str, str], None],
        key: str,
        token: str,
    ) -> None:
        try:
            if isinstance(exc, Exception) and self._spec._final(exc):
                complete(key, token, _core.encode_error(exc), self._spec.options.ttl)
            else:
                release(key, token)
        except Exception as store_error:  # keep the function's own error in front
            exc.add_note(f"resilience: could not settle idempotency key {key!r}: {store_error!r}")

    # ------------------------------------------------------------------ async driver

    async def arun(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        spec = self._spec
        opts = spec.options
        store = self._astore
        key, fp, shown = self._prepare(args, kwargs)
        sent = time.monotonic()
        outcome = await store.aclaim(key, fp, _token(), opts.in_progress_ttl, opts.ttl)
        if type(outcome) is Completed:
            return self._replayed(shown, outcome.payload)
        deadline = None if opts.wait is None else spec.clock.monotonic() + opts.wait
        decode = self._decoder(shown)
        while True:
            step = _core.decide(
                outcome,
                key=shown,
                now=spec.clock.monotonic() if deadline is not None else 0.0,
                deadline=deadline,
                poll_interval=opts.poll_interval,
                decode=decode,
            )
            if isinstance(step, Wait):
                await spec.clock.asleep(step.delay)
                sent = time.monotonic()
                outcome = await store.aclaim(key, fp, _token(), opts.in_progress_ttl, opts.ttl)
                continue
            break
        if isinstance(step, Replay):
            return step.value
        if isinstance(step, Raise):
            raise step.error
        token = step.token
        ctx = self._context(key, step, self._sync_store, store, sent)
        reset = _current.set(ctx)
        lease: AsyncLease | None = None
        if opts.heartbeat:
            lease = ctx.lease = AsyncLease(
                lambda: store.arenew(key, token, opts.in_progress_ttl),
                opts.in_progress_ttl / 3,
                opts.in_progress_ttl,
                sent,
            )
        try:
            result = await cast("Callable[..., Awaitable[Any]]", self._fn)(*args, **kwargs)
        except BaseException as exc:
            if lease is not None:
                lease.stop()
            await self._asettle_failure(exc, store, key, token)
            raise
        finally:
            _current.reset(reset)
        if lease is not None:
            lease.stop()
        if not ctx.completed:
            payload = self._outcome_payload(shown, result)
            await store.acomplete(key, token, payload, opts.ttl)
            if payload[:1] == "e":
                raise decode(payload)[1]
        return result

    async def _asettle_failure(
        self, exc: BaseException, store: AsyncIdempotencyStore, key: str, token: str
    ) -> None:
        try:
            if isinstance(exc, Exception) and self._spec._final(exc):
                await store.acomplete(key, token, _core.encode_error(exc), self._spec.options.ttl)
            else:
                await store.arelease(key, token)
        except Exception as store_error:
            exc.add_note(f"resilience: could not settle idempotency key {key!r}: {store_error!r}")


def idempotent(
    store: IdempotencyStore | AsyncIdempotencyStore,
    *,
    key: str | KeyFunc | None = None,
    namespace: str | None = None,
    scope: Scope | None = None,
    include: Collection[str] | None = None,
    exclude: Collection[str] = (),
    final_errors: FinalErrors = (),
    serializer: Serializer | None = None,
    result_type: Any = None,
    ttl: float = 86_400.0,
    in_progress_ttl: float = 60.0,
    wait: float | None = None,
    poll_interval: float = 0.1,
    max_result_bytes: int | None = 1_000_000,
    heartbeat: bool = True,
    clock: Clock = SYSTEM_CLOCK,
) -> Idempotent:
    """Make a function (sync or async) run at most once per key and replay its outcome.

    The key comes from the argument named by ``key=``, from ``key(*args, **kwargs)``
    when it is a callable, or from ``idempotency_key=`` passed at call time (which
    wins). It is namespaced by ``namespace`` (default: the function's qualified
    name) and by ``scope`` (a callable or a ``ContextVar``, e.g. the tenant) so
    keys of different functions or tenants never meet.

    The payload fingerprint is the sha256 of the canonical JSON of the arguments
    (``include``/``exclude`` pick them; ``self``/``cls`` are left out). The same key
    with a different fingerprint raises `IdempotencyKeyMismatchError` without running.

    While the first call runs, duplicates raise `IdempotencyInProgressError` (or
    wait up to ``wait`` seconds). A failure releases the key for a retry unless
    ``final_errors`` (types or a predicate) says it is final: then it is stored
    and re-raised on every replay. See `IdempotencyOptions` for the rest.
    """
    return Idempotent(
        store,
        key=key,
        namespace=namespace,
        scope=scope,
        include=include,
        exclude=exclude,
        final_errors=final_errors,
        serializer=serializer or JsonSerializer(),
        result_type=result_type,
        options=IdempotencyOptions(
            ttl=ttl,
            in_progress_ttl=in_progress_ttl,
            wait=wait,
            poll_interval=poll_interval,
            max_result_bytes=max_result_bytes,
            heartbeat=heartbeat,
        ),
        clock=clock,
    )
