"""The circuit breaker's state machine: outcomes and timestamps in, decisions out.

No I/O, no clock, no callbacks: the drivers (`CircuitBreaker.call`/``acall``,
the pybreaker facade, the Redis synchroniser) read the time, run the
function, and report what happened. That single core is what the model-based
tests check against a reference model.

Concurrency: every method takes ``self.lock`` for a few microseconds of
bookkeeping and never calls out while holding it. The one exception to "take
the lock" is the success lane of a CLOSED breaker with a count window (see
`Epoch` and `CountWindow`), where recording a success is one atomic store.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import NamedTuple

from ._breaker_config import CircuitBreakerConfig, CircuitState
from ._breaker_windows import FAILURE, SLOW, CountWindow, TimeWindow

__all__ = ["BreakerCore", "CircuitBreakerMetrics", "Epoch", "Rejection", "Transition"]

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
DISABLED = CircuitState.DISABLED
FORCED_OPEN = CircuitState.FORCED_OPEN
METRICS_ONLY = CircuitState.METRICS_ONLY

_RECORDING = frozenset({CLOSED, METRICS_ONLY})


class Epoch:
    """One stay in one state; also the permit handed to an admitted call.

    Every transition creates a new epoch, so an outcome that reports back
    after the breaker moved on (``permit is not core.epoch``) is recognised
    as stale and discarded: a call admitted while CLOSED cannot consume a
    half-open trial slot, and a trial admitted in a previous half-open period
    cannot decide the current one.

    ``buf``/``slots`` are the count window's ring and slot cycle when the
    lock-free success lane applies to this epoch.
    """

    __slots__ = ("buf", "slots", "state")

    def __init__(self, state: CircuitState, window: CountWindow | TimeWindow | None) -> None:
        self.state = state
        if isinstance(window, CountWindow):
            self.buf = window.buf
            self.slots = window.slots


class Rejection(NamedTuple):
    """The call may not run: the state that said no and when to try again."""

    state: CircuitState
    retry_after: float


class Transition(NamedTuple):
    """A state change, queued for the driver to announce outside the lock."""

    from_state: CircuitState
    to_state: CircuitState
    reason: str
    at: float
    open_duration: float


@dataclass(frozen=True, slots=True)
class CircuitBreakerMetrics:
    """A consistent snapshot of a breaker, for dashboards and health checks.

    Rates are percentages over the calls currently in the window (in
    HALF_OPEN: over the trial calls reported so far); ``0.0`` when empty.

    Attributes:
        state: the state when the snapshot was taken.
        failure_rate: percentage of buffered calls that failed.
        slow_call_rate: percentage of buffered calls slower than the threshold.
        buffered_calls: calls in the window (or trial calls reported).
        failed_calls: failed calls among them.
        slow_calls: slow calls among them.
        not_permitted_calls: calls rejected since the breaker was created.
        consecutive_failures: failures in a row (reset by any success).
        retry_after: seconds until an OPEN breaker admits a trial (0 otherwise,
            ``inf`` when forced open).
        open_duration: how long the next trip would keep the circuit open
            (grows with repeated trips when a multiplier is configured).
    """

    state: CircuitState
    failure_rate: float
    slow_call_rate: float
    buffered_calls: int
    failed_calls: int
    slow_calls: int
    not_permitted_calls: int
    consecutive_failures: int
    retry_after: float
    open_duration: float


class BreakerCore:
    """The I/O-free state machine behind every circuit breaker flavour.

    ``try_acquire(now)`` returns an `Epoch` (the permit) or a `Rejection`;
    ``record(permit, code, now)`` reports an outcome code (see
    ``_breaker_windows``); ``release(permit)`` gives a permit back without an
    outcome (ignored exception, cancellation). Transitions are appended to
    ``events``; the driver drains them with `drain` and announces them.
    """

    __slots__ = (
        "_acquire",
        "_cf",
        "_count_window",
        "_duration",
        "_failure_threshold",
        "_max_duration",
        "_minimum_calls",
        "_multiplier",
        "_permitted",
        "_release",
        "_slow_threshold",
        "automatic",
        "config",
        "consecutive",
        "epoch",
        "events",
        "fast",
        "fast_allowed",
        "ho_done",
        "ho_failed",
        "ho_issued",
        "ho_slow",
        "ho_successes",
        "lock",
        "not_permitted",
        "open_until",
        "trips",
        "window",
    )

    def __init__(self, config: CircuitBreakerConfig, now: float) -> None:
        self.config = config
        self.lock = threading.Lock()
        self._acquire = self.lock.acquire
        self._release = self.lock.release
        self._failure_threshold = config.failure_rate_threshold
        self._slow_threshold = config.slow_call_rate_threshold
        self._minimum_calls = config.minimum_calls
        self._cf = config.consecutive_failures
        self._permitted = config.permitted_calls_in_half_open
        self._duration = config.open_duration
        self._multiplier = config.open_duration_multiplier
        self._max_duration = config.max_open_duration
        self._count_window = config.window_type == "count"
        self.automatic = config.automatic_half_open
        self.fast_allowed = (
            self._count_window
            and config.slow_call_duration is None
            and config.consecutive_failures is None
            and config.result_predicate is None
        )
        self.events: list[Transition] = []
        self.not_permitted = 0
        self.consecutive = 0
        self.trips = 0
        self.open_until = now
        self.ho_issued = self.ho_done = self.ho_failed = self.ho_slow = self.ho_successes = 0
        self.window: CountWindow | TimeWindow = self._new_window()
        state = CircuitState.parse(config.initial_state, "initial_state")
        self.epoch = Epoch(state, self.window)
        self.fast: Epoch | None = None
        if state is OPEN:
            self.trips = 1
            self.open_until = now + self._duration
        self._refresh_fast()

    # ------------------------------------------------------------------ helpers

    def _new_window(self) -> CountWindow | TimeWindow:
        if self._count_window:
            return CountWindow(self.config.window_size)
        return TimeWindow(self.config.window_size)

    def _refresh_fast(self) -> None:
        ep = self.epoch
        self.fast = ep if self.fast_allowed and ep.state in _RECORDING else None

    def set_fast_allowed(self, allowed: bool) -> None:
        """Drivers turn the success lane off when someone must hear of every success."""
        with self.lock:
            self.fast_allowed = allowed and (
                self._count_window
                and self.config.slow_call_duration is None
                and self.config.consecutive_failures is None
                and self.config.result_predicate is None
            )
            self._refresh_fast()

    def next_open_duration(self) -> float:
        """The open period the next trip would start (grows with repeated trips)."""
        if self._multiplier == 1.0:
            return self._duration
        try:
            grown = self._duration * self._multiplier**self.trips
        except OverflowError:
            return self._max_duration
        return min(grown, self._max_duration)

    def _move(self, to: CircuitState, now: float, reason: str) -> None:
        """Enter *to* (lock held). Resets what belongs to the state being entered."""
        previous = self.epoch.state
        duration = 0.0
        if to is CLOSED or to is METRICS_ONLY:
            self.window = self._new_window()
            if to is CLOSED:
                self.trips = 0
                self.consecutive = 0
        elif to is OPEN:
            duration = self.next_open_duration()
            self.trips += 1
            self.open_until = now + duration
        elif to is HALF_OPEN:
            self.ho_issued = self.ho_done = self.ho_failed = self.ho_slow = 0
        self.ho_successes = 0
        self.epoch = Epoch(to, self.window)
        self._refresh_fast()
        self.events.append(Transition(previous, to, reason, now, duration))

    def tune(
        self,
        *,
        consecutive_failures: int | None = None,
        open_duration: float | None = None,
        permitted_calls_in_half_open: int | None = None,
    ) -> None:
        """Change thresholds of a live breaker (pybreaker lets users assign ``fail_max``)."""
        with self.lock:
            if consecutive_failures is not None:
                self._cf = consecutive_failures
            if open_duration is not None:
                self._duration = open_duration
                self._max_duration = max(self._max_duration, open_duration)
            if permitted_calls_in_half_open is not None:
                self._permitted = permitted_calls_in_half_open

    def drain(self) -> list[Transition]:
        """Take the queued transitions (the driver announces them, lock released)."""
        with self.lock:
            events = self.events
            self.events = []
        return events

    # ------------------------------------------------------------------ decisions

    def try_acquire(self, now: float) -> Epoch | Rejection:
        """Admit a call (return the permit) or say why not."""
        with self.lock:
            ep = self.epoch
            state = ep.state
            if state is CLOSED or state is METRICS_ONLY or state is DISABLED:
                return ep
            if state is OPEN:
                if now < self.open_until:
                    self.not_permitted += 1
                    return Rejection(OPEN, self.open_until - now)
                self._move(HALF_OPEN, now, "open_duration_elapsed")
                ep = self.epoch
                state = HALF_OPEN
            if state is HALF_OPEN:
                if self.ho_issued < self._permitted:
                    self.ho_issued += 1
                    return ep
                self.not_permitted += 1
                return Rejection(HALF_OPEN, 0.0)
            self.not_permitted += 1
            return Rejection(state, math.inf)  # FORCED_OPEN

    def release(self, permit: Epoch) -> None:
        """Give back a permit whose call ended without an outcome (ignored, cancelled)."""
        if permit.state is not HALF_OPEN:
            return
        with self.lock:
            if permit is self.epoch and self.ho_issued > 0:
                self.ho_issued -= 1

    def record_success(self, permit: Epoch) -> None:
        """`record` of a success while CLOSED with a count window: the drivers' hot path.

        Same effect as ``record(permit, SUCCESS, now)`` in that case (which
        never changes the state, so needs no time); anything else is
        forwarded to `record`.
        """
        acquire, release = self._acquire, self._release  # ~50 ns cheaper than `with`
        acquire()
        try:
            if permit is self.epoch and permit.state is CLOSED and self._count_window:
                self.consecutive = 0
                permit.buf[next(permit.slots)] = 0
                return
        finally:
            release()
        self.record(permit, 0, 0.0)

    def record(self, permit: Epoch, code: int, now: float) -> None:
        """Report the outcome *code* of a call admitted with *permit*."""
        with self.lock:
            if permit is not self.epoch:
                return  # admitted under an earlier state: not evidence about this one
            state = permit.state
            if not code and state is CLOSED:  # the common case, kept short
                self.consecutive = 0
                if self._count_window:
                    permit.buf[next(permit.slots)] = 0
                else:
                    self.window.add(0, now)
                return
            if state is DISABLED:
                return
            failed = code & FAILURE
            if failed:
                self.consecutive += 1
            else:
                self.consecutive = 0
            if state is CLOSED or state is METRICS_ONLY:
                window = self.window
                window.add(code, now)
                if state is CLOSED and code:
                    self._judge_closed(failed, code & SLOW, now)
            elif state is HALF_OPEN:
                self._judge_half_open(failed, code & SLOW, now)

    def _judge_closed(self, failed: int, slow: int, now: float) -> None:
        cf = self._cf
        if cf is not None and failed and self.consecutive >= cf:
            self._move(OPEN, now, "consecutive_failures")
            return
        calls, failures, slows = self.window.counts(now)
        if calls < self._minimum_calls:
            return
        if cf is None and failures * 100 >= self._failure_threshold * calls:
            self._move(OPEN, now, "failure_rate")
        elif slow and slows * 100 >= self._slow_threshold * calls:
            self._move(OPEN, now, "slow_call_rate")

    def _judge_half_open(self, failed: int, slow: int, now: float) -> None:
        self.ho_done += 1
        if failed:
            self.ho_failed += 1
        else:
            self.ho_successes += 1
        if slow:
            self.ho_slow += 1
        permitted = self._permitted
        if self._cf is not None:
            if failed:
                self._move(OPEN, now, "half_open_trial_failed")
            elif self.ho_successes >= permitted:
                self._move(CLOSED, now, "half_open_trials_succeeded")
            return
        # Open as soon as the verdict over all trials is certain; close when all reported.
        if self.ho_failed * 100 >= self._failure_threshold * permitted:
            self._move(OPEN, now, "half_open_failure_rate")
        elif self.ho_slow * 100 >= self._slow_threshold * permitted:
            self._move(OPEN, now, "half_open_slow_call_rate")
        elif self.ho_done >= permitted:
            self._move(CLOSED, now, "half_open_trials_succeeded")

    # ------------------------------------------------------------------ observation & control

    def current_state(self, now: float) -> CircuitState:
        """The state, first applying an automatic OPEN → HALF_OPEN when due."""
        ep = self.epoch
        if ep.state is OPEN and self.automatic and now >= self.open_until:
            with self.lock:
                if self.epoch.state is OPEN and now >= self.open_until:
                    self._move(HALF_OPEN, now, "open_duration_elapsed")
            ep = self.epoch
        return ep.state

    def transition(self, to: CircuitState, now: float, reason: str = "manual") -> None:
        """Move to *to* by hand (always a new epoch, even if already there)."""
        with self.lock:
            self._move(to, now, reason)

    def force_open_until(self, open_until: float, now: float, reason: str) -> None:
        """Enter OPEN with a given deadline (decided elsewhere, e.g. by the shared state)."""
        with self.lock:
            if self.epoch.state is OPEN:
                self.open_until = open_until
                return
            self._move(OPEN, now, reason)
            self.open_until = open_until

    def metrics(self, now: float) -> CircuitBreakerMetrics:
        """A consistent snapshot (see `CircuitBreakerMetrics`)."""
        self.current_state(now)
        with self.lock:
            state = self.epoch.state
            if state is HALF_OPEN:
                calls, failed, slow = self.ho_done, self.ho_failed, self.ho_slow
            else:
                calls, failed, slow = self.window.counts(now)
            if state is OPEN:
                retry_after = max(self.open_until - now, 0.0)
            elif state is FORCED_OPEN:
                retry_after = math.inf
            else:
                retry_after = 0.0
            return CircuitBreakerMetrics(
                state=state,
                failure_rate=failed * 100.0 / calls if calls else 0.0,
                slow_call_rate=slow * 100.0 / calls if calls else 0.0,
                buffered_calls=calls,
                failed_calls=failed,
                slow_calls=slow,
                not_permitted_calls=self.not_permitted,
                consecutive_failures=self.consecutive,
                retry_after=retry_after,
                open_duration=self.next_open_duration(),
            )
