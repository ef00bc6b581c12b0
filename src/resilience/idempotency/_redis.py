"""Redis store: every operation is one Lua script, judged by the server's clock."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from resilience._errors import (
    ConfigurationError,
    IdempotencyLeaseLostError,
    IdempotencyRecordError,
)
from resilience._optional import require

from ._store import Claimed, ClaimOutcome, Completed, InProgress, Mismatch

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["RedisStore"]

# A record is one hash: k (readable key), f (fingerprint), s (state: p running,
# r released, d done), t (owner token), l (lease end, server ms), r (result),
# c:<name> (checkpoints). The time is always the server's: redis.call('TIME').
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_CLAIM = (
    """
local v = redis.call('HMGET', KEYS[1], 'f', 's', 'l', 'r')
local f, s = v[1], v[2]
local lease = tonumber(ARGV[3])
if not f and not s then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {'corrupt'} end
"""
    + _NOW
    + """
  redis.call('HSET', KEYS[1], 'k', ARGV[5], 'f', ARGV[1], 's', 'p', 't', ARGV[2], 'l', now + lease)
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[4]), lease))
  return {'claimed'}
end
if not f or (s ~= 'p' and s ~= 'r' and s ~= 'd') then return {'corrupt'} end
if f ~= ARGV[1] then return {'mismatch'} end
if s == 'd' then
  if not v[4] then return {'corrupt'} end
  return {'done', v[4]}
end
"""
    + _NOW
    + """
if s == 'p' then
  local l = tonumber(v[3] or '')
  if l == nil then return {'corrupt'} end
  if l > now then return {'progress', tostring(l - now)} end
