"""The fast paths added for speed must agree with the general ones they shortcut."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience._errors import IdempotencyLeaseLostError, IdempotencyRecordError
from resilience.idempotency import (
    Claimed,
    Completed,
    InProgress,
    MemoryStore,
    Mismatch,
    RedisStore,
    idempotent,
)
from resilience.idempotency._core import field_labels, fingerprint, fingerprint_fields
from resilience.idempotency._decorator import _token

FP, OTHER_FP = "a" * 64, "b" * 64

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(), scalars, max_size=3)


@given(st.dictionaries(st.text(), values, max_size=6), st.sets(st.text(), max_size=3))
def test_flat_fingerprint_equals_the_canonical_one(
    bound: dict[str, Any], missing: set[str]
) -> None:
    # Stored fingerprints must stay valid: the shortcut writes the same bytes.
    names = set(bound) | missing  # fields absent from the call are skipped by both
    present = {k: v for k, v in bound.items() if k in names}
    assert fingerprint_fields(bound, field_labels(names)) == fingerprint(present)


def test_flat_fingerprint_keeps_types_apart() -> None:
    labels = field_labels(["x"])
    seen = {fingerprint_fields({"x": v}, labels) for v in (1, True, 1.0, "1", None, [1])}
    assert len(seen) == 6


def test_tokens_are_unique() -> None:
    tokens = [_token() for _ in range(10_000)]
    assert len(set(tokens)) == len(tokens)
    assert all(t and "\n" not in t for t in tokens)


# --------------------------------------------------------------------------- memory store


def test_memory_replay_without_the_lock_respects_expiry_and_fingerprint() -> None:
    from resilience.testing import FakeClock

    clock = FakeClock()
    store = MemoryStore(clock)
    store.claim("k", FP, "t1", 5, 10)
    store.complete("k", "t1", "r1", 10)
    first = store.claim("k", FP, "t2", 5, 10)
    assert first == Completed("r1")
    assert store.claim("k", OTHER_FP, "t3", 5, 10) == Mismatch()
    clock.advance(10.5)
    assert store.claim("k", OTHER_FP, "t4", 5, 10) == Claimed("t4")


# --------------------------------------------------------------------------- redis store


class _Counting:
    """A redis.Redis that records the name of every command it sends."""

    def __init__(self, client: Any) -> None:
        self.sent: list[str] = []
        self._client = client

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]).upper())
        return self._client.execute_command(*args, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture
def counting(redis_client: Any, redis_prefix: str) -> tuple[RedisStore, _Counting]:
    client = _Counting(redis_client)
    store = RedisStore(client, prefix=redis_prefix)  # type: ignore[arg-type]
    return store, client


def test_redis_round_trips_through_a_wrapped_client(counting: tuple[RedisStore, _Counting]) -> None:
    store, client = counting  # not a redis.Redis: the generic path, scripts for settling
    assert store.claim("k", FP, "t1", 30, 60) == Claimed("t1")
    assert client.sent == ["SET"]  # a new key: one plain command, no script
    store.complete("k", "t1", "r1", 60)
    assert client.sent == ["SET", "EVALSHA"]
    client.sent.clear()
    assert store.claim("k", FP, "t2", 30, 60) == Completed("r1")
    assert store.claim("k", OTHER_FP, "t3", 30, 60) == Mismatch()
    assert client.sent == ["SET", "SET"]  # replay and mismatch: one plain command each
    client.sent.clear()
    store.claim("busy", FP, "t1", 30, 60)
    assert isinstance(store.claim("busy", FP, "t2", 30, 60), InProgress)
    assert client.sent == ["SET", "SET", "EVALSHA"]  # only a running key asks the script


@pytest.fixture
def batches(
    redis_client: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RedisStore, list[list[str]]]]:
    """A store on a real redis.Redis, recording each round trip's command names."""
    from resilience.idempotency import _redis

    sent: list[list[str]] = []
    exchange = _redis._Direct.exchange

    def record(self: Any, conn: Any, commands: list[tuple[Any, ...]], **kwargs: Any) -> list[Any]:
        sent.append([str(c[0]) for c in commands])
        return exchange(self, conn, commands, **kwargs)

    # The steady state: the server already knows the scripts. On a freshly started
    # Redis, the first call of each would add an EVAL round trip (the NOSCRIPT path,
    # tested on its own in test_redis_reloads_a_flushed_script).
    for source in _redis._SOURCES.values():
        redis_client.script_load(source)
    monkeypatch.setattr(_redis._Direct, "exchange", record)
    store = RedisStore(redis_client, prefix=redis_prefix)
    assert store._direct is not None
    yield store, sent
    store.close()


