"""Redis Streams transport (extra ``redis``), sync and asyncio, one shared core.

An entry holds the record as fields: ``v`` (value), ``k`` (key, when there is
one) and ``h:<name>`` per header, so entries stay readable in ``redis-cli``.
Consumer groups give at-least-once delivery: an entry stays in the group's
pending list until XACKed, and entries pending on a consumer that went quiet
for ``claim_idle_ms`` are taken over with XAUTOCLAIM.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from resilience._clock import SYSTEM_CLOCK, Clock
from resilience._errors import (
    ConfigurationError,
    MessagingError,
    PublishError,
    SubscriptionClosedError,
)

from ._common import dead_letter_destination, dead_letter_record, encode_batch
from ._message import Codec, JsonCodec, Message, RawMessage
from ._protocols import Delivery, Router
from ._routing import TopicRouter

__all__ = [
    "AsyncRedisStreamsPublisher",
    "AsyncRedisStreamsSubscription",
    "RedisStreamsPublisher",
    "RedisStreamsSubscription",
]

_JSON: Final = JsonCodec()
_VALUE: Final = b"v"
_KEY: Final = b"k"
_HEADER: Final = b"h:"


def _fields(raw: RawMessage) -> dict[bytes, bytes]:
    fields: dict[bytes, bytes] = {_VALUE: raw.value}
    if raw.key is not None:
        fields[_KEY] = raw.key
    for name, value in raw.headers:
        fields[_HEADER + name.encode()] = value
    return fields


def _raw(fields: Mapping[Any, Any]) -> RawMessage:
    """An entry's fields as a record; foreign fields are ignored (and then fail decoding)."""
    value, key, headers = b"", None, []
    for name, data in fields.items():
        name_b = name if isinstance(name, bytes) else str(name).encode()
        data_b = data if isinstance(data, bytes) else str(data).encode()
        if name_b == _VALUE:
            value = data_b
        elif name_b == _KEY:
            key = data_b
        elif name_b.startswith(_HEADER):
            headers.append((name_b[len(_HEADER) :].decode("utf-8", "replace"), data_b))
    return RawMessage(key=key, value=value, headers=headers)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_client(client: Any, name: str) -> None:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) or {}
    if kwargs.get("decode_responses"):
        raise ConfigurationError(
            name, "must be created with decode_responses=False (records are bytes)"
        )


@dataclass(frozen=True, slots=True)
class _PublishPlan:
    """What to XADD, in order, and how to read the pipeline's replies."""

    entries: list[tuple[str, str, dict[bytes, bytes]]]  # (stream, message id, fields)

    def outcome(self, replies: Sequence[Any]) -> PublishError | None:
        delivered = frozenset(
            mid
            for (_, mid, _), reply in zip(self.entries, replies, strict=False)
            if not isinstance(reply, BaseException)
        )
        errors = [r for r in replies if isinstance(r, BaseException)]
        if len(delivered) == len(self.entries):
            return None
        return PublishError(
            f"Redis acknowledged {len(delivered)} of {len(self.entries)} entries"
            + (f": {errors[0]}" if errors else ""),
            delivered=delivered,
        )


class _PublisherCore:
    __slots__ = (
        "approximate",
        "codec",
        "maxlen",
        "min_replicas",
        "replica_timeout_ms",
        "router",
        "source",
    )

    def __init__(
        self,
        *,
        router: Router | None,
        codec: Codec,
        maxlen: int | None,
        approximate: bool,
        min_replicas: int,
        replica_timeout: float,
        source: str,
    ) -> None:
        if maxlen is not None and (not isinstance(maxlen, int) or maxlen < 1):
            raise ConfigurationError("maxlen", "must be None (no trimming) or an integer >= 1")
        if not isinstance(min_replicas, int) or min_replicas < 0:
            raise ConfigurationError("min_replicas", "must be an integer >= 0")
        if not replica_timeout > 0:
            raise ConfigurationError("replica_timeout", "must be > 0 seconds")
        self.router = router or TopicRouter()
        self.codec = codec
        self.maxlen = maxlen
        self.approximate = approximate
        self.min_replicas = min_replicas
        self.replica_timeout_ms = int(replica_timeout * 1000)
        self.source = source

    def plan(self, messages: Sequence[Message]) -> _PublishPlan:
        encoded = encode_batch(messages, self.router, self.codec, self.source)
        return _PublishPlan([(stream, m.id, _fields(raw)) for stream, m, raw in encoded])

    def xadd_kwargs(self) -> dict[str, Any]:
        return {"maxlen": self.maxlen, "approximate": self.approximate}

    def check_replicas(self, plan: _PublishPlan, acked_by: int) -> None:
        if acked_by < self.min_replicas:
            raise PublishError(
                f"written to the primary but only {acked_by} of {self.min_replicas} replicas "
                "confirmed; a failover could lose it",
                delivered=frozenset(),
            )


