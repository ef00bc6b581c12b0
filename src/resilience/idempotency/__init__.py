"""Idempotency keys: run a side effect at most once per key and replay its result.

- `idempotent`: the decorator for sync and async functions.
- `current_idempotency`: recovery points (checkpoints) inside a protected call.
- Stores: `MemoryStore`, `RedisStore`, `SqlStore` (transactional), or your own
  `IdempotencyStore` / `AsyncIdempotencyStore`.
- `IdempotencyMiddleware`: the ``Idempotency-Key`` HTTP header for ASGI apps.

Redis, SQLAlchemy and Starlette are imported only when their store or the
middleware is used.
"""

from ._core import JsonSerializer, Serializer, canonical_json, fingerprint
from ._decorator import (
    IdempotencyContext,
    IdempotencyOptions,
    Idempotent,
    current_idempotency,
    idempotent,
)
from ._memory import MemoryStore
from ._middleware import IdempotencyMiddleware, authorization_principal
from ._redis import RedisStore
from ._sql import SqlStore, idempotency_table
from ._store import (
    AsyncIdempotencyStore,
    Claimed,
    ClaimOutcome,
    Completed,
    IdempotencyStore,
    InProgress,
    Mismatch,
)

__all__ = [
    "AsyncIdempotencyStore",
    "ClaimOutcome",
    "Claimed",
    "Completed",
    "IdempotencyContext",
    "IdempotencyMiddleware",
    "IdempotencyOptions",
    "IdempotencyStore",
    "Idempotent",
    "InProgress",
    "JsonSerializer",
    "MemoryStore",
    "Mismatch",
    "RedisStore",
    "Serializer",
    "SqlStore",
    "authorization_principal",
    "canonical_json",
    "current_idempotency",
    "fingerprint",
    "idempotency_table",
    "idempotent",
]
