"""The decorator's behaviour, on the memory store with a fake clock (fast, deterministic)."""

from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from resilience import (
    ConfigurationError,
    IdempotencyError,
    IdempotencyInProgressError,
    IdempotencyKeyMismatchError,
    IdempotencyPayloadTooLargeError,
    IdempotencyRecordError,
)
from resilience._errors import IdempotencyLeaseLostError, IdempotentReplayedError
from resilience.idempotency import (
    MemoryStore,
    Mismatch,
    current_idempotency,
    idempotent,
)
from resilience.idempotency._core import scoped_key
from resilience.testing import FakeClock


class CardDeclinedError(Exception):
    pass


@dataclass(frozen=True)
class Receipt:
    charge_id: str
    amount: int


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mem(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock)


def test_runs_once_then_replays(mem: MemoryStore) -> None:
    calls: list[int] = []

    @idempotent(mem, key="order_id")
    def charge(order_id: str, amount: int) -> dict[str, Any]:
        calls.append(amount)
        return {"charge": f"ch_{order_id}", "amount": amount}

    first = charge("o1", 100)
    again = charge("o1", 100)
    assert calls == [100]
    assert first == again == {"charge": "ch_o1", "amount": 100}
    assert charge("o2", 100)["charge"] == "ch_o2"
    assert calls == [100, 100]


def test_same_key_different_payload_is_refused_without_running(mem: MemoryStore) -> None:
    calls: list[int] = []

    @idempotent(mem, key="order_id")
    def charge(order_id: str, amount: int) -> int:
        calls.append(amount)
        return amount

    charge("o1", 100)
    with pytest.raises(IdempotencyKeyMismatchError) as info:
        charge("o1", 999)
    assert info.value.key == "o1"  # the caller's key, not the namespaced store key
    assert calls == [100]


def test_include_and_exclude_choose_the_fingerprinted_fields(mem: MemoryStore) -> None:
    @idempotent(mem, key="order_id", exclude=("trace_id",))
    def charge(order_id: str, amount: int, trace_id: str) -> int:
        return amount

    assert charge("o1", 5, "trace-a") == charge("o1", 5, "trace-b") == 5

    @idempotent(mem, key="order_id", include=("order_id",))
    def refund(order_id: str, amount: int) -> int:
        return amount

    assert refund("o1", 1) == refund("o1", 2) == 1


def test_in_progress_duplicate_is_refused_with_retry_after(mem: MemoryStore) -> None:
    inside, release = threading.Event(), threading.Event()

    @idempotent(mem, key="order_id", in_progress_ttl=30)
    def slow(order_id: str) -> str:
        inside.set()
        release.wait(10)
        return "done"

    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(slow("o1")))
    worker.start()
    assert inside.wait(10)
    with pytest.raises(IdempotencyInProgressError) as info:
        slow("o1")
    assert 0 < info.value.retry_after <= 30
    release.set()
    worker.join(10)
    assert results == ["done"]
    assert slow("o1") == "done"


def test_wait_returns_the_first_calls_result() -> None:
    store = MemoryStore()
    inside, release = threading.Event(), threading.Event()
    calls: list[int] = []

    @idempotent(store, key="order_id", wait=10, poll_interval=0.01)
    def slow(order_id: str) -> str:
        calls.append(1)
        inside.set()
        release.wait(10)
        return "first"

    worker = threading.Thread(target=slow, args=("o1",))
    worker.start()
    assert inside.wait(10)
    threading.Timer(0.1, release.set).start()
    assert slow("o1") == "first"
    worker.join(10)
    assert calls == [1]


def test_wait_gives_up_at_its_deadline(mem: MemoryStore, clock: FakeClock) -> None:
    token_holder = mem.claim  # hold the key as a crashed caller would
    f = idempotent(mem, key="k", namespace="ns", wait=2, poll_interval=0.5, clock=clock)(
        lambda k: k
    )
    from resilience.idempotency import fingerprint

    token_holder(scoped_key("ns", "", "x"), fingerprint({"k": "x"}), "holder", 60, 120)
    with pytest.raises(IdempotencyInProgressError):
        f("x")
    assert sum(clock.sleeps) == pytest.approx(2)


