"""Circuit breaker state shared by the processes of one service, through Redis.

Consistency model (what a process can rely on):

- **The decision lives in Redis.** One hash per breaker,
  ``{prefix}breaker:{name}:state``, holds ``state``, ``open_until`` (Redis
  server time, ms) and a ``version`` bumped by every transition. Every
  transition is decided inside a Lua script, atomically: a process asks
  "move from version *v* to OPEN"; if another process already moved the
  breaker past *v*, the request loses and the process follows the winner.
- **Outcomes are aggregated per second.** Each process adds its call,
  failure and slow-call counts to ``{prefix}breaker:{name}:b:{second}``
  (``HINCRBY`` + ``EXPIRE``, in the same script), and the script trips the
  shared breaker when the sum over the last ``window_seconds`` crosses the
  thresholds, so ten processes each seeing a few failures trip together even
  when none of them has enough calls to trip alone.
- **No Redis round-trip on the call path.** A background thread per breaker
  pushes the counts and pulls the decision every ``sync_interval`` seconds
  (100 ms by default). A process therefore follows a trip, a recovery or an
  operator's ``resilience breaker open`` within ``sync_interval`` plus one
  round-trip; in between it protects itself with its local breaker, which
  keeps its own window and may trip on its own (and then publishes).
- **Half-open is per process.** When ``open_until`` passes, each process
  admits its own trial calls; the first verdict published wins (version
  check): a success closes the breaker everywhere, a failure reopens it
  everywhere.
- **Redis down.** The sync thread logs (at most every 30 s), keeps retrying,
  and each process carries on with its local state: callers never see a
  Redis error and never wait on Redis. When Redis returns, the local
  transitions made meanwhile are offered again; those based on an outdated
  version lose to what Redis holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from resilience._errors import ConfigurationError
from resilience._optional import require

from ._breaker_config import CircuitState
from ._breaker_windows import FAILURE, SLOW

if TYPE_CHECKING:
    from ._breaker_core import BreakerCore, Transition

__all__ = ["RedisSharedState", "SharedBreakerStatus", "SharedState"]

_log = logging.getLogger("resilience.policies.breaker.redis")

SHARED_REASON = "shared"
"""Reason of local transitions that follow the shared decision (never re-published)."""

_SYNC_SCRIPT = """
local state_key = KEYS[1]
local bucket_prefix = KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local second = tonumber(t[1])
local calls, failed, slow = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local minimum = tonumber(ARGV[5])
local failure_threshold = tonumber(ARGV[6])
local slow_threshold = tonumber(ARGV[7])
local open_ms = tonumber(ARGV[8])
local req_state = ARGV[9]
local req_version = tonumber(ARGV[10])
local req_open_ms = tonumber(ARGV[11])
local force = ARGV[12] == '1'

local cur = redis.call('HMGET', state_key, 'state', 'open_until', 'version')
local state = cur[1] or 'closed'
local open_until = tonumber(cur[2] or '0')
local version = tonumber(cur[3] or '0')
local changed = false
local reason = ''

if req_state ~= '' and (force or req_version == version) then
  state = req_state
  version = version + 1
  changed = true
  reason = 'published'
  if state == 'open' then open_until = now + req_open_ms else open_until = 0 end
end

if calls > 0 then
  local bucket = bucket_prefix .. second
  redis.call('HINCRBY', bucket, 'calls', calls)
  if failed > 0 then redis.call('HINCRBY', bucket, 'failed', failed) end
  if slow > 0 then redis.call('HINCRBY', bucket, 'slow', slow) end
  redis.call('EXPIRE', bucket, window + 5)
end

if state == 'closed' and calls > 0 then
  local total, total_failed, total_slow = 0, 0, 0
  for s = second - window + 1, second do
    local b = redis.call('HMGET', bucket_prefix .. s, 'calls', 'failed', 'slow')
    total = total + tonumber(b[1] or '0')
    total_failed = total_failed + tonumber(b[2] or '0')
    total_slow = total_slow + tonumber(b[3] or '0')
  end
  if total >= minimum and (total_failed * 100 >= failure_threshold * total
      or total_slow * 100 >= slow_threshold * total) then
    state = 'open'
    open_until = now + open_ms
    version = version + 1
    changed = true
    reason = 'shared_failure_rate'
  end
