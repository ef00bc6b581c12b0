"""The store protocols and the outcomes of a claim.

A store keeps one record per key: the payload fingerprint, who owns the key
(an owner token) and until when (a lease judged by the *store's* clock), named
checkpoints, and finally the stored result. Stores are thin: every decision
about what a caller should do with an outcome lives in `_core`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, cast, runtime_checkable

__all__ = [
    "AsyncIdempotencyStore",
    "ClaimOutcome",
    "Claimed",
    "Completed",
    "IdempotencyStore",
    "InProgress",
    "Mismatch",
    "as_async_store",
]


@dataclass(frozen=True, slots=True)
class Claimed:
    """The caller now owns the key and must run the function.

    ``checkpoints`` holds the recovery points a previous owner recorded before
    it crashed or failed, so this attempt can resume after the last one.
    """

    token: str
    checkpoints: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InProgress:
    """Another owner holds a live lease; ``retry_after`` seconds until it lapses."""

    retry_after: float


@dataclass(frozen=True, slots=True)
class Completed:
    """The key has a stored outcome; ``payload`` is what `_core` encoded."""

    payload: str


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key is held by a call with a different payload fingerprint."""


ClaimOutcome = Claimed | InProgress | Completed | Mismatch


@runtime_checkable
class IdempotencyStore(Protocol):
    """A blocking store. Each method is one round trip to the backend.

    Every method but ``claim`` is fenced by the owner token and raises
    `resilience.IdempotencyLeaseLostError` when the token is not the current
    owner's. Unreadable records raise `resilience.IdempotencyRecordError`.
    """

    def claim(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        """Claim *key* for *token*, or report who holds it (atomic)."""
        ...

    def complete(self, key: str, token: str, payload: str, ttl: float) -> None:
        """Store the outcome and keep it for *ttl* seconds."""
        ...

    def release(self, key: str, token: str) -> None:
        """Give the key up so a retry may run (checkpoints are kept)."""
        ...

    def renew(self, key: str, token: str, lease_ttl: float) -> None:
        """Extend the lease to *lease_ttl* seconds from the store's now."""
        ...

    def checkpoint(self, key: str, token: str, name: str, data: str) -> None:
        """Record a named recovery point with its data."""
        ...


@runtime_checkable
class AsyncIdempotencyStore(Protocol):
    """The non-blocking twin of `IdempotencyStore` (same semantics, ``a`` prefix)."""

    async def aclaim(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        """See `IdempotencyStore.claim`."""
        ...

    async def acomplete(self, key: str, token: str, payload: str, ttl: float) -> None:
        """See `IdempotencyStore.complete`."""
        ...

    async def arelease(self, key: str, token: str) -> None:
        """See `IdempotencyStore.release`."""
        ...

    async def arenew(self, key: str, token: str, lease_ttl: float) -> None:
        """See `IdempotencyStore.renew`."""
        ...

    async def acheckpoint(self, key: str, token: str, name: str, data: str) -> None:
        """See `IdempotencyStore.checkpoint`."""
        ...


class _ThreadedAsyncStore:
    """Runs a blocking store's calls in a worker thread for async callers."""

    __slots__ = ("_store",)

    def __init__(self, store: IdempotencyStore) -> None:
        self._store = store

    async def aclaim(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        return await asyncio.to_thread(self._store.claim, key, fingerprint, token, lease_ttl, ttl)

    async def acomplete(self, key: str, token: str, payload: str, ttl: float) -> None:
        await asyncio.to_thread(self._store.complete, key, token, payload, ttl)

    async def arelease(self, key: str, token: str) -> None:
        await asyncio.to_thread(self._store.release, key, token)

    async def arenew(self, key: str, token: str, lease_ttl: float) -> None:
        await asyncio.to_thread(self._store.renew, key, token, lease_ttl)

    async def acheckpoint(self, key: str, token: str, name: str, data: str) -> None:
        await asyncio.to_thread(self._store.checkpoint, key, token, name, data)


def as_async_store(store: IdempotencyStore | AsyncIdempotencyStore) -> AsyncIdempotencyStore:
    """The store itself when it speaks async, else a wrapper running it in threads.

    A store with both flavours of methods may say it cannot serve async calls
    right now with a false ``async_capable`` attribute (a `RedisStore` built
    with only a blocking client).
    """
    if isinstance(store, AsyncIdempotencyStore) and getattr(store, "async_capable", True):
        return store
    return _ThreadedAsyncStore(cast("IdempotencyStore", store))
