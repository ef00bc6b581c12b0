"""Bulkhead: the limit is never exceeded, from threads, tasks, or both at once."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from resilience import BulkheadFullError, ConfigurationError
from resilience.policies import Bulkhead, deadline
from resilience.testing import RecordingTelemetry


class InFlight:
    """Counts concurrent executions and remembers the maximum."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.max = 0
        self.done = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.max = max(self.max, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1
            self.done += 1


def test_rejects_at_once_when_full() -> None:
    telemetry = RecordingTelemetry()
    bulkhead = Bulkhead(2, name="correios", telemetry=telemetry)
    release = threading.Event()
    entered = threading.Barrier(3)

    def hold() -> str:
        entered.wait(5)
        release.wait(5)
        return "done"

    holders = [threading.Thread(target=bulkhead.call, args=(hold,)) for _ in range(2)]
    for t in holders:
        t.start()
    entered.wait(5)
    assert bulkhead.in_flight == 2
    started = time.monotonic()
    with pytest.raises(BulkheadFullError) as info:
        bulkhead.call(lambda: "never")
    assert time.monotonic() - started < 0.5
    assert (info.value.name, info.value.max_concurrent) == ("correios", 2)
    [event] = telemetry.of_kind("rejected")
    assert event.component == "bulkhead"
    release.set()
    for t in holders:
        t.join()
    assert bulkhead.in_flight == 0
    assert bulkhead.call(lambda: "free again") == "free again"


def test_errors_give_the_slot_back() -> None:
    bulkhead = Bulkhead(1)
    for _ in range(3):
        with pytest.raises(ZeroDivisionError):
            bulkhead.call(lambda: 1 / 0)
    assert bulkhead.in_flight == 0


def test_waiter_gets_the_slot_when_it_frees() -> None:
    bulkhead = Bulkhead(1, max_wait=5.0)
    release = threading.Event()
    entered = threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(5)

    holder = threading.Thread(target=bulkhead.call, args=(hold,))
    holder.start()
    entered.wait(5)
    threading.Timer(0.05, release.set).start()
    started = time.monotonic()
    assert bulkhead.call(lambda: "waited") == "waited"
    assert 0.03 <= time.monotonic() - started < 4.0
    holder.join()
    assert bulkhead.in_flight == 0


def test_waiter_gives_up_after_max_wait_or_deadline() -> None:
    bulkhead = Bulkhead(1, max_wait=0.05)
    release = threading.Event()
    entered = threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(5)

    holder = threading.Thread(target=bulkhead.call, args=(hold,))
    holder.start()
    entered.wait(5)
    started = time.monotonic()
    with pytest.raises(BulkheadFullError):
        bulkhead.call(lambda: None)
    assert 0.04 <= time.monotonic() - started < 2.0
    patient = Bulkhead(1, max_wait=30.0)
    patient_holder = threading.Thread(target=patient.call, args=(release.wait, 5))
    patient_holder.start()
    time.sleep(0.02)
    started = time.monotonic()
    with deadline(seconds=0.05), pytest.raises(BulkheadFullError):
        patient.call(lambda: None)
    assert time.monotonic() - started < 2.0  # the deadline, not max_wait=30, bounded the wait
    release.set()
    holder.join()
    patient_holder.join()
    assert bulkhead.in_flight == 0
    assert patient.in_flight == 0


def test_200_threads_never_exceed_the_limit() -> None:
    bulkhead = Bulkhead(10, max_wait=60.0)
    meter = InFlight()
    start = threading.Barrier(200)

    def work() -> None:
        meter.enter()
        time.sleep(0.002)
        meter.leave()

    def caller() -> None:
        start.wait(10)
        bulkhead.call(work)

    threads = [threading.Thread(target=caller) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert meter.done == 200  # everyone got in eventually (they were allowed to wait)
    assert meter.max <= 10
    assert meter.max >= 2  # and there really was concurrency to limit
    assert bulkhead.in_flight == 0


def test_200_threads_without_waiting_reject_the_excess() -> None:
    bulkhead = Bulkhead(5)
    meter = InFlight()
    start = threading.Barrier(200)
    rejected = []

    def work() -> None:
        meter.enter()
        time.sleep(0.01)
        meter.leave()

    def caller() -> None:
        start.wait(10)
        try:
            bulkhead.call(work)
        except BulkheadFullError:
            rejected.append(1)

    threads = [threading.Thread(target=caller) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert meter.max <= 5
    assert meter.done + len(rejected) == 200
    assert rejected


async def test_2000_tasks_never_exceed_the_limit() -> None:
    bulkhead = Bulkhead(20, max_wait=60.0)
    meter = InFlight()

    async def work(i: int) -> int:
        meter.enter()
        await asyncio.sleep(0.001 * (i % 3))
        meter.leave()
        return i

    results = await asyncio.gather(*(bulkhead.acall(work, i) for i in range(2000)))
    assert results == list(range(2000))
    assert meter.max == 20  # 2000 tasks arrive at once: the limit is reached, never passed
    assert bulkhead.in_flight == 0


async def test_2000_tasks_without_waiting_reject_the_excess() -> None:
    bulkhead = Bulkhead(20)
    meter = InFlight()

    async def work() -> None:
        meter.enter()
        await asyncio.sleep(0.01)
        meter.leave()

    results = await asyncio.gather(
        *(bulkhead.acall(work) for _ in range(2000)), return_exceptions=True
    )
    assert meter.max == 20
    rejected = [r for r in results if isinstance(r, BulkheadFullError)]
    assert len(rejected) == 2000 - meter.done
    assert len(rejected) >= 1900


async def test_threads_and_tasks_share_one_limit() -> None:
    bulkhead = Bulkhead(8, max_wait=60.0)
    meter = InFlight()

    def sync_work() -> None:
        meter.enter()
        time.sleep(0.002)
        meter.leave()

    async def async_work() -> None:
        meter.enter()
        await asyncio.sleep(0.002)
        meter.leave()

    def thread_caller() -> None:
        for _ in range(20):
            bulkhead.call(sync_work)

    threads = [threading.Thread(target=thread_caller) for _ in range(10)]
    for t in threads:
        t.start()
    await asyncio.gather(*(bulkhead.acall(async_work) for _ in range(400)))
    await asyncio.to_thread(lambda: [t.join() for t in threads])
    assert meter.done == 600
    assert meter.max <= 8
    assert bulkhead.in_flight == 0


async def test_cancelled_waiter_leaks_no_slot() -> None:
    bulkhead = Bulkhead(2, max_wait=30.0)
    release = asyncio.Event()

    async def hold() -> None:
        await release.wait()

    holders = [asyncio.create_task(bulkhead.acall(hold)) for _ in range(2)]
    await asyncio.sleep(0.01)
    waiters = [asyncio.create_task(bulkhead.acall(hold)) for _ in range(5)]
    await asyncio.sleep(0.01)
    for w in waiters:
        w.cancel()
    release.set()
    await asyncio.gather(*holders)
    for w in waiters:
        with pytest.raises(asyncio.CancelledError):
            await w
    assert bulkhead.in_flight == 0
    # every slot is usable again
    gate = asyncio.Event()
    again = [asyncio.create_task(bulkhead.acall(gate.wait)) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert bulkhead.in_flight == 2
    gate.set()
    await asyncio.gather(*again)


async def test_async_waiter_times_out() -> None:
    bulkhead = Bulkhead(1, max_wait=0.05)
    release = asyncio.Event()
    holder = asyncio.create_task(bulkhead.acall(release.wait))
    await asyncio.sleep(0.01)
    with pytest.raises(BulkheadFullError):
        await bulkhead.acall(asyncio.sleep, 0)
    release.set()
    await holder
    assert bulkhead.in_flight == 0


async def test_decorator_on_both_flavours() -> None:
    bulkhead = Bulkhead(1)

    @bulkhead
    def sync_fn(x: int) -> int:
        return x + 1

    @bulkhead
    async def async_fn(x: int) -> int:
        return x + 2

    assert sync_fn(1) == 2
    assert await async_fn(1) == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": 2.5}, "max_concurrent"),
        ({"max_concurrent": 1, "max_wait": -1}, "max_wait"),
        ({"max_concurrent": 1, "max_wait": float("nan")}, "max_wait"),
        ({"max_concurrent": 1, "name": ""}, "name"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Bulkhead(**kwargs)
    assert info.value.field == field