end

if changed then
  redis.call('HSET', state_key, 'state', state, 'open_until', open_until,
             'version', version, 'reason', reason, 'updated', now)
  if state == 'closed' then
    for s = second - window + 1, second do redis.call('DEL', bucket_prefix .. s) end
  end
end
local remaining = 0
if state == 'open' then remaining = open_until - now end
return {state, remaining, version}
"""


class SharedState(Protocol):
    """What a breaker needs from a cross-process state backend.

    Every method runs on the caller's thread and must return in
    microseconds: implementations do their I/O elsewhere and never raise.
    """

    def bind(
        self,
        name: str,
        core: BreakerCore,
        now: Callable[[], float],
        announce: Callable[[], object],
    ) -> None:
        """Called once by the breaker's constructor."""

    def before_call(self, now: float) -> None:
        """Apply the latest shared decision to the core before it admits a call."""

    def recorded(self, code: int, now: float) -> None:
        """An outcome was recorded locally (to be aggregated with other processes)."""

    def transitioned(self, transition: Transition) -> None:
        """The local breaker changed state (to be published)."""


@dataclass(frozen=True, slots=True)
class SharedBreakerStatus:
    """A shared breaker as Redis holds it (what ``resilience breaker status`` prints)."""

    name: str
    state: str
    retry_after: float
    version: int
    reason: str
    calls: int
    failed_calls: int
    slow_calls: int


def _client(redis: Any) -> Any:
    if isinstance(redis, str):
        module = require("redis", "redis")
        return module.Redis.from_url(redis, socket_timeout=2.0, socket_connect_timeout=2.0)
    return redis


def _keys(prefix: str, name: str) -> tuple[str, str]:
    return f"{prefix}breaker:{name}:state", f"{prefix}breaker:{name}:b:"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_status(
    redis: Any, name: str, prefix: str = "resilience:", window: int = 60
) -> SharedBreakerStatus:
    """Read a shared breaker's state and its aggregated window from Redis."""
    client = _client(redis)
    state_key, bucket_prefix = _keys(prefix, name)
    raw = client.hgetall(state_key)
    fields = {_text(k): _text(v) for k, v in raw.items()}
    server_s, server_us = client.time()
    now_ms = int(server_s) * 1000 + int(server_us) // 1000
    state = fields.get("state", "closed")
    open_until = int(fields.get("open_until", "0") or 0)
    pipe = client.pipeline()
    for second in range(int(server_s) - window + 1, int(server_s) + 1):
        pipe.hmget(f"{bucket_prefix}{second}", "calls", "failed", "slow")
    calls = failed = slow = 0
    for c, f, s in pipe.execute():
        calls += int(c or 0)
        failed += int(f or 0)
        slow += int(s or 0)
    retry_after = max(open_until - now_ms, 0) / 1000 if state == "open" else 0.0
    return SharedBreakerStatus(
        name=name,
        state=state,
        retry_after=retry_after,
        version=int(fields.get("version", "0") or 0),
        reason=fields.get("reason", ""),
        calls=calls,
        failed_calls=failed,
        slow_calls=slow,
    )


def publish_state(
    redis: Any,
    name: str,
    state: CircuitState | str,
    prefix: str = "resilience:",
    open_seconds: float = 60.0,
) -> SharedBreakerStatus:
    """Set a shared breaker's state by hand (operators, the CLI); every process follows."""
    target = CircuitState.parse(state, "state")
    client = _client(redis)
    state_key, bucket_prefix = _keys(prefix, name)
    client.eval(
        _SYNC_SCRIPT,
        2,
        state_key,
        bucket_prefix,
        0,
        0,
        0,
        60,
        1,
        100,
        100,
        0,
        target.value,
        0,
        int(open_seconds * 1000),
        "1",
    )
    return read_status(client, name, prefix)