def test_redis_round_trips(batches: tuple[RedisStore, list[list[str]]]) -> None:
    store, sent = batches
    assert store.claim("k", FP, "t1", 30, 60) == Claimed("t1")
    store.complete("k", "t1", "r1", 60)
    # a new key: two round trips and no script; the claim's WATCH fences the completion
    assert sent == [["SET", "WATCH"], ["MULTI", "SET", "EXEC"]]
    sent.clear()
    assert store.claim("k", FP, "t2", 30, 60) == Completed("r1")
    assert store.claim("k", OTHER_FP, "t3", 30, 60) == Mismatch()
    # replay and mismatch: one round trip each; a connection left watching says UNWATCH first
    assert [b[-2] for b in sent] == ["SET", "SET"]
    sent.clear()
    store.claim("busy", FP, "t1", 30, 60)
    assert isinstance(store.claim("busy", FP, "t2", 30, 60), InProgress)
    assert [b[-1] for b in sent] == [
        "WATCH",
        "WATCH",
        "EVALSHA",
    ]  # only a running key asks the script
    sent.clear()
    store.checkpoint("busy", "t1", "step", "1")
    store.complete("busy", "t1", "r", 60)
    assert [b[-1] for b in sent] == ["EVALSHA", "EVALSHA"]  # a checkpoint moved the record: script
    store.claim("gone", FP, "t1", 30, 60)
    store.release("gone", "t1")
    assert sent[-1] == ["MULTI", "DEL", "EXEC"]
    assert store.claim("gone", OTHER_FP, "t2", 30, 60) == Claimed("t2")


def test_redis_completion_never_overwrites_a_takeover(redis_client: Any, redis_prefix: str) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix)
    other = RedisStore(redis_client, prefix=redis_prefix)
    try:
        store.claim("k", FP, "t1", 0.2, 60)
        time.sleep(0.3)  # the lease lapses on the server's clock
        assert other.claim("k", FP, "t2", 30, 60) == Claimed("t2")
        with pytest.raises(IdempotencyLeaseLostError):
            store.complete("k", "t1", "late", 60)  # EXEC refuses; the script confirms
        other.complete("k", "t2", "mine", 60)
        assert store.claim("k", FP, "t3", 30, 60) == Completed("mine")
        # lapsed and nobody claimed: still refused, the key is free again
        store.claim("k2", FP, "t1", 0.2, 60)
        time.sleep(0.3)
        with pytest.raises(IdempotencyLeaseLostError):
            store.complete("k2", "t1", "late", 60)
        assert store.claim("k2", OTHER_FP, "t4", 30, 60) == Claimed("t4")
    finally:
        store.close()
        other.close()


def test_redis_completion_is_retry_safe_and_survives_a_dropped_connection(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix)
    try:
        store.claim("k", FP, "t1", 30, 60)
        direct = store._direct
        assert direct is not None
        direct.held["t1"].conn.disconnect()  # the claim's connection dies while the call runs
        store.complete("k", "t1", "r1", 60)  # the fenced script completes on a fresh one
        store.complete("k", "t1", "r1", 60)  # a resent completion (lost reply) succeeds too
        assert store.claim("k", FP, "t2", 30, 60) == Completed("r1")
        with pytest.raises(IdempotencyLeaseLostError):
            store.complete("k", "t2", "r2", 60)  # but nobody else's token completes it
    finally:
        store.close()


def test_redis_watch_never_leaks_into_the_clients_pool(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix)
    try:
        store.claim("k", FP, "t1", 30, 60)
        store.complete("k", "t1", "r1", 60)
        assert store.claim("k", FP, "t2", 30, 60) == Completed("r1")  # leaves a WATCH behind
        redis_client.set(store.redis_key("k"), "x", xx=True, keepttl=True)
        pipe = redis_client.pipeline(transaction=True)  # the application's own transaction
        pipe.set(redis_prefix + "app", "1").get(redis_prefix + "app")
        assert pipe.execute() == [True, b"1"]
    finally:
        store.close()


def test_redis_crashed_owner_without_checkpoints_frees_the_key_at_lease_end(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix)
    store.claim("k", FP, "t1", 0.2, 60)
    assert isinstance(store.claim("k", FP, "t2", 0.2, 60), InProgress)
    time.sleep(0.35)
    assert store.claim("k", OTHER_FP, "t3", 30, 60) == Claimed("t3")
    with pytest.raises(IdempotencyLeaseLostError):
        store.complete("k", "t1", "late", 60)


