"""An in-process store: for tests and single-process services."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from resilience._clock import SYSTEM_CLOCK, Clock, MonotonicClock
from resilience._errors import IdempotencyLeaseLostError

from ._store import Claimed, ClaimOutcome, Completed, InProgress, Mismatch

__all__ = ["MemoryStore"]

_RUNNING, _RELEASED, _DONE = "p", "r", "d"


@dataclass(slots=True)
class _Record:
    fingerprint: str
    state: str
    token: str
    lease_until: float
    expires_at: float
    payload: str = ""
    checkpoints: dict[str, str] = field(default_factory=dict)
    completed: Completed | None = None  # built once, handed to every replay (it is immutable)


class MemoryStore:
    """A thread-safe dict of records, judged by an injectable clock.

    Speaks both `IdempotencyStore` and `AsyncIdempotencyStore` (its async
    methods never block: every operation is a short critical section). The
    clock plays the role of the server's clock in Redis or SQL: leases and
    expiries are measured by it alone. Expired records are dropped lazily and
    by `purge_expired`.
    """

    __slots__ = ("_clock", "_lock", "_now", "_records")

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        # The real clock read directly: one call instead of two on every claim.
        self._now = time.monotonic if type(clock) is MonotonicClock else clock.monotonic
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    def claim(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        now = self._now()
        # A completed record never changes again (expiry replaces it with a new
        # one), so a replay reads it without the lock.
        record = self._records.get(key)
        if record is not None:
            done = record.completed
            if (
                done is not None
                and done.payload is record.payload
                and record.expires_at > now
                and record.fingerprint == fingerprint
            ):
                return done
        with self._lock:
            record = self._records.get(key)
            if record is not None and record.expires_at <= now:
                record = None
            if record is None:
                self._records[key] = _Record(
                    fingerprint, _RUNNING, token, now + lease_ttl, now + max(ttl, lease_ttl)
                )
                return Claimed(token)
            if record.fingerprint != fingerprint:
                return Mismatch()
            if record.state == _DONE:
                done = record.completed
                if done is None or done.payload is not record.payload:
                    done = record.completed = Completed(record.payload)
                return done
            if record.state == _RUNNING and record.lease_until > now:
                return InProgress(record.lease_until - now)
            record.state, record.token, record.lease_until = _RUNNING, token, now + lease_ttl
            record.expires_at = max(record.expires_at, now + lease_ttl)
            return Claimed(token, dict(record.checkpoints))

    def _owned(self, key: str, token: str) -> _Record:
        record = self._records.get(key)
        if record is None or record.token != token or record.state != _RUNNING:
            raise IdempotencyLeaseLostError(key)
        return record

    def complete(self, key: str, token: str, payload: str, ttl: float) -> None:
        now = self._now()
        with self._lock:
            record = self._owned(key, token)
            record.state, record.payload, record.expires_at = _DONE, payload, now + ttl
            record.completed = Completed(payload)
            record.checkpoints = {}

    def release(self, key: str, token: str) -> None:
        with self._lock:
            record = self._owned(key, token)
            if record.checkpoints:
                record.state, record.lease_until = _RELEASED, 0.0
            else:
                del self._records[key]

    def renew(self, key: str, token: str, lease_ttl: float) -> None:
        now = self._now()
        with self._lock:
            record = self._owned(key, token)
            record.lease_until = now + lease_ttl
            record.expires_at = max(record.expires_at, record.lease_until)

    def checkpoint(self, key: str, token: str, name: str, data: str) -> None:
        with self._lock:
            self._owned(key, token).checkpoints[name] = data

    def purge_expired(self) -> int:
        """Drop expired records; returns how many."""
        now = self._now()
        with self._lock:
            dead = [k for k, r in self._records.items() if r.expires_at <= now]
            for k in dead:
                del self._records[k]
        return len(dead)

    async def aclaim(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        return self.claim(key, fingerprint, token, lease_ttl, ttl)

    async def acomplete(self, key: str, token: str, payload: str, ttl: float) -> None:
        self.complete(key, token, payload, ttl)

    async def arelease(self, key: str, token: str) -> None:
        self.release(key, token)

    async def arenew(self, key: str, token: str, lease_ttl: float) -> None:
        self.renew(key, token, lease_ttl)

    async def acheckpoint(self, key: str, token: str, name: str, data: str) -> None:
        self.checkpoint(key, token, name, data)

    def __repr__(self) -> str:
        return f"MemoryStore(records={len(self._records)}, clock={self._clock!r})"