end
redis.call('HSET', KEYS[1], 's', 'p', 't', ARGV[2], 'l', now + lease)
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
local out = {'claimed'}
local rec = redis.call('HGETALL', KEYS[1])
for i = 1, #rec, 2 do
  if string.sub(rec[i], 1, 2) == 'c:' then
    out[#out + 1] = string.sub(rec[i], 3)
    out[#out + 1] = rec[i + 1]
  end
end
return out
"""
)

_OWNED = """
local v = redis.call('HMGET', KEYS[1], 's', 't')
if v[1] ~= 'p' or v[2] ~= ARGV[1] then return 0 end
"""

_COMPLETE = (
    _OWNED
    + """
-- checkpoints are left to expire with the record: a completed key never reads them
redis.call('HSET', KEYS[1], 's', 'd', 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

_RELEASE = (
    _OWNED
    + """
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(name, 1, 2) == 'c:' then
    redis.call('HSET', KEYS[1], 's', 'r', 'l', '0')
    return 1
  end
end
redis.call('DEL', KEYS[1])
return 1
"""
)

_RENEW = (
    _OWNED
    + _NOW
    + """
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'l', now + lease)
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
"""
)

_CHECKPOINT = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], 'c:' .. ARGV[2], ARGV[3])
return 1
"""
)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore:
    """Idempotency records in Redis (standalone or Cluster), sync and async.

    Pass a ``redis.Redis`` as *client* for blocking code, a ``redis.asyncio.Redis``
    as *async_client* for async code, or both. Each operation is one ``EVALSHA``
    (redis-py falls back to ``EVAL`` after a script flush), leases and expiries
    use the server's ``TIME`` and native key expiry, so callers' clocks never
    matter. A record is one hash whose name carries a ``{hash tag}``, so it
    lives in one Cluster slot. Clients may use ``decode_responses`` either way.
    """

    __slots__ = (
        "_acheckpoint",
        "_aclaim",
        "_aclient",
        "_acomplete",
        "_arelease",
        "_arenew",
        "_checkpoint",
        "_claim",
        "_client",
        "_complete",
        "_redis",
        "_release",
        "_renew",
        "prefix",
    )

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        async_client: redis.asyncio.Redis | None = None,
        prefix: str = "idem:",
    ) -> None:
        if client is None and async_client is None:
            raise ConfigurationError("client", "pass a redis.Redis and/or an async_client")
        if not isinstance(prefix, str):
            raise ConfigurationError("prefix", "must be a string")
        self._redis = require("redis", "redis")
        self.prefix = prefix
        self._client = client
        self._aclient = async_client
        if client is not None:
            self._claim = client.register_script(_CLAIM)
            self._complete = client.register_script(_COMPLETE)
            self._release = client.register_script(_RELEASE)
            self._renew = client.register_script(_RENEW)
            self._checkpoint = client.register_script(_CHECKPOINT)
        if async_client is not None:
            self._aclaim = async_client.register_script(_CLAIM)
            self._acomplete = async_client.register_script(_COMPLETE)
            self._arelease = async_client.register_script(_RELEASE)
            self._arenew = async_client.register_script(_RENEW)
            self._acheckpoint = async_client.register_script(_CHECKPOINT)

    @property
    def sync_capable(self) -> bool:
        """Whether blocking methods work (a blocking client was given)."""
        return self._client is not None

    @property
    def async_capable(self) -> bool:
        """Whether async methods work (an async client was given)."""
        return self._aclient is not None

    def redis_key(self, key: str) -> str:
        """The Redis key holding *key*'s record (a digest inside a hash tag)."""
        return f"{self.prefix}{{{hashlib.sha256(key.encode()).hexdigest()[:32]}}}"

    # ------------------------------------------------------------------ replies

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def _outcome(self, key: str, token: str, reply: Any) -> ClaimOutcome:
        try:
            kind = self._text(reply[0])
            if kind == "claimed":
                items = [self._text(v) for v in reply[1:]]
                return Claimed(token, dict(zip(items[::2], items[1::2], strict=True)))
            if kind == "done":
                return Completed(self._text(reply[1]))
            if kind == "progress":
                return InProgress(int(self._text(reply[1])) / 1000)
            if kind == "mismatch":
                return Mismatch()
        except (IndexError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise IdempotencyRecordError(key, f"unreadable record for key {key!r}: {exc}") from exc
        raise IdempotencyRecordError(
            key, f"stored record for idempotency key {key!r} is corrupted (not a valid record)"
        )

    def _fenced(self, key: str, reply: Any) -> None:
        if int(reply) != 1:
            raise IdempotencyLeaseLostError(key)

    def _wrong_type(self, key: str, exc: Exception) -> IdempotencyRecordError:
        return IdempotencyRecordError(key, f"Redis refused the record of key {key!r}: {exc}")

    def _sync(self) -> Any:
        if self._client is None:
            raise ConfigurationError("client", "this RedisStore has only an async client")
        return self._client

    # ------------------------------------------------------------------ blocking

    def claim(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        self._sync()
        try:
            reply = self._claim(
                keys=[self.redis_key(key)],
                args=[fingerprint, token, _ms(lease_ttl), _ms(ttl), key],
            )
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        return self._outcome(key, token, reply)

    def _call(self, script: Any, key: str, args: list[Any]) -> None:
        self._sync()
        try:
            reply = script(keys=[self.redis_key(key)], args=args)
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        self._fenced(key, reply)

    def complete(self, key: str, token: str, payload: str, ttl: float) -> None:
        self._call(self._complete, key, [token, payload, _ms(ttl)])

    def release(self, key: str, token: str) -> None:
        self._call(self._release, key, [token])

    def renew(self, key: str, token: str, lease_ttl: float) -> None:
        self._call(self._renew, key, [token, _ms(lease_ttl)])

    def checkpoint(self, key: str, token: str, name: str, data: str) -> None:
        self._call(self._checkpoint, key, [token, name, data])

    # ------------------------------------------------------------------ async

    def _async(self) -> Any:
        if self._aclient is None:
            raise ConfigurationError("async_client", "this RedisStore has only a blocking client")
        return self._aclient

    async def aclaim(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        self._async()
        try:
            reply = await self._aclaim(
                keys=[self.redis_key(key)],
                args=[fingerprint, token, _ms(lease_ttl), _ms(ttl), key],
            )
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        return self._outcome(key, token, reply)

    async def _acall(self, script: Any, key: str, args: list[Any]) -> None:
        self._async()
        try:
            reply = await script(keys=[self.redis_key(key)], args=args)
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        self._fenced(key, reply)

    async def acomplete(self, key: str, token: str, payload: str, ttl: float) -> None:
        await self._acall(self._acomplete, key, [token, payload, _ms(ttl)])

    async def arelease(self, key: str, token: str) -> None:
        await self._acall(self._arelease, key, [token])

    async def arenew(self, key: str, token: str, lease_ttl: float) -> None:
        await self._acall(self._arenew, key, [token, _ms(lease_ttl)])

    async def acheckpoint(self, key: str, token: str, name: str, data: str) -> None:
        await self._acall(self._acheckpoint, key, [token, name, data])

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"