def test_crash_lease_expiry_lets_a_retry_run(mem: MemoryStore, clock: FakeClock) -> None:
    from resilience.idempotency import fingerprint

    key = scoped_key("pay", "", "o1")
    mem.claim(key, fingerprint({"order_id": "o1"}), "crashed", 5, 60)  # the crashed first call
    calls: list[str] = []

    @idempotent(mem, key="order_id", namespace="pay", in_progress_ttl=5, heartbeat=False)
    def pay(order_id: str) -> str:
        calls.append(order_id)
        return "paid"

    with pytest.raises(IdempotencyInProgressError):
        pay("o1")
    clock.advance(5.1)
    assert pay("o1") == "paid"
    assert pay("o1") == "paid"
    assert calls == ["o1"]
    with pytest.raises(IdempotencyLeaseLostError):
        mem.complete(key, "crashed", "late", 60)  # the stale owner is fenced off


def test_errors_release_the_key_by_default(mem: MemoryStore) -> None:
    attempts: list[int] = []

    @idempotent(mem, key="k")
    def flaky(k: str) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("stripe timed out")
        return "ok"

    with pytest.raises(ConnectionError):
        flaky("a")
    assert flaky("a") == "ok"
    assert flaky("a") == "ok"
    assert len(attempts) == 2


def test_final_errors_are_stored_and_replayed_as_their_class(mem: MemoryStore) -> None:
    attempts: list[int] = []

    @idempotent(mem, key="k", final_errors=CardDeclinedError)
    def charge(k: str) -> str:
        attempts.append(1)
        raise CardDeclinedError("card_declined", 402)

    with pytest.raises(CardDeclinedError) as first:
        charge("a")
    with pytest.raises(CardDeclinedError) as replayed:
        charge("a")
    assert replayed.value.args == first.value.args == ("card_declined", 402)
    assert any("replayed" in note for note in replayed.value.__notes__)
    assert attempts == [1]


def test_final_errors_by_predicate_replay_as_idempotent_replayed_error(mem: MemoryStore) -> None:
    attempts: list[int] = []

    @idempotent(mem, key="k", final_errors=lambda exc: isinstance(exc, LookupError))
    def find(k: str) -> str:
        attempts.append(1)
        raise KeyError("no such customer")

    with pytest.raises(KeyError):
        find("a")
    with pytest.raises(IdempotentReplayedError) as info:
        find("a")
    assert info.value.type_name == "builtins:KeyError"
    assert info.value.error_args == ("no such customer",)
    assert attempts == [1]


def test_dataclass_results_round_trip_through_the_return_annotation(mem: MemoryStore) -> None:
    @idempotent(mem, key="k")
    def charge(k: str) -> Receipt:
        return Receipt("ch_1", 100)

    @idempotent(mem, key="k")
    def charges(k: str) -> list[Receipt]:
        return [Receipt("ch_1", 1), Receipt("ch_2", 2)]

    assert charge("a") == charge("a") == Receipt("ch_1", 100)
    assert charges("a") == charges("a") == [Receipt("ch_1", 1), Receipt("ch_2", 2)]

    @idempotent(mem, key="k", result_type=Receipt, namespace="untyped")
    def untyped(k):  # type: ignore[no-untyped-def]
        return Receipt("ch_9", 9)

    assert isinstance(untyped("a"), Receipt)
    assert untyped("a") == Receipt("ch_9", 9)


def test_too_large_results_store_the_error_and_never_rerun(mem: MemoryStore) -> None:
    calls: list[int] = []

    @idempotent(mem, key="k", max_result_bytes=100)
    def export(k: str) -> str:
        calls.append(1)
        return "x" * 500

    with pytest.raises(IdempotencyPayloadTooLargeError):
        export("a")
    with pytest.raises(IdempotencyPayloadTooLargeError):
        export("a")
    assert calls == [1]


