"""Redis store: one plain command to claim or replay, one short script to settle.

A record is one string key of six newline-separated fields:
``state token fingerprint lease ttl rest``:
state ``p`` (running), ``r`` (released with checkpoints) or ``d`` (done);
``lease`` is empty while the lease *is* the key's own expiry, else the lease
end in server milliseconds; ``rest`` is the caller's key, or the stored result
when done. Checkpoints live in a hash next to it (same hash tag, never longer
lived). Every time is the server's: key expiry or ``redis.call('TIME')``.

The common paths avoid Lua, whose per-call cost on the server is several times
that of a plain command: a claim is ``SET key record NX PX lease GET``, which
either creates the record (a new key, lease = expiry) or returns the existing
one (a replay, or a mismatch). Only a key that is running, released or taken
over goes on to the claim script, in a second round trip. Completing,
releasing, renewing and checkpointing are fenced by the owner token in short
scripts that read one string and never decode JSON.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from resilience._errors import (
    ConfigurationError,
    IdempotencyError,
    IdempotencyLeaseLostError,
    IdempotencyRecordError,
)
from resilience._optional import require

from ._store import Claimed, ClaimOutcome, Completed, InProgress, Mismatch

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["RedisStore"]

# KEYS: record, checkpoints. Shared prologue of the fenced scripts: ARGV[1] is
# "p\n<token>\n"; s, t, f, l, ttl, rest are the record's fields.
_PARSE = r"""
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
local s, t, f, l, ttl, rest = string.match(v, '^(.)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
if not s then return 0 end
"""

_NOW = r"""
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
"""

# ARGV: fingerprint, token, lease ms, ttl ms, caller's key.
_CLAIM = (
    r"""
local lease = tonumber(ARGV[3])
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'p\n' .. ARGV[2] .. '\n' .. ARGV[1] .. '\n\n' .. ARGV[4] .. '\n' .. ARGV[5], 'PX', lease)
  return {'claimed'}
end
local s, t, f, l, ttl, rest = string.match(v, '^([pdr])\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
if not s then return {'corrupt'} end
if f ~= ARGV[1] then return {'mismatch'} end
if s == 'd' then return {'done', rest} end
"""
    + _NOW
    + r"""
if s == 'p' then
  local left
  if l == '' then left = redis.call('PTTL', KEYS[1]) else left = (tonumber(l) or 0) - now end
  if left > 0 then return {'progress', tostring(left)} end
end
redis.call('SET', KEYS[1], 'p\n' .. ARGV[2] .. '\n' .. f .. '\n' .. (now + lease) .. '\n' .. ARGV[4] .. '\n' .. ARGV[5], 'KEEPTTL')
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
  if redis.call('PTTL', KEYS[2]) >= 0 then redis.call('PEXPIRE', KEYS[2], lease) end
end
local out = redis.call('HGETALL', KEYS[2])
table.insert(out, 1, 'claimed')
return out
"""
)

# ARGV: "p\n<token>\n", payload, ttl ms.
_COMPLETE = (
    _PARSE
    + r"""
redis.call('SET', KEYS[1], 'd\n\n' .. f .. '\n\n\n' .. ARGV[2], 'PX', ARGV[3])
if l ~= '' then redis.call('DEL', KEYS[2]) end
return 1
"""
)

_RELEASE = (
    _PARSE
    + r"""
if l ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], 'r' .. string.sub(v, 2), 'KEEPTTL')
else
  redis.call('DEL', KEYS[1])
end
return 1
"""
)

# ARGV: "p\n<token>\n", lease ms.
_RENEW = (
    _PARSE
    + r"""
local lease = tonumber(ARGV[2])
if l == '' then
  redis.call('PEXPIRE', KEYS[1], lease)
  return 1
end
"""
    + _NOW
    + r"""
redis.call('SET', KEYS[1], 'p\n' .. t .. '\n' .. f .. '\n' .. (now + lease) .. '\n' .. ttl .. '\n' .. rest, 'KEEPTTL')
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
  if redis.call('PTTL', KEYS[2]) >= 0 then redis.call('PEXPIRE', KEYS[2], lease) end
end
return 1
"""
)

# ARGV: "p\n<token>\n", name, data. The first checkpoint moves the lease from
# the key's expiry into the record, so the record (and its checkpoints) outlive
# a crashed owner's lease for the next attempt to resume from.
_CHECKPOINT = (
    _PARSE
    + r"""
