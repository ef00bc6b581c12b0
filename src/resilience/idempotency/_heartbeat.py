"""Lease renewal while a protected call runs.

Blocking calls share one daemon thread per process, so registering a lease
costs a dict insert (no thread start, no wake-up); async calls use
``loop.call_later`` on their own loop. Renewal uses real time on purpose: the
lease is a promise about the wall clock the *store* keeps, and a heartbeat
that a fake clock could stop would let a live call lose its key.

Each lease also knows, conservatively, until when it surely holds: the send
time of the last successful claim or renewal plus the lease length (the store
started counting after we sent). Past that, or once the store refuses a
renewal, the lease counts as lost and the running call can see it
(`IdempotencyContext.lease_lost`). Blocking stores bound each renewal
themselves (socket, lock and statement timeouts) because a hung renewal would
stall the shared thread; async renewals are cut off after one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from resilience._errors import IdempotencyLeaseLostError

__all__ = ["AsyncLease", "Lease", "start_lease"]

_log = logging.getLogger("resilience.idempotency")


class Lease:
    """One registered call: renewed every ``interval`` seconds until stopped."""

    __slots__ = ("interval", "lease_ttl", "lost", "next_due", "renew", "valid_until")

    def __init__(
        self, renew: Callable[[], None], interval: float, lease_ttl: float, claimed_at: float
    ) -> None:
        self.renew = renew
        self.interval = interval
        self.lease_ttl = lease_ttl
        self.valid_until = claimed_at + lease_ttl
        self.next_due = time.monotonic() + interval
        self.lost = False

    @property
    def holds(self) -> bool:
        """Whether the lease surely still holds (never lost, and not past its last known end)."""
        return not self.lost and time.monotonic() < self.valid_until

    def stop(self) -> None:
        _KEEPER.remove(self)


class _Keeper:
    """The shared renewal thread.

    Registering a lease must not wake the thread: a call that finishes in
    microseconds would otherwise pay for a lock, a notify and a context switch.
    So the thread, once started, wakes at least every ``_tick`` seconds (the
    shortest interval it has been given) even with nothing to renew. A lease
    added now is first due a full interval from now, which is never before the
    thread's next wake-up, so adding is a lock-free dict store; only a lease
    with a shorter interval than any seen before (or the very first) wakes it.
    After a minute without leases the thread sleeps until the next add.
    """

    __slots__ = ("_cond", "_leases", "_thread", "_tick", "_wake_at")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._leases: dict[int, Lease] = {}
        self._thread: threading.Thread | None = None
        self._tick = float("inf")
        self._wake_at = float("inf")

    def add(self, lease: Lease) -> None:
        self._leases[id(lease)] = lease
        if lease.next_due < self._wake_at or lease.interval < self._tick:
            with self._cond:
                self._tick = min(self._tick, lease.interval)
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="resilience-idempotency-heartbeat", daemon=True
                    )
                    self._thread.start()
                self._wake_at = min(self._wake_at, lease.next_due)
                self._cond.notify()

    def remove(self, lease: Lease) -> None:
        self._leases.pop(id(lease), None)

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._cond:
                now = time.monotonic()
                leases = list(self._leases.values())
                due = [lease for lease in leases if lease.next_due <= now]
                for lease in due:
                    lease.next_due = now + lease.interval
                if leases:
                    idle_since = now
                if not leases and now - idle_since > _IDLE_SLEEP:
                    self._wake_at = self._tick = float("inf")  # the next add() wakes us...
                    if self._leases:  # ...unless it already read the old _wake_at
                        continue
                else:
                    self._wake_at = min((x.next_due for x in leases), default=now + self._tick)
                    self._wake_at = min(self._wake_at, now + self._tick)
                if not due:
                    timeout = None if self._wake_at == float("inf") else self._wake_at - now
                    self._cond.wait(timeout=None if timeout is None else max(0.0, timeout))
                    continue
            for lease in due:
                _renew(lease)


_IDLE_SLEEP = 60.0


def _renew(lease: Lease) -> None:
    sent = time.monotonic()
    try:
        lease.renew()
    except IdempotencyLeaseLostError:
        lease.lost = True
        _KEEPER.remove(lease)
    except Exception:  # a blip: the next beat tries again while the lease still holds
        _log.warning("idempotency lease renewal failed; will retry", exc_info=True)
    else:
        lease.valid_until = sent + lease.lease_ttl


_KEEPER = _Keeper()


def _after_fork_in_child() -> None:
    # The keeper thread does not survive fork(); the child starts a fresh one
    # (leases of the parent's calls are not the child's to renew).
    global _KEEPER  # noqa: PLW0603 - the process-wide keeper is replaced on purpose
    _KEEPER = _Keeper()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def start_lease(
    renew: Callable[[], None], interval: float, lease_ttl: float, claimed_at: float
) -> Lease:
    """Renew via *renew* every *interval* seconds on the shared thread until ``stop()``.

    *claimed_at* is the `time.monotonic` reading taken before the claim was sent.
    """
    lease = Lease(renew, interval, lease_ttl, claimed_at)
    _KEEPER.add(lease)
    return lease


class AsyncLease:
    """The asyncio flavour: a ``call_later`` chain on the running loop."""

    __slots__ = (
        "_handle",
        "_interval",
        "_loop",
        "_renew",
        "_task",
        "lease_ttl",
        "lost",
        "valid_until",
    )

    def __init__(
        self,
        renew: Callable[[], Coroutine[Any, Any, None]],
        interval: float,
        lease_ttl: float,
        claimed_at: float,
    ) -> None:
        self._renew = renew
        self._interval = interval
        self.lease_ttl = lease_ttl
        self.valid_until = claimed_at + lease_ttl
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self.lost = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(interval, self._fire)

    @property
    def holds(self) -> bool:
        """See `Lease.holds`."""
        return not self.lost and time.monotonic() < self.valid_until

    def _fire(self) -> None:
        self._task = self._loop.create_task(self._beat())

    async def _beat(self) -> None:
        sent = time.monotonic()
        try:
            # A renewal that outlives its interval is useless; cut it off so the next can try.
            await asyncio.wait_for(self._renew(), timeout=self._interval)
        except IdempotencyLeaseLostError:
            self.lost = True
            self._handle = None
            return
        except Exception:  # includes the timeout
            _log.warning("idempotency lease renewal failed; will retry", exc_info=True)
        else:
            self.valid_until = sent + self.lease_ttl
        if self._handle is not None:
            self._handle = self._loop.call_later(self._interval, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(Exception):
                self._task.add_done_callback(_consume)


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