class RedisSharedState:
    """Makes the breakers named alike in every process trip and recover together.

    Pass one to ``CircuitBreaker(name, config, shared=RedisSharedState(url))``
    in each process. See the module documentation for the consistency model.

    Args:
        redis: a ``redis.Redis`` client or a URL (the ``redis`` extra is
            imported only then).
        prefix: key prefix, so several services or test runs share one Redis.
        sync_interval: seconds between pushes/pulls; the bound on how late a
            process follows a shared decision.
        window_seconds: the aggregated window (seconds) in Redis.
        minimum_calls: calls the aggregated window needs before it can trip;
            defaults to the breaker's configuration.
        failure_rate_threshold: aggregated failure rate (%) that trips every
            process; defaults to the breaker's configuration.
        slow_call_rate_threshold: aggregated slow-call rate (%) that trips
            every process; defaults to the breaker's configuration.
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "resilience:",
        sync_interval: float = 0.1,
        window_seconds: int = 10,
        minimum_calls: int | None = None,
        failure_rate_threshold: float | None = None,
        slow_call_rate_threshold: float | None = None,
    ) -> None:
        if not isinstance(sync_interval, int | float) or not 0 < sync_interval <= 60:
            raise ConfigurationError(
                "sync_interval", f"must be in (0, 60] seconds, got {sync_interval!r}"
            )
        if (
            isinstance(window_seconds, bool)
            or not isinstance(window_seconds, int)
            or not (1 <= window_seconds <= 3600)
        ):
            raise ConfigurationError(
                "window_seconds", f"must be an integer in [1, 3600], got {window_seconds!r}"
            )
        self._redis_arg = redis
        self.prefix = prefix
        self.sync_interval = float(sync_interval)
        self.window_seconds = window_seconds
        self._minimum = minimum_calls
        self._failure_threshold = failure_rate_threshold
        self._slow_threshold = slow_call_rate_threshold
        self._lock = threading.Lock()
        self._calls = self._failed = self._slow = 0
        self._pending: tuple[str, int, int] | None = None  # (state, base version, open ms)
        self._remote: tuple[str, float, int] | None = None  # (state, local open_until, version)
        self._applied_version = -1
        self._version = 0
        self._core: BreakerCore | None = None
        self._now: Callable[[], float] = time.monotonic
        self._announce: Callable[[], object] = lambda: None
        self._name = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._last_error_log = -1e9
        self.healthy = False
        """Whether the last sync with Redis succeeded."""
        self.syncs = 0
        """Successful syncs so far (tests wait on it)."""

    # ------------------------------------------------------------------ SharedState

    def bind(
        self,
        name: str,
        core: BreakerCore,
        now: Callable[[], float],
        announce: Callable[[], object],
    ) -> None:
        if self._core is not None:
            raise ConfigurationError("shared", "a RedisSharedState serves exactly one breaker")
        self._name = name
        self._core = core
        self._now = now
        self._announce = announce
        config = core.config
        if self._minimum is None:
            self._minimum = config.minimum_calls
        if self._failure_threshold is None:
            self._failure_threshold = config.failure_rate_threshold
        if self._slow_threshold is None:
            self._slow_threshold = config.slow_call_rate_threshold
        self._keys = _keys(self.prefix, name)
        self._start()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _restart_after_fork(ref))

    def before_call(self, now: float) -> None:
        remote = self._remote
        if remote is None or remote[2] == self._applied_version:
            return  # the common case: nothing new from Redis
        with self._lock:  # exactly one caller applies a given version
            if remote[2] == self._applied_version:
                return
            self._applied_version = remote[2]
        self._apply(remote, now)

    def recorded(self, code: int, now: float) -> None:
        with self._lock:
            self._calls += 1
            if code & FAILURE:
                self._failed += 1
            if code & SLOW:
                self._slow += 1

    def transitioned(self, transition: Transition) -> None:
        if transition.reason in (SHARED_REASON, "open_duration_elapsed"):
            return  # following the shared decision, or each process's own half-open
        with self._lock:
            self._pending = (
                transition.to_state.value,
                self._version,
                int(transition.open_duration * 1000),
            )
            if transition.to_state is CircuitState.CLOSED:
                self._calls = self._failed = self._slow = 0

    # ------------------------------------------------------------------ internals

    def _apply(self, remote: tuple[str, float, int], now: float) -> None:
        core = self._core
        if core is None:
            return
        state_name, open_until, _version = remote
        state = CircuitState.parse(state_name, "state")
        local = core.epoch.state
        if state is CircuitState.OPEN:
            core.force_open_until(open_until, now, SHARED_REASON)
        elif state is not local:
            core.transition(state, now, SHARED_REASON)
        if core.events:
            self._announce()

    def _start(self) -> None:
        self._stop.clear()
        # The thread holds only a weak reference: dropping the breaker ends it.
        self._thread = threading.Thread(
            target=_sync_loop,
            args=(weakref.ref(self), self._stop, self.sync_interval),
            name=f"breaker-sync-{self._name}",
            daemon=True,
        )
        self._thread.start()

    def _tick(self, connection: list[Any]) -> None:
        """One sync attempt; *connection* caches ``[client, script]`` across ticks."""
        try:
            if not connection:
                client = _client(self._redis_arg)
                owned = isinstance(self._redis_arg, str)  # ours to close, unlike a passed client
                connection[:] = [client, client.register_script(_SYNC_SCRIPT), owned]
            self._sync_once(connection[1])
            if not self.healthy:
                _log.info("breaker %r: shared state in Redis reachable", self._name)
            self.healthy = True
            self.syncs += 1
        except Exception as exc:
            self.healthy = False
            now = time.monotonic()
            if now - self._last_error_log > 30:
                self._last_error_log = now
                _log.warning(
                    "breaker %r: shared state in Redis unreachable (%s); using local state",
                    self._name,
                    exc,
                )

    def _sync_once(self, script: Any) -> None:
        with self._lock:
            calls, failed, slow = self._calls, self._failed, self._slow
            self._calls = self._failed = self._slow = 0
            pending = self._pending
            self._pending = None
        req_state, req_version, req_open = pending if pending is not None else ("", 0, 0)
        core = self._core
        assert core is not None
        open_ms = int(core.next_open_duration() * 1000)
        try:
            state, remaining_ms, version = script(
                keys=list(self._keys),
                args=[
                    calls,
                    failed,
                    slow,
                    self.window_seconds,
                    self._minimum,
                    self._failure_threshold,
                    self._slow_threshold,
                    open_ms,
                    req_state,
                    req_version,
                    req_open,
                    "0",
                ],
            )
        except Exception:
            with self._lock:  # give the counts and the request back for the next attempt
                self._calls += calls
                self._failed += failed
                self._slow += slow
                if self._pending is None:
                    self._pending = pending
            raise
        version = int(version)
        self._version = version
        self._remote = (_text(state), self._now() + int(remaining_ms) / 1000, version)

    def close(self) -> None:
        """Stop the sync thread (the breaker keeps working on its local state)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def _sync_loop(ref: weakref.ref[RedisSharedState], stop: threading.Event, interval: float) -> None:
    connection: list[Any] = []
    while not stop.is_set():
        shared = ref()
        if shared is None:
            break
        shared._tick(connection)
        del shared
        stop.wait(interval)
    if connection and connection[2]:
        try:
            connection[0].close()
        except Exception:  # closing a broken connection: nothing left to protect
            _log.debug("closing the Redis client failed", exc_info=True)


def _restart_after_fork(ref: weakref.ref[RedisSharedState]) -> None:
    shared = ref()
    if shared is not None and shared._core is not None:
        shared._pid = os.getpid()
        shared._lock = threading.Lock()  # another parent thread may have held it at fork time
        shared._stop = threading.Event()
        shared._start()