def test_scope_and_namespace_keep_keys_apart(mem: MemoryStore) -> None:
    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")

    @idempotent(mem, key="k", scope=tenant)
    def who(k: str) -> str:
        return tenant.get()

    @idempotent(mem, key="k")
    def other(k: str) -> str:
        return "other"

    tenant.set("acme")
    assert who("same") == "acme"
    tenant.set("globex")
    assert who("same") == "globex"
    assert other("same") == "other"
    with pytest.raises(IdempotencyError, match="scope"):
        contextvars.Context().run(who, "same")

    @idempotent(mem, key="k", scope=lambda: "user-7", namespace="n")
    def scoped(k: str) -> str:
        return "s"

    assert scoped("z") == "s"


def test_key_from_callable_and_from_the_call(mem: MemoryStore) -> None:
    calls: list[str] = []

    @idempotent(mem, key=lambda order, **_: order["id"])
    def place(order: dict[str, Any]) -> str:
        calls.append(order["id"])
        return order["id"]

    place({"id": "o1"})
    place({"id": "o1"})
    assert calls == ["o1"]

    @idempotent(mem)
    def send(to: str) -> str:
        calls.append(to)
        return to

    send("bob", idempotency_key="msg-1")  # type: ignore[call-arg]
    send("bob", idempotency_key="msg-1")  # type: ignore[call-arg]
    assert calls == ["o1", "bob"]
    with pytest.raises(IdempotencyError, match="needs an idempotency key"):
        send("bob")


def test_recovery_points_resume_after_the_last_completed_step(mem: MemoryStore) -> None:
    charges: list[str] = []
    emails: list[str] = []
    crash = [True]

    @idempotent(mem, key="order_id")
    def checkout(order_id: str) -> str:
        ctx = current_idempotency()
        charge_id = ctx.get("charged")
        if charge_id is None:
            charge_id = f"ch_{len(charges) + 1}"
            charges.append(charge_id)
            ctx.checkpoint("charged", charge_id)
        if crash[0]:
            crash[0] = False
            raise ConnectionError("mail server down")
        emails.append(charge_id)
        return charge_id

    with pytest.raises(ConnectionError):
        checkout("o1")
    assert checkout("o1") == "ch_1"
    assert checkout("o1") == "ch_1"
    assert charges == ["ch_1"]
    assert emails == ["ch_1"]


def test_current_idempotency_outside_a_call_is_an_error() -> None:
    with pytest.raises(IdempotencyError):
        current_idempotency()


def test_corrupted_payload_raises_record_error_and_does_not_run(mem: MemoryStore) -> None:
    calls: list[int] = []

    @idempotent(mem, key="k", namespace="ns")
    def f(k: str) -> int:
        calls.append(1)
        return 1

    f("a")
    mem._records[scoped_key("ns", "", "a")].payload = "r{not json"
    with pytest.raises(IdempotencyRecordError):
        f("a")
    mem._records[scoped_key("ns", "", "a")].payload = "?what"
    with pytest.raises(IdempotencyRecordError):
        f("a")
    assert calls == [1]


