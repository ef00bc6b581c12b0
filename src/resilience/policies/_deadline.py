"""Deadline propagation: how long the *original* caller is still willing to wait.

A timeout is local ("this call may take 2 s"); a deadline is end-to-end ("the
user's request must be answered by 12:00:01.500"). Each hop should spend only
what is left, and a hop that receives an already expired deadline should refuse
the work instead of doing it for nobody. The deadline lives in a `ContextVar`,
so it follows the code through ``await`` and (via ``contextvars.copy_context``)
across thread hops, and `Timeout` and `Retry` read it without being told.

Wire formats, and why they differ:

* HTTP: ``Request-Timeout-Ms: 1500`` -- the milliseconds *left* when the request
  was sent. The receiver adds that to its own monotonic clock on arrival.
  Relative values are immune to clock skew between hosts (an absolute epoch
  value is off by however far the two wall clocks disagree), and what they miss
  (transit time) is small and makes the receiver err on the generous side.
* gRPC: the standard ``grpc-timeout`` metadata (``"1500m"``), relative for the
  same reason.
* Messages: ``deadline`` header holding absolute Unix epoch milliseconds. A
  message can sit in a queue for minutes; that time must count, and only an
  absolute time captures it. NTP keeps wall-clock skew to milliseconds, far
  below queueing delays.
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final

from resilience._clock import SYSTEM_CLOCK, Clock
from resilience._errors import ConfigurationError, DeadlineExceededError

if TYPE_CHECKING:
    from resilience.messaging import Message

__all__ = [
    "GRPC_TIMEOUT_METADATA",
    "HTTP_DEADLINE_HEADER",
    "MESSAGE_DEADLINE_HEADER",
    "Deadline",
    "check_deadline",
    "current_deadline",
    "deadline",
    "deadline_from_grpc_metadata",
    "deadline_from_http_headers",
    "deadline_from_message",
    "format_grpc_timeout",
    "grpc_deadline_metadata",
    "http_deadline_headers",
    "message_with_deadline",
    "parse_grpc_timeout",
    "remaining",
]

HTTP_DEADLINE_HEADER: Final = "Request-Timeout-Ms"
"""HTTP header carrying the milliseconds left (relative; see the module docs for why)."""

GRPC_TIMEOUT_METADATA: Final = "grpc-timeout"
"""The gRPC wire-protocol metadata key for the call timeout."""

MESSAGE_DEADLINE_HEADER: Final = "deadline"
"""`Message` header carrying the deadline as absolute Unix epoch milliseconds."""

_log = logging.getLogger("resilience.deadline")

_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "resilience_deadline", default=None
)


class Deadline:
    """A point in time (on a `Clock`) by which the current piece of work must be done.

    Get one from `current_deadline()`; create one with `deadline(seconds=...)`.
    """

    __slots__ = ("clock", "expires_at")

    def __init__(self, expires_at: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.expires_at = expires_at
        """The deadline as a ``clock.monotonic()`` value."""
        self.clock = clock

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires_at - self.clock.monotonic())

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self.clock.monotonic() >= self.expires_at

    def check(self) -> None:
        """Raise `DeadlineExceededError` if the deadline has passed."""
        left = self.expires_at - self.clock.monotonic()
        if left <= 0:
            raise DeadlineExceededError(
                0.0, f"deadline exceeded {-left:.3f}s ago; refusing to start work"
            )

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"


class deadline:  # lower-case: used like a function, `with deadline(seconds=2):`
    """Bound everything inside the block (sync or async) by *seconds* from now.

    Nested deadlines never extend an outer one: the earliest wins. Entering a
    block whose deadline has already passed raises `DeadlineExceededError`, so a
    handler refuses work whose caller has given up. ``seconds=None`` sets no new
    deadline (handy with the ``deadline_from_*`` helpers, which return None when
    the caller sent none) but still refuses to enter under an expired outer one.

    Use it as ``with deadline(seconds=2.0) as d:`` or ``async with ...``; ``d``
    is the effective `Deadline` (or None when there is none).
    """

    __slots__ = ("_clock", "_seconds", "_tokens")

    def __init__(self, seconds: float | None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or math.isnan(seconds)
        ):
            raise ConfigurationError("seconds", f"must be a number or None, got {seconds!r}")
        self._seconds = seconds
        self._clock = clock
        self._tokens: list[contextvars.Token[Deadline | None]] = []

    def __enter__(self) -> Deadline | None:
        outer = _current.get()
        effective = outer
        if self._seconds is not None:
            mine = Deadline(self._clock.monotonic() + self._seconds, self._clock)
            if outer is None or mine.remaining() < outer.remaining():
                effective = mine
        if effective is not None:
            effective.check()
        self._tokens.append(_current.set(effective))
        return effective

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._tokens.pop())

    async def __aenter__(self) -> Deadline | None:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def current_deadline() -> Deadline | None:
    """The deadline in effect for the running code, if any."""
    return _current.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (0.0 once passed), or None without one."""
    current = _current.get()
    return None if current is None else current.remaining()