def test_redis_checkpoints_never_outlive_their_record(redis_client: Any, redis_prefix: str) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix)
    name = store.redis_key("k")
    store.claim("k", FP, "t1", 30, 60)
    store.checkpoint("k", "t1", "charged", '"ch_1"')
    record_ttl = redis_client.pttl(name)
    assert 50_000 < record_ttl <= 60_000  # the record now keeps its checkpoints for ttl
    assert 0 < redis_client.pttl(name + ":c") <= record_ttl
    store.renew("k", "t1", 30)
    assert isinstance(store.claim("k", FP, "t2", 30, 60), InProgress)  # lease is in the record
    store.complete("k", "t1", "done", 5)
    assert redis_client.exists(name + ":c") == 0
    assert 0 < redis_client.pttl(name) <= 5_000
    assert store.claim("k", FP, "t3", 30, 60) == Completed("done")


def test_redis_release_without_checkpoints_deletes_the_record(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix)
    store.claim("k", FP, "t1", 30, 60)
    store.release("k", "t1")
    assert redis_client.exists(store.redis_key("k"), store.redis_key("k") + ":c") == 0


def test_redis_results_with_newlines_and_unicode_round_trip(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix)
    payload = 'r"line1\nline2\n\n"\u00e9\u2603'
    store.claim("k\nwith newline", FP, "t1", 30, 60)
    store.complete("k\nwith newline", "t1", payload, 60)
    assert store.claim("k\nwith newline", FP, "t2", 30, 60) == Completed(payload)


def test_redis_rejects_newlines_in_tokens_and_fingerprints(
    redis_client: Any, redis_prefix: str
) -> None:
    from resilience._errors import IdempotencyError

    store = RedisStore(redis_client, prefix=redis_prefix)
    with pytest.raises(IdempotencyError):
        store.claim("k", "a\nb", "t1", 30, 60)
    with pytest.raises(IdempotencyError):
        store.claim("k", FP, "t\n1", 30, 60)


def test_redis_reloads_a_flushed_script(
    redis_client: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resilience.idempotency import _redis

    # As if SCRIPT FLUSH had run: the server knows no script by these names.
    monkeypatch.setattr(_redis, "_SHA", dict.fromkeys(_redis._SHA, "0" * 40))
    store = RedisStore(redis_client, prefix=redis_prefix)
    wrapped = RedisStore(_Counting(redis_client), prefix=redis_prefix)  # type: ignore[arg-type]
    try:
        for s, key in ((store, "k"), (wrapped, "w")):
            s.claim(key, FP, "t1", 30, 60)
            s.checkpoint(key, "t1", "step", "1")  # a script, so completion takes one too
            s.complete(key, "t1", "r1", 60)
            assert s.claim(key, FP, "t2", 30, 60) == Completed("r1")
            s.claim(key + "busy", FP, "t1", 30, 60)
            assert isinstance(s.claim(key + "busy", FP, "t2", 30, 60), InProgress)
    finally:
        store.close()


@pytest.mark.parametrize(
    "garbage",
    [
        "z\nt\nf\n\n1\nk",  # unknown state
        "p\nt\nf",  # too few fields
        "",  # empty
    ],
)
def test_redis_garbage_strings_are_record_errors(
    redis_client: Any, redis_prefix: str, garbage: str
) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix)
    redis_client.set(store.redis_key("k"), garbage)
    with pytest.raises(IdempotencyRecordError):
        store.claim("k", FP, "t", 30, 60)
    with pytest.raises(IdempotencyLeaseLostError):
        store.complete("k", "t", "r", 60)  # garbage is never overwritten by a stale owner
    assert redis_client.get(store.redis_key("k")) == garbage.encode()


def test_redis_non_utf8_record_is_a_record_error(redis_client: Any, redis_prefix: str) -> None:
    store = RedisStore(redis_client, prefix=redis_prefix)
    redis_client.set(store.redis_key("k"), b"\xff\xfe")
    with pytest.raises(IdempotencyRecordError):
        store.claim("k", FP, "t", 30, 60)