class RedisStreamsPublisher:
    """`Publisher` for Redis Streams: one XADD per message, pipelined per batch.

    Each destination is one stream, and a stream is totally ordered, so
    messages sharing a key keep their order.

    Args:
        client: a ``redis.Redis`` created with ``decode_responses=False``.
        router: picks the stream per message (default `TopicRouter()`);
            include any key prefix in the router's template.
        maxlen: trim each stream to about this many entries on every XADD
            (``None``: never trim). Must exceed the longest consumer lag you
            tolerate: a trimmed entry that was never acked is gone.
        approximate: ``MAXLEN ~``, much cheaper for Redis, keeps a few more.
        min_replicas: with replicas, WAIT for this many to confirm the batch;
            otherwise a failover right after the ack can lose it.
    """

    system = "redis"

    __slots__ = ("_core", "client", "closed")

    def __init__(
        self,
        client: Any,
        *,
        router: Router | None = None,
        codec: Codec = _JSON,
        maxlen: int | None = None,
        approximate: bool = True,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
        source: str = "resilience",
    ) -> None:
        _check_client(client, "client")
        self._core = _PublisherCore(
            router=router,
            codec=codec,
            maxlen=maxlen,
            approximate=approximate,
            min_replicas=min_replicas,
            replica_timeout=replica_timeout,
            source=source,
        )
        self.client = client
        self.closed = False

    def publish(self, messages: Sequence[Message], /) -> None:
        if self.closed:
            raise PublishError("publisher is closed")
        plan = self._core.plan(messages)
        if not plan.entries:
            return
        redis = _redis()
        kwargs = self._core.xadd_kwargs()
        pipe = self.client.pipeline(transaction=False)
        for stream, _, fields in plan.entries:
            pipe.xadd(stream, fields, **kwargs)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:  # connection lost: we cannot know what landed
            raise PublishError(f"Redis publish failed: {exc}") from exc
        failure = plan.outcome(replies)
        if failure is not None:
            raise failure
        if self._core.min_replicas:
            try:
                acked_by = int(
                    self.client.wait(self._core.min_replicas, self._core.replica_timeout_ms)
                )
            except redis.RedisError as exc:
                raise PublishError(f"Redis WAIT failed: {exc}") from exc
            self._core.check_replicas(plan, acked_by)

    def close(self) -> None:
        self.closed = True


class AsyncRedisStreamsPublisher:
    """`AsyncPublisher` twin of `RedisStreamsPublisher`, on ``redis.asyncio``."""

    system = "redis"

    __slots__ = ("_core", "client", "closed")

    def __init__(
        self,
        client: Any,
        *,
        router: Router | None = None,
        codec: Codec = _JSON,
        maxlen: int | None = None,
        approximate: bool = True,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
        source: str = "resilience",
    ) -> None:
        _check_client(client, "client")
        self._core = _PublisherCore(
            router=router,
            codec=codec,
            maxlen=maxlen,
            approximate=approximate,
            min_replicas=min_replicas,
            replica_timeout=replica_timeout,
            source=source,
        )
        self.client = client
        self.closed = False

    async def publish(self, messages: Sequence[Message], /) -> None:
        if self.closed:
            raise PublishError("publisher is closed")
        plan = self._core.plan(messages)
        if not plan.entries:
            return
        redis = _redis()
        kwargs = self._core.xadd_kwargs()
        pipe = self.client.pipeline(transaction=False)
        for stream, _, fields in plan.entries:
            pipe.xadd(stream, fields, **kwargs)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise PublishError(f"Redis publish failed: {exc}") from exc
        failure = plan.outcome(replies)
        if failure is not None:
            raise failure
        if self._core.min_replicas:
            try:
                acked_by = int(
                    await self.client.wait(self._core.min_replicas, self._core.replica_timeout_ms)
                )
            except redis.RedisError as exc:
                raise PublishError(f"Redis WAIT failed: {exc}") from exc
            self._core.check_replicas(plan, acked_by)

    async def close(self) -> None:
        self.closed = True


