"""Redis store: one plain command to claim or replay, one plain transaction to complete.

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
over goes on to the claim script, in a second round trip.

Completion is fenced by the owner token. With a blocking ``redis.Redis``, the
claim's round trip also sends ``WATCH key`` on a connection of the store's own,
which the claim keeps until it settles; completing is then ``MULTI``, ``SET``,
``EXEC`` on it, and ``EXEC`` refuses when anyone touched the key since the
claim (a takeover, our lease's expiry, a checkpoint, a renewal), in which case
the fenced script decides. Async and Cluster clients run that script directly.
The scripts compare a prefix and rewrite one string: they never decode JSON.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resilience._errors import (
    ConfigurationError,
    IdempotencyError,
    IdempotencyLeaseLostError,
    IdempotencyRecordError,
)
from resilience._optional import require

from . import _core
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

# ARGV: "p\n<token>\n", payload, ttl ms, token. No pattern match: a prefix
# comparison, one find for the end of the fingerprint, one SET. A done record
# keeps the token, so a completion resent after a lost reply (same owner, same
# payload) succeeds; any other rewrite of a done record is refused.
_COMPLETE = r"""
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local n = #ARGV[1]
local head = string.sub(v, 1, n)
if head ~= ARGV[1] then
  if head == 'd' .. string.sub(ARGV[1], 2) and string.sub(v, -#ARGV[2]) == ARGV[2] then return 1 end
  return 0
end
local e = string.find(v, '\n', n + 1, true)
if not e then return 0 end
redis.call('SET', KEYS[1], 'd\n' .. ARGV[4] .. '\n' .. string.sub(v, n + 1, e) .. '\n\n' .. ARGV[2], 'PX', ARGV[3])
if string.byte(v, e + 1) ~= 10 then redis.call('DEL', KEYS[2]) end
return 1
"""

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

_SOURCES = {"claim": _CLAIM, "complete": _COMPLETE, "release": _RELEASE, "renew": _RENEW}
_SOURCES["checkpoint"] = _CHECKPOINT
_SHA = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in _SOURCES.items()}  # noqa: S324 - Redis names scripts by SHA-1

# Fork generation: connections opened before a fork() belong to the parent.
_FORKS = [0]


def _forked() -> None:
    _FORKS[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)

# The store opens at most the client pool's max_connections of its own, and never more than this.
_MAX_CONNECTIONS = 1024


@dataclass(slots=True)
class _Held:
    """A claimed key's connection, WATCHing the record since the claim wrote it."""

    conn: Any
    name: str
    fingerprint: str
    touched: bool = False  # a checkpoint or renewal went through: EXEC would refuse


class _Direct:
    """The store's own blocking connections, opened with the client's settings.

    They are ours, not the client's pool's, because a claim leaves a ``WATCH``
    on its connection: a pooled connection carrying one could abort the
    application's own ``MULTI``/``EXEC``. An idle connection remembers whether
    it still watches something, and its next batch starts with ``UNWATCH``.
    At most ``limit`` are open (the client pool's ``max_connections``): when
    all are busy, the oldest claim gives its connection up (its completion
    then goes through the fenced script), and when none can, `take` returns
    None and the caller goes through the client's own pool.
    Renewals use separate connections with a socket timeout, so a stalled
    server cannot freeze the shared heartbeat thread.
    """

    __slots__ = (
        "_cls",
        "_gen",
        "_idle",
        "_kwargs",
        "_lock",
        "_open",
        "_renew_kwargs",
        "_renewers",
        "errors",
        "held",
        "limit",
    )

    def __init__(self, pool: Any, errors: Any, renew_timeout: float) -> None:
        self._cls = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        self._renew_kwargs = {
            **self._kwargs,
            "socket_timeout": renew_timeout,
            "socket_connect_timeout": renew_timeout,
        }
        self.errors = errors
        self._gen = _FORKS[0]
        self._idle: collections.deque[tuple[Any, bool]] = collections.deque()
        self._renewers: collections.deque[Any] = collections.deque()
        self.held: dict[str, _Held] = {}
        self.limit = max(1, min(int(getattr(pool, "max_connections", 0) or 0), _MAX_CONNECTIONS))
        self._open = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[Any, bool] | None:
        """A connection and whether it still WATCHes a key; None when all are busy."""
        if self._gen != _FORKS[0]:  # the parent's sockets are not ours to use
            self._gen, self._open, self._lock = _FORKS[0], 0, threading.Lock()
            self._idle, self._renewers, self.held = collections.deque(), collections.deque(), {}
        try:
            return self._idle.pop()
        except IndexError:
            pass
        with self._lock:
            opened = self._open < self.limit
            if opened:
                self._open += 1
        if opened:
            return self._cls(**self._kwargs), False
        stale = self._evict()
        return None if stale is None else (stale.conn, True)

    def _evict(self) -> _Held | None:
        """The oldest claim's connection, taken back (that claim settles by the script)."""
        held = self.held
        for _ in range(4):
            try:
                return held.pop(next(iter(held)))
            except StopIteration:
                return None
            except (RuntimeError, KeyError):  # raced with a settling claim
                continue
        return None

    def give(self, conn: Any, watching: bool) -> None:
        self._idle.append((conn, watching))

    def exchange(
        self, conn: Any, commands: list[tuple[Any, ...]], *, check_health: bool = True
    ) -> list[Any]:
        """Send *commands* in one write and read every reply (error replies as values).

        On any error the connection is closed (redis-py reconnects it on next
        use), so no unread reply is left to answer someone else's command.
        """
        conn.send_packed_command(conn.pack_commands(commands), check_health=check_health)
        replies = []
        try:
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except self.errors.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        return replies

    def renew_run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        try:
            conn = self._renewers.pop()
        except IndexError:
            conn = self._cls(**self._renew_kwargs)
        try:
            return self.exchange(conn, commands)
        finally:
            self._renewers.append(conn)

    def close(self) -> None:
        conns = [c for c, _ in self._idle] + [h.conn for h in self.held.values()]
        self._idle.clear()
        self.held.clear()
        with self._lock:
            self._open = max(0, self._open - len(conns))
        conns += self._renewers
        self._renewers.clear()
        for conn in conns:
            conn.disconnect()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore:
    """Idempotency records in Redis (standalone or Cluster, Redis 7+), sync and async.

    Pass a ``redis.Redis`` as *client* for blocking code, a ``redis.asyncio.Redis``
    as *async_client* for async code, or both. A claim or a replay is one plain
    ``SET NX GET`` (a second round trip, a script, only when the key is running
    or being taken over). Completing is one round trip: with a blocking
    ``redis.Redis``, a ``MULTI``/``SET``/``EXEC`` guarded by the ``WATCH`` the
    claim placed (the store opens connections of its own for that, with the
    client's settings, at most its pool's ``max_connections``; `close` closes
    them); otherwise a short ``EVALSHA``.
    Leases and expiries use the server's clock (key expiry and ``TIME``), so
    callers' clocks never matter. A record and its checkpoints share a
    ``{hash tag}``, so they live in one Cluster slot. Clients may use
    ``decode_responses`` either way.

    Renewals (the heartbeat) give up after *renew_timeout* seconds: on the
    blocking client's store connections by a socket timeout, on async clients
    by the heartbeat's own timeout. Cluster clients use their own settings.
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
        "_direct",
        "_last",
        "_redis",
        "_release",
        "_renew",
        "prefix",
        "renew_timeout",
    )

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        async_client: redis.asyncio.Redis | None = None,
        prefix: str = "idem:",
        renew_timeout: float = 5.0,
    ) -> None:
        if client is None and async_client is None:
            raise ConfigurationError("client", "pass a redis.Redis and/or an async_client")
        if not isinstance(prefix, str):
            raise ConfigurationError("prefix", "must be a string")
        _core.positive("renew_timeout", renew_timeout)
        self._redis = require("redis", "redis")
        self.prefix = prefix
        self.renew_timeout = renew_timeout
        self._last: tuple[str | None, str, str] = (None, "", prefix)
        self._client = client
        self._aclient = async_client
        self._direct: _Direct | None = None
        if client is not None:
            self._claim = client.register_script(_CLAIM)
            self._complete = client.register_script(_COMPLETE)
            self._release = client.register_script(_RELEASE)
            self._renew = client.register_script(_RENEW)
            self._checkpoint = client.register_script(_CHECKPOINT)
            pool = getattr(client, "connection_pool", None)
            if (
                isinstance(client, self._redis.Redis)
                and type(pool) in {self._redis.ConnectionPool, self._redis.BlockingConnectionPool}
                and getattr(pool, "cache", None) is None
            ):
                self._direct = _Direct(pool, self._redis.exceptions, renew_timeout)
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

    def close(self) -> None:
        """Close the store's own connections (the clients you passed stay open)."""
        if self._direct is not None:
            self._direct.close()

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

    def _fast(self, key: str, fingerprint: str, token: str, reply: Any) -> ClaimOutcome | None:
        """The outcome of ``SET NX GET``'s reply (the existing record), or None: ask the script."""
        if isinstance(reply, Exception):
            raise self._wrong_type(key, reply)
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
        if parts[0] == "p" and parts[1] == token and not parts[3]:
            return Claimed(token)  # our own claim, sent again after a lost reply
        return None

    def _corrupt(self, key: str) -> IdempotencyRecordError:
        return IdempotencyRecordError(
            key, f"stored record for idempotency key {key!r} is corrupted (not a valid record)"
        )

    def _outcome(self, key: str, token: str, reply: Any) -> ClaimOutcome:
        if isinstance(reply, Exception):
            raise self._wrong_type(key, reply)
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
        if isinstance(reply, Exception):
            raise self._wrong_type(key, reply)
        if int(reply) != 1:
            raise IdempotencyLeaseLostError(key)

    def _wrong_type(self, key: str, exc: Exception) -> IdempotencyRecordError:
        return IdempotencyRecordError(key, f"Redis refused the record of key {key!r}: {exc}")

    def _sync(self) -> Any:
        if self._client is None:
            raise ConfigurationError("client", "this RedisStore has only an async client")
        return self._client

    @staticmethod
    def _ok(reply: Any) -> bool:
        """Whether an ``EXEC`` reply says the transaction ran (``None``: WATCH refused it)."""
        return isinstance(reply, list) and len(reply) == 1 and reply[0] in {b"OK", "OK", 1}

    # ------------------------------------------------------------------ blocking

    def claim(
        self, key: str, fingerprint: str, token: str, lease_ttl: float, ttl: float
    ) -> ClaimOutcome:
        client = self._sync()
        name = self.redis_key(key)
        lease = _ms(lease_ttl)
        record = self._new_record(key, fingerprint, token, ttl)
        direct = self._direct
        if direct is not None:
            taken = direct.take()
            if taken is not None:
                return self._direct_claim(
                    direct, taken, key, name, record, fingerprint, token, lease, ttl
                )
        try:
            reply = client.execute_command("SET", name, record, "NX", "PX", lease, "GET", get=True)
            if reply is None:
                return Claimed(token)
            outcome = self._fast(key, fingerprint, token, reply)
            if outcome is not None:
                return outcome
            reply = self._eval("claim", name, [fingerprint, token, lease, _ms(ttl), key])
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        return self._outcome(key, token, reply)

    def _direct_claim(  # noqa: PLR0917 - the hot path, arguments already computed
        self,
        direct: _Direct,
        taken: tuple[Any, bool],
        key: str,
        name: str,
        record: str,
        fingerprint: str,
        token: str,
        lease: int,
        ttl: float,
    ) -> ClaimOutcome:
        commands: list[tuple[Any, ...]] = [
            ("SET", name, record, "NX", "PX", lease, "GET"),
            ("WATCH", name),
        ]
        conn, watching = taken
        for attempt in (1, 2):  # once more on a fresh socket: a resent claim finds itself
            try:
                replies = direct.exchange(conn, [("UNWATCH",), *commands] if watching else commands)
            except BaseException as exc:  # `exchange` closed it; redis-py reconnects on next use
                if attempt == 2 or not isinstance(
                    exc, (self._redis.ConnectionError, self._redis.TimeoutError)
                ):
                    direct.give(conn, False)
                    raise
                watching = False
                continue
            break
        reply = replies[-2]
        if reply is None:
            direct.held[token] = _Held(conn, name, fingerprint)
            return Claimed(token)
        try:
            outcome = self._fast(key, fingerprint, token, reply)
            if type(outcome) is Claimed:
                direct.held[token] = _Held(conn, name, fingerprint)
                return outcome
            if outcome is not None:
                direct.give(conn, True)
                return outcome
            reply = self._script(
                direct, conn, "claim", name, [fingerprint, token, lease, _ms(ttl), key]
            )
        except BaseException:
            direct.give(conn, True)
            raise
        direct.give(conn, True)
        return self._outcome(key, token, reply)

    def _script(self, direct: _Direct, conn: Any, script: str, name: str, args: list[Any]) -> Any:
        keys = (2, name, name + ":c")
        (reply,) = direct.exchange(conn, [("EVALSHA", _SHA[script], *keys, *args)])
        if isinstance(reply, self._redis.exceptions.NoScriptError):  # after SCRIPT FLUSH
            (reply,) = direct.exchange(conn, [("EVAL", _SOURCES[script], *keys, *args)])
        return reply

    def _eval(self, script: str, name: str, args: list[Any]) -> Any:
        # EVALSHA straight through execute_command (less per-call work than the
        # Script object); the Script reloads itself after a SCRIPT FLUSH.
        try:
            return self._sync().execute_command(
                "EVALSHA", _SHA[script], 2, name, name + ":c", *args
            )
        except self._redis.exceptions.NoScriptError:
            obj = getattr(self, f"_{script}")
            return obj(keys=[name, name + ":c"], args=args)

    def _call(self, script: str, key: str, args: list[Any], *, renewal: bool = False) -> None:
        name = self.redis_key(key)
        direct = self._direct
        taken = None if direct is None or renewal else direct.take()
        if direct is None or (taken is None and not renewal):
            try:
                reply = self._eval(script, name, args)
            except self._redis.ResponseError as exc:
                raise self._wrong_type(key, exc) from exc
        elif renewal:
            (reply,) = direct.renew_run([("EVALSHA", _SHA[script], 2, name, name + ":c", *args)])
            if isinstance(reply, self._redis.exceptions.NoScriptError):
                (reply,) = direct.renew_run(
                    [("EVAL", _SOURCES[script], 2, name, name + ":c", *args)]
                )
        else:
            assert taken is not None
            conn, watching = taken
            try:
                reply = self._script(direct, conn, script, name, args)
            finally:
                direct.give(conn, watching)
        self._fenced(key, reply)

    def _settle(self, key: str, token: str, commands: list[tuple[Any, ...]]) -> bool:
        """Run *commands* in the claim's WATCHed transaction; False: the script must decide."""
        direct = self._direct
        held = None if direct is None else direct.held.pop(token, None)
        if held is None or direct is None:
            return False
        conn = held.conn
        if held.touched or held.name != self.redis_key(key):
            direct.give(conn, True)
            return False
        # A closed connection would reconnect without the WATCH, and so would a
        # failed health check: EXEC would then run unfenced. Neither may happen.
        if getattr(conn, "_sock", None) is None:
            direct.give(conn, False)
            return False
        try:
            replies = direct.exchange(conn, [("MULTI",), *commands, ("EXEC",)], check_health=False)
        except BaseException as exc:
            direct.give(conn, False)  # closed; the script will tell whether EXEC ran
            if isinstance(exc, (self._redis.ConnectionError, self._redis.TimeoutError)):
                return False
            raise
        direct.give(conn, False)  # EXEC ends the WATCH, whether it ran or not
        return self._ok(replies[-1])

    def _touch(self, token: str) -> None:
        held = None if self._direct is None else self._direct.held.get(token)
        if held is not None:
            held.touched = True

    def complete(self, key: str, token: str, payload: str, ttl: float) -> None:
        direct = self._direct
        if direct is not None:
            held = direct.held.get(token)
            if held is not None:
                done = f"d\n{token}\n{held.fingerprint}\n\n\n{payload}"
                if self._settle(key, token, [("SET", held.name, done, "PX", _ms(ttl))]):
                    return
        self._call("complete", key, [f"p\n{token}\n", payload, _ms(ttl), token])

    def release(self, key: str, token: str) -> None:
        if self._direct is not None and self._settle(key, token, [("DEL", self.redis_key(key))]):
            return
        self._call("release", key, [f"p\n{token}\n"])

    def renew(self, key: str, token: str, lease_ttl: float) -> None:
        self._touch(token)
        self._call("renew", key, [f"p\n{token}\n", _ms(lease_ttl)], renewal=True)

    def checkpoint(self, key: str, token: str, name: str, data: str) -> None:
        self._touch(token)
        self._call("checkpoint", key, [f"p\n{token}\n", name, data])

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
            outcome = self._fast(key, fingerprint, token, reply)
            if outcome is not None:
                return outcome
            reply = await self._aeval("claim", name, [fingerprint, token, lease, _ms(ttl), key])
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        return self._outcome(key, token, reply)

    async def _aeval(self, script: str, name: str, args: list[Any]) -> Any:
        try:
            return await self._async().execute_command(
                "EVALSHA", _SHA[script], 2, name, name + ":c", *args
            )
        except self._redis.exceptions.NoScriptError:
            obj = getattr(self, f"_a{script}")
            return await obj(keys=[name, name + ":c"], args=args)

    async def _acall(self, script: str, key: str, args: list[Any]) -> None:
        try:
            reply = await self._aeval(script, self.redis_key(key), args)
        except self._redis.ResponseError as exc:
            raise self._wrong_type(key, exc) from exc
        self._fenced(key, reply)

    async def acomplete(self, key: str, token: str, payload: str, ttl: float) -> None:
        await self._acall("complete", key, [f"p\n{token}\n", payload, _ms(ttl), token])

    async def arelease(self, key: str, token: str) -> None:
        await self._acall("release", key, [f"p\n{token}\n"])

    async def arenew(self, key: str, token: str, lease_ttl: float) -> None:
        await self._acall("renew", key, [f"p\n{token}\n", _ms(lease_ttl)])

    async def acheckpoint(self, key: str, token: str, name: str, data: str) -> None:
        await self._acall("checkpoint", key, [f"p\n{token}\n", name, data])

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"