async def test_redis_async_round_trips_match_the_blocking_ones(
    redis_client: Any, redis_prefix: str
) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0")
    store = RedisStore(async_client=client, prefix=redis_prefix)
    try:
        assert await store.aclaim("k", FP, "t1", 30, 60) == Claimed("t1")
        assert isinstance(await store.aclaim("k", FP, "t2", 30, 60), InProgress)
        assert await store.aclaim("k", OTHER_FP, "t2", 30, 60) == Mismatch()
        await store.acomplete("k", "t1", "r1", 60)
        assert await store.aclaim("k", FP, "t3", 30, 60) == Completed("r1")
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- heartbeat


def test_short_calls_start_no_thread_per_call() -> None:
    store = MemoryStore()

    @idempotent(store, key="k", in_progress_ttl=30)
    def f(k: str) -> str:
        return k

    f("warm-up")
    before = threading.active_count()
    for i in range(200):
        f(str(i))
    assert threading.active_count() <= before


def test_binding_all_positional_matches_the_signature() -> None:
    from resilience.idempotency._decorator import _Binder

    def f(a: int, b: int = 2, *, c: int = 3) -> None: ...

    def g(a: int, b: int = 2) -> None: ...

    assert _Binder(f).bind((1, 5), {}) == {"a": 1, "b": 5, "c": 3}
    assert _Binder(g).bind((1, 5), {}) == {"a": 1, "b": 5}
    assert _Binder(g).bind((1,), {}) == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [("r 1", 1), ('r{"a": [1, 2]}', {"a": [1, 2]}), ("r1", 1)],
)
def test_replay_fast_path_agrees_with_the_general_decoder(payload: str, expected: Any) -> None:
    from resilience.idempotency._core import UNREADABLE, JsonSerializer, decode_payload, json_result

    assert decode_payload("k", payload, JsonSerializer(), None, ()) == (True, expected)
    fast = json_result(payload, None)
    assert fast is UNREADABLE or fast == expected


@pytest.mark.parametrize("payload", ["r1 x", "r{", "r", "r[1,"])
def test_unreadable_results_are_record_errors_on_replay(payload: str) -> None:
    store = MemoryStore()

    @idempotent(store, key="k", namespace="ns")
    def f(k: str) -> int:
        return 1

    f("a")
    from resilience.idempotency import _core

    store._records[_core.scoped_key("ns", "", "a")].payload = payload
    with pytest.raises(IdempotencyRecordError):
        f("a")


def test_positional_and_keyword_calls_share_one_record() -> None:
    store = MemoryStore()
    calls: list[tuple[str, object]] = []

    class Shop:
        @idempotent(store, key="order_id")
        def charge(self, order_id: str, amount: object, note: str = "") -> str:
            calls.append((order_id, amount))
            return f"{order_id}:{amount}"

    shop = Shop()
    assert shop.charge("o1", 5, "") == "o1:5"  # every parameter by position: the fast path
    assert shop.charge(order_id="o1", amount=5) == "o1:5"  # keywords and a default: replayed
    assert shop.charge("o1", 5) == "o1:5"
    assert shop.charge("o2", {"nested": [1.5]}, "x") == "o2:{'nested': [1.5]}"  # not flat
    assert shop.charge("o2", amount={"nested": [1.5]}, note="x") == "o2:{'nested': [1.5]}"
    from resilience import IdempotencyKeyMismatchError

    with pytest.raises(IdempotencyKeyMismatchError):
        shop.charge("o1", 6, "")
    assert calls == [("o1", 5), ("o2", {"nested": [1.5]})]


def test_keeper_renews_leases_added_after_it_went_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    from resilience.idempotency import _heartbeat

    monkeypatch.setattr(_heartbeat, "_IDLE_SLEEP", 0.05)
    keeper = _heartbeat._Keeper()
    beats: list[str] = []

    def wait_for(name: str) -> None:
        deadline = time.monotonic() + 10
        while name not in beats and time.monotonic() < deadline:
            time.sleep(0.01)
        assert name in beats

    first = _heartbeat.Lease(lambda: beats.append("first"), 0.05, 0.15, time.monotonic())
    keeper.add(first)
    wait_for("first")
    keeper.remove(first)
    deadline = time.monotonic() + 10  # no leases for longer than _IDLE_SLEEP: the thread
    while keeper._wake_at != float("inf") and time.monotonic() < deadline:  # sleeps until an add
        time.sleep(0.01)
    assert keeper._wake_at == float("inf")
    slow = _heartbeat.Lease(lambda: beats.append("slow"), 0.2, 0.6, time.monotonic())
    keeper.add(slow)  # must wake the idle thread, or this lease would never be renewed
    wait_for("slow")
    keeper.remove(slow)
