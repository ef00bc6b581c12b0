"""The I/O-free heart of idempotency, shared by the sync and async decorators and the middleware.

Everything here is pure: building namespaced keys, fingerprinting payloads,
encoding results and final errors into the stored payload and back, and
turning a store's claim outcome into the next step (run, replay, raise, wait).
The drivers in `_decorator` and `_middleware` only do the I/O these steps ask for.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring as _quote
from json.scanner import make_scanner
from typing import Any, Protocol, cast, runtime_checkable

from resilience._errors import (
    ConfigurationError,
    IdempotencyError,
    IdempotencyInProgressError,
    IdempotencyKeyMismatchError,
    IdempotencyPayloadTooLargeError,
    IdempotencyRecordError,
    IdempotentReplayedError,
)

from ._store import Claimed, ClaimOutcome, Completed, InProgress, Mismatch

__all__ = [
    "UNREADABLE",
    "JsonSerializer",
    "Raise",
    "Replay",
    "Run",
    "Serializer",
    "Wait",
    "canonical_json",
    "decide",
    "decode_payload",
    "encode_error",
    "encode_result",
    "field_labels",
    "fingerprint",
    "fingerprint_fields",
    "flat_fingerprint",
    "flat_fingerprinter",
    "is_plain",
    "json_result",
    "plain_json_result",
    "scoped_key",
]

_RESULT = "r"
_ERROR = "e"


# --------------------------------------------------------------------------- canonical form


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset):
        return sorted(value, key=canonical_json)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__qualname__} is not JSON-serialisable")


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), default=_default, ensure_ascii=False
)
_SCAN: Callable[[str, int], tuple[Any, int]] = make_scanner(cast("Any", json.JSONDecoder()))
_COMPACT = json.JSONEncoder(separators=(",", ":"), default=_default, ensure_ascii=False)


def _prebuilt(sort_keys: bool) -> Callable[[Any], str] | None:
    """CPython's C encoder built once (``JSONEncoder.encode`` builds one per call).

    It skips the circular-reference bookkeeping; a cycle then ends in
    `RecursionError`, and the caller retries with the standard encoder, which
    reports it as ``ValueError``. ``None`` where the C encoder does not exist.
    """
    try:
        from _json import make_encoder
    except ImportError:  # pragma: no cover - not CPython
        return None
    encoder = make_encoder(None, _default, _quote, None, ":", ",", sort_keys, False, True)

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    return encode


_FAST_COMPACT = _prebuilt(sort_keys=False)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text.

    Dataclasses become objects, dates ISO strings, decimals and UUIDs strings,
    sets sorted lists; anything else not JSON-native raises `TypeError`.
    """
    return _CANONICAL.encode(value)