def test_unfingerprintable_arguments_are_a_typed_error(mem: MemoryStore) -> None:
    @idempotent(mem, key="k")
    def f(k: str, thing: object) -> int:
        return 1

    with pytest.raises(IdempotencyError, match="fingerprint"):
        f("a", object())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ttl": 0}, "ttl"),
        ({"in_progress_ttl": -1}, "in_progress_ttl"),
        ({"ttl": 10, "in_progress_ttl": 20}, "in_progress_ttl"),
        ({"wait": 0}, "wait"),
        ({"max_result_bytes": 0}, "max_result_bytes"),
        ({"final_errors": (1,)}, "final_errors"),
        ({"exclude": "amount"}, "exclude"),
        ({"key": 3}, "key"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        idempotent(MemoryStore(), **kwargs)
    assert info.value.field == field


def test_unknown_key_parameter_fails_at_decoration() -> None:
    with pytest.raises(ConfigurationError):
        idempotent(MemoryStore(), key="nope")(lambda k: k)
    with pytest.raises(ConfigurationError):
        idempotent(object(), key="k")  # type: ignore[arg-type]


def test_heartbeat_renews_a_long_call() -> None:
    store = MemoryStore()  # real clock: the heartbeat runs in real time
    inside, release = threading.Event(), threading.Event()

    @idempotent(store, key="k", in_progress_ttl=0.3)
    def long_call(k: str) -> str:
        inside.set()
        release.wait(5)
        return "done"

    worker = threading.Thread(target=long_call, args=("a",))
    worker.start()
    assert inside.wait(5)
    time.sleep(0.9)  # three leases long
    with pytest.raises(IdempotencyInProgressError):
        long_call("a")
    release.set()
    worker.join(5)
    assert long_call("a") == "done"


# --------------------------------------------------------------------------- async


async def test_async_runs_once_replays_and_checkpoints(mem: MemoryStore) -> None:
    calls: list[int] = []

    @idempotent(mem, key="k", final_errors=CardDeclinedError)
    async def charge(k: str, amount: int) -> dict[str, int]:
        ctx = current_idempotency()
        await ctx.acheckpoint("started", amount)
        calls.append(amount)
        if amount < 0:
            raise CardDeclinedError("negative")
        return {"amount": amount}

    assert await charge("a", 5) == await charge("a", 5) == {"amount": 5}
    with pytest.raises(IdempotencyKeyMismatchError):
        await charge("a", 6)
    with pytest.raises(CardDeclinedError):
        await charge("b", -1)
    with pytest.raises(CardDeclinedError):
        await charge("b", -1)
    assert calls == [5, -1]


async def test_async_with_a_blocking_store_runs_it_in_threads(
    sqlite_url: str, make_sql_store: Any
) -> None:
    store = make_sql_store(sqlite_url)
    calls: list[int] = []

    @idempotent(store, key="k")
    async def f(k: str) -> int:
        calls.append(1)
        await current_idempotency().acheckpoint("x", 1)
        return 7

    assert await f("a") == await f("a") == 7
    assert calls == [1]


async def test_async_in_progress_and_release(mem: MemoryStore) -> None:
    import asyncio

    gate = asyncio.Event()

    @idempotent(mem, key="k")
    async def slow(k: str) -> str:
        await gate.wait()
        if k == "boom":
            raise ValueError("retry me")
        return k

    task = asyncio.create_task(slow("a"))
    await asyncio.sleep(0)
    with pytest.raises(IdempotencyInProgressError):
        await slow("a")
    gate.set()
    assert await task == "a"
    with pytest.raises(ValueError):
        await slow("boom")
    with pytest.raises(ValueError):
        await slow("boom")  # released, so it ran again


def test_a_completed_key_is_a_mismatch_for_another_payload(mem: MemoryStore) -> None:
    @idempotent(mem, key="k", namespace="n")
    def f(k: str) -> int:
        return 3

    f("a")
    assert mem.claim(scoped_key("n", "", "a"), "x" * 64, "t", 1, 2) == Mismatch()


def test_unserialisable_result_stores_an_error_and_never_reruns(mem: MemoryStore) -> None:
    calls: list[int] = []

    @idempotent(mem, key="k")
    def f(k: str) -> object:
        calls.append(1)
        return object()

    for _ in range(2):
        with pytest.raises(IdempotencyError, match="could not be serialised"):
            f("a")
    assert calls == [1]


async def test_store_flavour_mismatch_is_bridged_or_explained(
    redis_client: Any, redis_prefix: str
) -> None:
    from resilience.idempotency import RedisStore

    blocking_only = RedisStore(redis_client, prefix=redis_prefix)

    @idempotent(blocking_only, key="k")
    async def f(k: str) -> int:
        return 1

    assert await f("a") == await f("a") == 1  # the blocking client runs in a worker thread

    import redis.asyncio

    client = redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0")
    async_only = RedisStore(async_client=client, prefix=redis_prefix)
    g = idempotent(async_only, key="k")(lambda k: k)
    with pytest.raises(IdempotencyError, match="async-only"):
        g("a")
    await client.aclose()