local pttl = redis.call('PTTL', KEYS[1])
if l == '' then
"""
    + _NOW
    + r"""
  pttl = math.max(pttl, tonumber(ttl) or 0)
  redis.call('SET', KEYS[1], 'p\n' .. t .. '\n' .. f .. '\n' .. (now + redis.call('PTTL', KEYS[1])) .. '\n' .. ttl .. '\n' .. rest, 'PX', pttl)
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if pttl > 0 then redis.call('PEXPIRE', KEYS[2], pttl) end
return 1
"""
)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore:
    """Idempotency records in Redis (standalone or Cluster, Redis 7+), sync and async.

    Pass a ``redis.Redis`` as *client* for blocking code, a ``redis.asyncio.Redis``
    as *async_client* for async code, or both. A claim or a replay is one plain
    ``SET NX GET`` (a second round trip, a script, only when the key is running
    or being taken over); completing is one short ``EVALSHA`` (redis-py falls
    back to ``EVAL`` after a script flush). Leases and expiries use the server's
    clock (key expiry and ``TIME``), so callers' clocks never matter. A record
    and its checkpoints share a ``{hash tag}``, so they live in one Cluster slot.
    Clients may use ``decode_responses`` either way.
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
        "_last",
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
        self._last: tuple[str | None, str, str] = (None, "", prefix)
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
        """The Redis key holding *key*'s record (a digest inside a hash tag).

        Its checkpoints live in the hash at ``redis_key(key) + ":c"``.
        """
        last = self._last  # claim and complete usually name the same key object
        if last[0] is key and last[2] is self.prefix:
            return last[1]
        name = f"{self.prefix}{{{hashlib.sha256(key.encode()).hexdigest()[:32]}}}"
        self._last = (key, name, self.prefix)  # one tuple store: threads never see a torn pair
        return name

    # ------------------------------------------------------------------ replies

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    @staticmethod
    def _new_record(key: str, fingerprint: str, token: str, ttl: float) -> str:
        if "\n" in token or "\n" in fingerprint or not token:
            raise IdempotencyError(
                key, "idempotency tokens and fingerprints must be non-empty, without newlines"
            )
        return f"p\n{token}\n{fingerprint}\n\n{_ms(ttl)}\n{key}"

    def _fast(self, key: str, fingerprint: str, reply: Any) -> ClaimOutcome | None:
        """The outcome of ``SET NX GET``'s reply (the existing record), or None: ask the script."""
        try:
            parts = self._text(reply).split("\n", 5)
        except UnicodeDecodeError as exc:
            raise self._corrupt(key) from exc
        if len(parts) != 6 or parts[0] not in {"p", "r", "d"}:
            raise self._corrupt(key)
        if parts[2] != fingerprint:
            return Mismatch()
        if parts[0] == "d":
            return Completed(parts[5])
        return None

    def _corrupt(self, key: str) -> IdempotencyRecordError:
        return IdempotencyRecordError(
            key, f"stored record for idempotency key {key!r} is corrupted (not a valid record)"
        )

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
        raise self._corrupt(key)

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
        client = self._sync()
        name = self.redis_key(key)
        lease = _ms(lease_ttl)
        record = self._new_record(key, fingerprint, token, ttl)
        try:
            reply = client.execute_command("SET", name, record, "NX", "PX", lease, "GET", get=True)
            if reply is None:
                return Claimed(token)
            outcome = self._fast(key, fingerprint, reply)
            if outcome is not None:
                return outcome
            reply = self._eval(self._claim, name, [fingerprint, token, lease, _ms(ttl), key])
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        return self._outcome(key, token, reply)

    def _eval(self, script: Any, name: str, args: list[Any]) -> Any:
        # EVALSHA straight through execute_command (less per-call work than the
        # Script object); the Script reloads itself after a SCRIPT FLUSH.
        try:
            return self._sync().execute_command("EVALSHA", script.sha, 2, name, name + ":c", *args)
        except self._redis.exceptions.NoScriptError:
            return script(keys=[name, name + ":c"], args=args)

    def _call(self, script: Any, key: str, args: list[Any]) -> None:
        try:
            reply = self._eval(script, self.redis_key(key), args)
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        self._fenced(key, reply)

    def complete(self, key: str, token: str, payload: str, ttl: float) -> None:
        self._call(self._complete, key, [f"p\n{token}\n", payload, _ms(ttl)])

    def release(self, key: str, token: str) -> None:
        self._call(self._release, key, [f"p\n{token}\n"])

    def renew(self, key: str, token: str, lease_ttl: float) -> None:
        self._call(self._renew, key, [f"p\n{token}\n", _ms(lease_ttl)])

    def checkpoint(self, key: str, token: str, name: str, data: str) -> None:
        self._call(self._checkpoint, key, [f"p\n{token}\n", name, data])

    # ------------------------------------------------------------------ async

    def _async(self) -> Any:
        if self._aclient is None:
            raise ConfigurationError("async_client", "this RedisStore has only a blocking client")
        return self._aclient

    async def aclaim(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        client = self._async()
        name = self.redis_key(key)
        lease = _ms(lease_ttl)
        record = self._new_record(key, fingerprint, token, ttl)
        try:
            reply = await client.execute_command(
                "SET", name, record, "NX", "PX", lease, "GET", get=True
            )
            if reply is None:
                return Claimed(token)
            outcome = self._fast(key, fingerprint, reply)
            if outcome is not None:
                return outcome
            reply = await self._aeval(
                self._aclaim, name, [fingerprint, token, lease, _ms(ttl), key]
            )
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        return self._outcome(key, token, reply)

    async def _aeval(self, script: Any, name: str, args: list[Any]) -> Any:
        try:
            return await self._async().execute_command(
                "EVALSHA", script.sha, 2, name, name + ":c", *args
            )
        except self._redis.exceptions.NoScriptError:
            return await script(keys=[name, name + ":c"], args=args)

    async def _acall(self, script: Any, key: str, args: list[Any]) -> None:
        try:
            reply = await self._aeval(script, self.redis_key(key), args)
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        self._fenced(key, reply)

    async def acomplete(self, key: str, token: str, payload: str, ttl: float) -> None:
        await self._acall(self._acomplete, key, [f"p\n{token}\n", payload, _ms(ttl)])

    async def arelease(self, key: str, token: str) -> None:
        await self._acall(self._arelease, key, [f"p\n{token}\n"])

    async def arenew(self, key: str, token: str, lease_ttl: float) -> None:
        await self._acall(self._arenew, key, [f"p\n{token}\n", _ms(lease_ttl)])

    async def acheckpoint(self, key: str, token: str, name: str, data: str) -> None:
        await self._acall(self._acheckpoint, key, [f"p\n{token}\n", name, data])

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"