def _redis() -> Any:
    from resilience._optional import require

    return require("redis", "redis")


@contextlib.contextmanager
def _errors(action: str) -> Iterator[None]:
    """Redis client errors as `MessagingError` (the loop's retry logic knows those)."""
    redis = _redis()
    try:
        yield
    except redis.RedisError as exc:
        raise MessagingError(f"Redis Streams {action} failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Token:
    stream: str
    entry_id: str
    fields: Mapping[Any, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(slots=True)
class _SubscriptionCore:
    """Decisions and reply parsing shared by the sync and async subscriptions."""

    streams: tuple[str, ...]
    group: str
    consumer: str
    claim_idle_ms: int
    clock: Clock
    buffer: deque[Delivery] = field(default_factory=deque)
    recovering: dict[str, str] = field(default_factory=dict)  # stream -> own history read up to
    claim_cursor: dict[str, str] = field(default_factory=dict)
    next_claim: float = 0.0
    lost: int = 0  # pending entries trimmed away before anyone acked them
    closed: bool = False

    def __post_init__(self) -> None:
        self.recovering = dict.fromkeys(self.streams, "0")
        self.claim_cursor = dict.fromkeys(self.streams, "0-0")

    def check(self, max_messages: int, timeout: float) -> None:
        if self.closed:
            raise SubscriptionClosedError("the Redis Streams subscription is closed")
        if not isinstance(max_messages, int) or max_messages < 1:
            raise ConfigurationError("max_messages", "must be an integer >= 1")
        if timeout < 0:
            raise ConfigurationError("timeout", "must be >= 0")

    def take(self, max_messages: int) -> list[Delivery]:
        out: list[Delivery] = []
        while self.buffer and len(out) < max_messages:
            out.append(self.buffer.popleft())
        return out

    def lost_group(self, exc: MessagingError) -> bool:
        """The group (or the whole stream) is gone: start over from the stream's
        first entry once it is re-created, reading this consumer's history again."""
        if "NOGROUP" not in str(exc):
            return False
        self.recovering = dict.fromkeys(self.streams, "0")
        self.claim_cursor = dict.fromkeys(self.streams, "0-0")
        return True

    def claim_due(self) -> bool:
        now = self.clock.monotonic()
        if now < self.next_claim:
            return False
        self.next_claim = now + self.claim_idle_ms / 2000
        return True

    def entries(
        self, stream: str, items: Iterable[Any], counts: Mapping[str, int]
    ) -> tuple[list[Delivery], list[str]]:
        """Deliveries for live entries, and ids of entries trimmed while pending."""
        out: list[Delivery] = []
        gone: list[str] = []
        for entry_id, fields in items:
            if entry_id is None:
                continue
            eid = _text(entry_id)
            if not fields:  # deleted by MAXLEN / XDEL while pending: nothing to deliver
                gone.append(eid)
                continue
            out.append(
                Delivery(_raw(fields), stream, _Token(stream, eid, fields), counts.get(eid, 1))
            )
        self.lost += len(gone)
        return out, gone

    def read_streams(self) -> dict[str, str]:
        return {s: self.recovering.get(s, ">") for s in self.streams}

    def read_reply(self, reply: Any) -> dict[str, list[Any]]:
        if not reply:
            return {}
        if isinstance(reply, Mapping):  # RESP3: {stream: [entries]}
            return {
                _text(k): v[0] if v and isinstance(v[0], list) else list(v)
                for k, v in reply.items()
            }
        return {_text(k): list(v) for k, v in reply}

    def history_read(self, replied: Mapping[str, list[Any]]) -> None:
        """Advance through this consumer's own pending entries; once a read of
        the history comes back empty, switch that stream to new entries."""
        for stream in list(self.recovering):
            items = [i for i in replied.get(stream, ()) if i and i[0] is not None]
            if items:
                self.recovering[stream] = _text(items[-1][0])
            else:
                del self.recovering[stream]

    def pending_counts(self, pending: Iterable[Mapping[str, Any]]) -> dict[str, int]:
        return {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}

    def group_ack(self, deliveries: Sequence[Delivery]) -> dict[str, list[str]]:
        by_stream: dict[str, list[str]] = {}
        for delivery in deliveries:
            token = delivery.token
            if not isinstance(token, _Token):
                raise MessagingError(f"{delivery!r} was not received from Redis Streams")
            by_stream.setdefault(token.stream, []).append(token.entry_id)
        return by_stream

    def dead_letter_fields(
        self, delivery: Delivery, reason: str
    ) -> tuple[str, str, dict[bytes, bytes]]:
        token = delivery.token
        if not isinstance(token, _Token):
            raise MessagingError(f"{delivery!r} was not received from Redis Streams")
        record = dead_letter_record(
            delivery.raw,
            reason,
            topic=token.stream,
            offset=token.entry_id,
            delivery_count=delivery.delivery_count,
        )
        # The entry's own fields, untouched (foreign ones too), plus the dlq headers.
        dlq_fields = {
            (k if isinstance(k, bytes) else str(k).encode()): (
                v if isinstance(v, bytes) else str(v).encode()
            )
            for k, v in token.fields.items()
        }
        dlq_fields.update(
            (_HEADER + name.encode(), value)
            for name, value in record.headers
            if name.startswith("dlq-")
        )
        return dead_letter_destination(token.stream), token.entry_id, dlq_fields


def _subscription_core(
    *,
    client: Any,
    streams: str | Iterable[str],
    group: str,
    consumer_name: str,
    claim_idle_ms: int,
    clock: Clock,
) -> _SubscriptionCore:
    _check_client(client, "client")
    names = (streams,) if isinstance(streams, str) else tuple(streams)
    if not names or not all(isinstance(s, str) and s for s in names):
        raise ConfigurationError("streams", "must be one or more non-empty stream names")
    if not isinstance(group, str) or not group:
        raise ConfigurationError("group", "must be a non-empty string")
    if not isinstance(consumer_name, str) or not consumer_name:
        raise ConfigurationError(
            "consumer_name", "must be a non-empty string, stable across restarts of this worker"
        )
    if not isinstance(claim_idle_ms, int) or claim_idle_ms < 1:
        raise ConfigurationError("claim_idle_ms", "must be an integer >= 1 (milliseconds)")
    return _SubscriptionCore(names, group, consumer_name, claim_idle_ms, clock)


class RedisStreamsSubscription:
    """One consumer of a Redis Streams consumer group (a `Subscription`).

    * Creates the group (and the stream) if missing, starting from the first
      entry, so nothing published before the first consumer started is missed.
    * On start it first re-reads its own pending entries (a restart with the
      same *consumer_name* resumes what it held), then new ones.
    * Every ``claim_idle_ms / 2`` it takes over entries pending on other
      consumers for longer than ``claim_idle_ms`` (XAUTOCLAIM): a crashed
      worker's entries are redelivered, with ``delivery_count`` from XPENDING.
    * ``dead_letter`` adds the entry (fields untouched, plus ``h:dlq-*``
      headers) to ``<stream>.dlq`` and XACKs it in one MULTI/EXEC.
    * ``close`` only stops reading: entries still pending are reclaimed by the
      other consumers after ``claim_idle_ms``. It never deletes the consumer,
      which would drop its pending entries.

    Order: a stream is totally ordered, but a group with several consumers
    spreads its entries over them, so per-key order holds with one active
    consumer per stream (use several streams, routed by key, to scale out).

    Args:
        client: ``redis.Redis(decode_responses=False)``.
        streams: stream name(s) to consume.
        group: consumer group name.
        consumer_name: this worker's name in the group; keep it stable.
        claim_idle_ms: how long an entry may sit unacked on a consumer before
            another takes it. Longer than your slowest handler.
        clock: schedules the reclaim passes.
    """

    system = "redis"

    __slots__ = ("_core", "client", "group")

    def __init__(
        self,
        client: Any,
        streams: str | Iterable[str],
        group: str,
        consumer_name: str,
        *,
        claim_idle_ms: int = 30_000,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._core = _subscription_core(
            client=client,
            streams=streams,
            group=group,
            consumer_name=consumer_name,
            claim_idle_ms=claim_idle_ms,
            clock=clock,
        )
        self.client = client
        self.group = group
        self._create_groups()

    @property
    def lost(self) -> int:
        """Pending entries found trimmed (MAXLEN too small for the lag): they are gone."""
        return self._core.lost

    def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        core = self._core
        core.check(max_messages, timeout)
        if core.buffer:
            return core.take(max_messages)
        try:
            with _errors("receive"):
                if core.claim_due():
                    for stream in core.streams:
                        self._claim(stream, max_messages)
                while not core.buffer:
                    replaying = bool(core.recovering)
                    self._read(max_messages, timeout)
                    if not replaying:
                        break  # else: history just ran out, so read new entries now
        except MessagingError as exc:
            if core.lost_group(exc):  # Redis restarted without persistence, or the key was deleted
                with contextlib.suppress(MessagingError):
                    self._create_groups()
            raise
        return core.take(max_messages)

    def _create_groups(self) -> None:
        redis = _redis()
        for stream in self._core.streams:
            with _errors("group creation"):
                try:
                    self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    def _claim(self, stream: str, count: int) -> None:
        core = self._core
        reply = self.client.xautoclaim(
            stream,
            core.group,
            core.consumer,
            core.claim_idle_ms,
            core.claim_cursor[stream],
            count=count,
        )
        core.claim_cursor[stream] = _text(reply[0])
        entries = [e for e in reply[1] if e and e[0] is not None]
        if entries:
            pending = self.client.xpending_range(
                stream,
                core.group,
                _text(entries[0][0]),
                _text(entries[-1][0]),
                len(entries),
                core.consumer,
            )
            deliveries, _ = core.entries(stream, entries, core.pending_counts(pending))
            core.buffer.extend(deliveries)
        if len(reply) > 2 and reply[2]:
            core.lost += len(reply[2])  # XAUTOCLAIM already dropped them from the PEL

    def _read(self, count: int, timeout: float) -> None:
        core = self._core
        streams = core.read_streams()
        history = any(v != ">" for v in streams.values())
        block = None if history or timeout <= 0 else max(1, int(timeout * 1000))
        reply = self.client.xreadgroup(core.group, core.consumer, streams, count=count, block=block)
        replied = core.read_reply(reply)
        for stream, items in replied.items():
            counts: dict[str, int] = {}
            if stream in core.recovering and items:
                live = [i for i in items if i[1]]
                if live:
                    pending = self.client.xpending_range(
                        stream,
                        core.group,
                        _text(live[0][0]),
                        _text(live[-1][0]),
                        len(items),
                        core.consumer,
                    )
                    counts = core.pending_counts(pending)
            deliveries, gone = core.entries(stream, items, counts)
            if gone:
                self.client.xack(stream, core.group, *gone)
            core.buffer.extend(deliveries)
        core.history_read(replied)

    def ack(self, deliveries: Sequence[Delivery], /) -> None:
        by_stream = self._core.group_ack(deliveries)
        if not by_stream:
            return
        pipe = self.client.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.group, *ids)
        with _errors("ack"):
            pipe.execute()

    def dead_letter(self, delivery: Delivery, reason: str, /) -> None:
        dlq, entry_id, fields = self._core.dead_letter_fields(delivery, reason)
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(dlq, fields)
        pipe.xack(delivery.token.stream, self.group, entry_id)
        with _errors("dead-letter"):
            pipe.execute()

    def close(self) -> None:
        self._core.closed = True

    def __enter__(self) -> RedisStreamsSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRedisStreamsSubscription:
    """`AsyncSubscription` twin of `RedisStreamsSubscription`, on ``redis.asyncio``.

    Call ``await subscription.start()`` (or use ``async with``) once before
    receiving: it creates the consumer group.
    """

    system = "redis"

    __slots__ = ("_core", "_started", "client", "group")

    def __init__(
        self,
        client: Any,
        streams: str | Iterable[str],
        group: str,
        consumer_name: str,
        *,
        claim_idle_ms: int = 30_000,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._core = _subscription_core(
            client=client,
            streams=streams,
            group=group,
            consumer_name=consumer_name,
            claim_idle_ms=claim_idle_ms,
            clock=clock,
        )
        self.client = client
        self.group = group
        self._started = False

    @property
    def lost(self) -> int:
        """Pending entries found trimmed (MAXLEN too small for the lag): they are gone."""
        return self._core.lost

    async def start(self) -> None:
        """Create the consumer group (idempotent); ``receive`` calls it if needed."""
        redis = _redis()
        for stream in self._core.streams:
            try:
                await self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._started = True

    async def receive(
        self,
        max_messages: int,
        timeout: float,  # noqa: ASYNC109 - a broker poll timeout, part of the protocol
    ) -> Sequence[Delivery]:
        core = self._core
        core.check(max_messages, timeout)
        if not self._started:
            with _errors("group creation"):
                await self.start()
        if core.buffer:
            return core.take(max_messages)
        try:
            with _errors("receive"):
                if core.claim_due():
                    for stream in core.streams:
                        await self._claim(stream, max_messages)
                while not core.buffer:
                    replaying = bool(core.recovering)
                    await self._read(max_messages, timeout)
                    if not replaying:
                        break  # else: history just ran out, so read new entries now
        except MessagingError as exc:
            if core.lost_group(exc):
                self._started = False  # the next receive creates the group again
            raise
        return core.take(max_messages)

    async def _claim(self, stream: str, count: int) -> None:
        core = self._core
        reply = await self.client.xautoclaim(
            stream,
            core.group,
            core.consumer,
            core.claim_idle_ms,
            core.claim_cursor[stream],
            count=count,
        )
        core.claim_cursor[stream] = _text(reply[0])
        entries = [e for e in reply[1] if e and e[0] is not None]
        if entries:
            pending = await self.client.xpending_range(
                stream,
                core.group,
                _text(entries[0][0]),
                _text(entries[-1][0]),
                len(entries),
                core.consumer,
            )
            deliveries, _ = core.entries(stream, entries, core.pending_counts(pending))
            core.buffer.extend(deliveries)
        if len(reply) > 2 and reply[2]:
            core.lost += len(reply[2])

    async def _read(self, count: int, wait: float) -> None:
        core = self._core
        streams = core.read_streams()
        history = any(v != ">" for v in streams.values())
        block = None if history or wait <= 0 else max(1, int(wait * 1000))
        reply = await self.client.xreadgroup(
            core.group, core.consumer, streams, count=count, block=block
        )
        replied = core.read_reply(reply)
        for stream, items in replied.items():
            counts: dict[str, int] = {}
            if stream in core.recovering and items:
                live = [i for i in items if i[1]]
                if live:
                    pending = await self.client.xpending_range(
                        stream,
                        core.group,
                        _text(live[0][0]),
                        _text(live[-1][0]),
                        len(items),
                        core.consumer,
                    )
                    counts = core.pending_counts(pending)
            deliveries, gone = core.entries(stream, items, counts)
            if gone:
                await self.client.xack(stream, core.group, *gone)
            core.buffer.extend(deliveries)
        core.history_read(replied)

    async def ack(self, deliveries: Sequence[Delivery], /) -> None:
        by_stream = self._core.group_ack(deliveries)
        if not by_stream:
            return
        pipe = self.client.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.group, *ids)
        with _errors("ack"):
            await pipe.execute()

    async def dead_letter(self, delivery: Delivery, reason: str, /) -> None:
        dlq, entry_id, fields = self._core.dead_letter_fields(delivery, reason)
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(dlq, fields)
        pipe.xack(delivery.token.stream, self.group, entry_id)
        with _errors("dead-letter"):
            await pipe.execute()

    async def close(self) -> None:
        self._core.closed = True

    async def __aenter__(self) -> AsyncRedisStreamsSubscription:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