def check_deadline() -> None:
    """Raise `DeadlineExceededError` if the current deadline has passed; call before costly work."""
    current = _current.get()
    if current is not None:
        current.check()


def _remaining_ms_for_wire() -> int | None:
    current = _current.get()
    if current is None:
        return None
    current.check()  # never send a request whose caller has already given up
    return max(1, math.floor(current.remaining() * 1000))


# ----------------------------------------------------------------------------- HTTP


def http_deadline_headers() -> dict[str, str]:
    """Headers to add to an outgoing HTTP request (empty without a deadline).

    Raises `DeadlineExceededError` when the deadline has already passed, since
    the answer would arrive after the caller stopped listening.
    """
    ms = _remaining_ms_for_wire()
    return {} if ms is None else {HTTP_DEADLINE_HEADER: str(ms)}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def deadline_from_http_headers(headers: Mapping[str, str]) -> float | None:
    """Seconds the caller allows, read from an incoming request's headers.

    Returns None when there is no (valid) header. Use it as
    ``with deadline(deadline_from_http_headers(request.headers)):``. A malformed
    value is ignored (and logged at DEBUG) rather than failing the request.
    """
    raw = _header(headers, HTTP_DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        ms = int(raw.strip())
    except ValueError:
        _log.debug("ignoring malformed %s header %r", HTTP_DEADLINE_HEADER, raw)
        return None
    if ms < 0:
        _log.debug("ignoring negative %s header %r", HTTP_DEADLINE_HEADER, raw)
        return None
    return ms / 1000


# ----------------------------------------------------------------------------- gRPC

_GRPC_UNIT_NS: Final = {
    "H": 3_600_000_000_000,
    "M": 60_000_000_000,
    "S": 1_000_000_000,
    "m": 1_000_000,
    "u": 1_000,
    "n": 1,
}
_GRPC_MAX_VALUE: Final = 10**8 - 1  # the spec allows at most 8 digits


def format_grpc_timeout(seconds: float) -> str:
    """Encode *seconds* as a ``grpc-timeout`` value, e.g. ``"1500m"``.

    Milliseconds when they fit (the common case), a coarser unit for huge
    values, a finer one below a millisecond; always rounded down, so the callee
    never gets more time than the caller has.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ConfigurationError("seconds", f"must be a positive number, got {seconds!r}")
    if math.isinf(seconds):
        return f"{_GRPC_MAX_VALUE}H"
    ns = round(seconds * 1e9)
    for unit in ("m", "S", "M", "H"):
        value = ns // _GRPC_UNIT_NS[unit]
        if value == 0:
            break  # below a millisecond: use a finer unit
        if value <= _GRPC_MAX_VALUE:
            return f"{value}{unit}"
    else:
        return f"{_GRPC_MAX_VALUE}H"
    micros = ns // _GRPC_UNIT_NS["u"]
    return f"{micros}u" if micros else f"{max(ns, 1)}n"


def parse_grpc_timeout(value: str) -> float | None:
    """Decode a ``grpc-timeout`` value into seconds; None if malformed."""
    value = value.strip()
    if len(value) < 2 or value[-1] not in _GRPC_UNIT_NS:
        return None
    digits = value[:-1]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * _GRPC_UNIT_NS[value[-1]] / 1e9


def grpc_deadline_metadata() -> list[tuple[str, str]]:
    """Metadata to add to an outgoing gRPC call (empty without a deadline)."""
    ms = _remaining_ms_for_wire()
    return [] if ms is None else [(GRPC_TIMEOUT_METADATA, format_grpc_timeout(ms / 1000))]


def deadline_from_grpc_metadata(metadata: Iterable[tuple[str, str]]) -> float | None:
    """Seconds the caller allows, from incoming gRPC metadata; None without a valid one."""
    for key, value in metadata:
        if key.lower() == GRPC_TIMEOUT_METADATA:
            seconds = parse_grpc_timeout(value)
            if seconds is None:
                _log.debug("ignoring malformed grpc-timeout %r", value)
            return seconds
    return None


# ----------------------------------------------------------------------------- messages


def message_with_deadline(message: Message, *, now: Callable[[], float] = time.time) -> Message:
    """A copy of *message* carrying the current deadline (unchanged without one).

    The header holds absolute epoch milliseconds so time spent in the queue
    counts against the deadline.
    """
    ms = _remaining_ms_for_wire()
    if ms is None:
        return message
    expires_ms = math.floor(now() * 1000) + ms
    return message.with_headers(**{MESSAGE_DEADLINE_HEADER: str(expires_ms)})


def deadline_from_message(
    message: Message, *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds left for *message* (0.0 if already passed); None without a valid header.

    ``with deadline(deadline_from_message(msg)):`` raises `DeadlineExceededError`
    for an expired message before the handler does any work.
    """
    raw = message.headers.get(MESSAGE_DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        expires_ms = int(raw)
    except ValueError:
        _log.debug("ignoring malformed message deadline %r on %s", raw, message.id)
        return None
    return max(0.0, expires_ms / 1000 - now())