def fingerprint(arguments: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of the arguments that define the request."""
    return hashlib.sha256(canonical_json(arguments).encode()).hexdigest()


def field_labels(names: Collection[str]) -> tuple[tuple[str, str], ...]:
    """``(name, '"name":')`` in canonical (sorted) order, for `fingerprint_fields`."""
    return tuple((name, _quote(name) + ":") for name in sorted(names))


def _json_bool(value: bool) -> str:
    return "true" if value else "false"


def _json_null(_value: None) -> str:
    return "null"


def _json_float(value: float) -> str:
    if value - value == 0:
        return float.__repr__(value)
    raise ValueError("not finite")  # NaN and infinities take the encoder's path


# Exact types only: subclasses (IntEnum, str subclasses…) take the encoder's path.
_SCALARS: dict[type, Callable[[Any], str]] = {
    str: _quote,
    int: repr,  # the builtin: half the cost of calling the slot wrapper int.__repr__
    bool: _json_bool,
    type(None): _json_null,
    float: _json_float,
}

Plan = tuple[tuple[Any, str], ...]


@functools.lru_cache(maxsize=512)
def flat_fingerprinter(plan: Plan) -> Callable[[Any], str | None]:
    """A function computing `fingerprint` without the JSON encoder, or None when it cannot.

    *plan* pairs, in canonical (sorted-name) order, where to find each field in
    the values (a name in a mapping, an index in a tuple) with its JSON label.
    Flat fields of plain types (str, int, bool, None, finite float) are written
    straight into canonical JSON, byte for byte what `canonical_json` writes, so
    stored fingerprints stay valid. Anything else, or a field not found, is None.

    The function is generated for the plan (one statement per field, the labels
    baked into a ``%`` template): a generic loop over the plan cost as much as
    the sha256 itself on the replay path.
    """
    template = "{" + ",".join(label.replace("%", "%%") + "%s" for _, label in plan) + "}"
    reads = "".join(
        f"        v{i} = _S[type(values[{where!r}])](values[{where!r}])\n"
        for i, (where, _) in enumerate(plan)
    )
    names = "".join(f"v{i}, " for i in range(len(plan)))
    source = (
        "def flat(values):\n"
        "    try:\n"
        f"{reads or '        pass' + chr(10)}"
        "    except (KeyError, IndexError, ValueError):\n"
        "        return None\n"
        f"    return _sha((_T % ({names})).encode()).hexdigest()\n"
    )
    namespace: dict[str, Any] = {"_S": _SCALARS, "_sha": hashlib.sha256, "_T": template}
    exec(source, namespace)  # noqa: S102 - our own source; values enter only as repr() literals
    return cast("Callable[[Any], str | None]", namespace["flat"])


def flat_fingerprint(values: Any, plan: Plan) -> str | None:
    """``flat_fingerprinter(plan)(values)``."""
    return flat_fingerprinter(plan)(values)


def fingerprint_fields(bound: Mapping[str, Any], labels: tuple[tuple[str, str], ...]) -> str:
    """`fingerprint` of the *labels* fields of *bound* (those present), fast when flat."""
    fast = flat_fingerprint(bound, labels)
    if fast is not None:
        return fast
    return fingerprint({name: bound[name] for name, _ in labels if name in bound})


def scoped_key(namespace: str, scope: str, key: str) -> str:
    """The store key: namespace, scope and the caller's key, unambiguously joined.

    Lengths are prefixed so ``("a|b", "c")`` and ``("a", "b|c")`` never collide.
    """
    return f"{len(namespace)}:{namespace}|{len(scope)}:{scope}|{key}"


# --------------------------------------------------------------------------- serialisation


@runtime_checkable
class Serializer(Protocol):
    """Turns results into text for the store and back.

    ``result_type`` is the function's declared return type (or the decorator's
    ``result_type=``) when known, so typed results round-trip.
    """

    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str, result_type: Any) -> Any: ...


class JsonSerializer:
    """The default: JSON, with dataclasses rebuilt when ``result_type`` is one.

    A ``list[SomeDataclass]`` return annotation rebuilds each element too.
    """

    __slots__ = ()

    def dumps(self, value: Any) -> str:
        if _FAST_COMPACT is not None:
            try:
                return _FAST_COMPACT(value)
            except RecursionError:
                pass  # a cycle, or very deep nesting: let the standard encoder say which
        return _COMPACT.encode(value)

    def loads(self, text: str, result_type: Any) -> Any:
        # The scanner alone (no whitespace regexes): our payloads are compact.
        # Anything it does not consume whole goes through json.loads for the error.
        try:
            value, end = _SCAN(text, 0)
        except (StopIteration, ValueError):
            end = -1
        if end != len(text):
            value = json.loads(text)
        return _rebuild(value, result_type)

    def __repr__(self) -> str:
        return "JsonSerializer()"


_PLAIN_TYPES: dict[Any, bool] = {}


def _is_plain(result_type: Any) -> bool:
    """Whether values of *result_type* come back from JSON as they are (no dataclass inside)."""
    if result_type is None:
        return True
    if isinstance(result_type, type) and dataclasses.is_dataclass(result_type):
        return False
    return all(_is_plain(arg) for arg in getattr(result_type, "__args__", ()) if arg is not ...)


def is_plain(result_type: Any) -> bool:
    """Whether JSON values of *result_type* need no rebuilding (cached per type)."""
    try:
        plain = _PLAIN_TYPES[result_type]
    except KeyError:
        plain = _PLAIN_TYPES[result_type] = _is_plain(result_type)
    except TypeError:  # an unhashable annotation: decide every time
        plain = _is_plain(result_type)
    return plain


def _rebuild(value: Any, result_type: Any) -> Any:
    if is_plain(result_type):
        return value
    return _rebuild_typed(value, result_type)


def _rebuild_typed(value: Any, result_type: Any) -> Any:
    if result_type is None:
        return value
    if isinstance(result_type, type) and dataclasses.is_dataclass(result_type):
        if not isinstance(value, dict):
            raise ValueError(f"expected an object for {result_type.__qualname__}")
        return result_type(**value)
    origin = getattr(result_type, "__origin__", None)
    type_args: tuple[Any, ...] = tuple(getattr(result_type, "__args__", ()))
    if origin is list and len(type_args) == 1 and isinstance(value, list):
        return [_rebuild_typed(item, type_args[0]) for item in value]
    return value


def encode_result(serializer: Serializer, value: Any) -> str:
    """The stored payload of a successful call."""
    return _RESULT + serializer.dumps(value)


UNREADABLE = object()


def json_result(payload: str, result_type: Any) -> Any:
    """The value of a stored ``r<json>`` payload, read in place; `UNREADABLE` if it is not clean.

    The replay fast path of the default serializer: no slicing, no whitespace
    scan. Anything unusual returns `UNREADABLE` and goes through
    `decode_payload`, which reports it properly.
    """
    try:
        value, end = _SCAN(payload, 1)
    except (StopIteration, ValueError):  # JSONDecodeError is a ValueError
        return UNREADABLE
    if end != len(payload):
        return UNREADABLE
    try:
        return _rebuild(value, result_type)
    except (TypeError, ValueError):
        return UNREADABLE


def plain_json_result(payload: str) -> Any:
    """`json_result` for a result type that needs no rebuilding: the scanner alone."""
    try:
        value, end = _SCAN(payload, 1)
    except (StopIteration, ValueError):
        return UNREADABLE
    return value if end == len(payload) else UNREADABLE


def _error_name(cls: type[BaseException]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def encode_error(error: BaseException) -> str:
    """The stored payload of a final error: its type name, message and JSON-able args."""
    args: list[Any] = []
    for arg in error.args:
        try:
            canonical_json(arg)
            args.append(arg)
        except (TypeError, ValueError):
            args.append(repr(arg))
    body = {"type": _error_name(type(error)), "message": str(error), "args": args}
    if isinstance(error, IdempotencyError):
        body["args"] = [str(error)]
    return _ERROR + json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def decode_payload(
    key: str,
    payload: str,
    serializer: Serializer,
    result_type: Any,
    error_types: tuple[type[BaseException], ...],
) -> tuple[bool, Any]:
    """``(True, value)`` for a stored result, ``(False, exception)`` for a stored error.

    A stored error is rebuilt as its own class only when that class is one of
    *error_types* (the decorator's ``final_errors`` types) and accepts its
    stored args; otherwise it becomes `IdempotentReplayedError`. Nothing is
    ever imported by name from the store: a tampered record cannot run code.
    """
    kind, text = payload[:1], payload[1:]
    try:
        if kind == _RESULT:
            return True, serializer.loads(text, result_type)
        if kind == _ERROR:
            body = json.loads(text)
            type_name, message, args = body["type"], body["message"], body["args"]
            if not (
                isinstance(type_name, str) and isinstance(message, str) and isinstance(args, list)
            ):
                raise TypeError("bad error record")
            return False, _rebuild_error(key, type_name, message, tuple(args), error_types)
    except IdempotencyError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise IdempotencyRecordError(
            key, f"stored record for idempotency key {key!r} is unreadable: {exc}"
        ) from exc
    raise IdempotencyRecordError(
        key, f"stored record for idempotency key {key!r} has unknown kind {kind!r}"
    )


def _rebuild_error(
    key: str,
    type_name: str,
    message: str,
    args: tuple[Any, ...],
    error_types: tuple[type[BaseException], ...],
) -> BaseException:
    if type_name == _error_name(IdempotencyPayloadTooLargeError):
        return IdempotencyPayloadTooLargeError(key, message)
    if type_name == _error_name(IdempotencyError):
        return IdempotencyError(key, message)
    for cls in error_types:
        if _error_name(cls) == type_name:
            try:
                error = cls(*args)
            except Exception:  # the class wants other arguments: replay generically
                break
            error.add_note(f"replayed from idempotency key {key!r}")
            return error
    return IdempotentReplayedError(key, type_name, message, args)


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Run:
    """This caller owns the key: run the function (resuming from ``checkpoints``)."""

    token: str
    checkpoints: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Replay:
    """Return the stored value without running."""

    value: Any


@dataclass(frozen=True, slots=True)
class Raise:
    """Raise ``error`` without running (mismatch, in-progress, replayed final error)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep ``delay`` seconds, then claim again."""

    delay: float


Step = Run | Replay | Raise | Wait


def decide(
    outcome: ClaimOutcome,
    *,
    key: str,
    now: float,
    deadline: float | None,
    poll_interval: float,
    decode: Callable[[str], tuple[bool, Any]],
) -> Step:
    """What the caller does next after a claim, given the clock and its wait deadline."""
    if isinstance(outcome, Claimed):
        return Run(outcome.token, outcome.checkpoints)
    if isinstance(outcome, Completed):
        ok, value = decode(outcome.payload)
        return Replay(value) if ok else Raise(value)
    if isinstance(outcome, Mismatch):
        return Raise(IdempotencyKeyMismatchError(key))
    if isinstance(outcome, InProgress):
        if deadline is None or now >= deadline:
            return Raise(IdempotencyInProgressError(key, outcome.retry_after))
        return Wait(max(0.0, min(poll_interval, outcome.retry_after, deadline - now)))
    raise IdempotencyRecordError(key, f"store returned an unknown outcome {outcome!r}")


def result_payload(serializer: Serializer, key: str, value: Any, max_bytes: int | None) -> str:
    """The payload to store for a successful call.

    The side effect has already happened, so a result that cannot be stored
    (not serialisable, or over *max_bytes*) is replaced by a stored error that
    every retry replays, rather than releasing the key for a second run.
    """
    try:
        payload = encode_result(serializer, value)
    except (TypeError, ValueError) as exc:
        return encode_error(
            IdempotencyError(
                key,
                f"result of idempotency key {key!r} could not be serialised ({exc}); "
                "the call ran and this error is stored in its place",
            )
        )
    return check_size(key, payload, max_bytes)


def check_size(key: str, payload: str, max_bytes: int | None) -> str:
    """The payload, or the encoded `IdempotencyPayloadTooLargeError` replacing it."""
    if max_bytes is None or len(payload) * 4 <= max_bytes:  # fast path: UTF-8 is ≤ 4 bytes/char
        return payload
    size = len(payload.encode())
    if size <= max_bytes:
        return payload
    return encode_error(
        IdempotencyPayloadTooLargeError(
            key,
            f"result of idempotency key {key!r} is {size} bytes, over max_result_bytes={max_bytes}; "
            "the call ran and this error is stored in its place",
        )
    )


def positive(field: str, value: float | None, *, allow_none: bool = False) -> None:
    """Validate a positive duration or size option (raising `ConfigurationError`)."""
    if value is None:
        if allow_none:
            return
        raise ConfigurationError(field, "is required")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(field, f"must be a positive number, got {value!r}")
