"""Deadline propagation: context, nesting, thread and task hops, and the wire formats."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from resilience import ConfigurationError, DeadlineExceededError, TimeoutExceededError
from resilience.messaging import Message
from resilience.policies import (
    GRPC_TIMEOUT_METADATA,
    HTTP_DEADLINE_HEADER,
    MESSAGE_DEADLINE_HEADER,
    check_deadline,
    current_deadline,
    deadline,
    deadline_from_grpc_metadata,
    deadline_from_http_headers,
    deadline_from_message,
    format_grpc_timeout,
    grpc_deadline_metadata,
    http_deadline_headers,
    message_with_deadline,
    parse_grpc_timeout,
    remaining,
)
from resilience.testing import FakeClock


def test_no_deadline_by_default() -> None:
    assert current_deadline() is None
    assert remaining() is None
    check_deadline()  # nothing to check
    assert http_deadline_headers() == {}
    assert grpc_deadline_metadata() == []


def test_deadline_counts_down_and_is_restored_on_exit() -> None:
    clock = FakeClock()
    with deadline(seconds=2.0, clock=clock) as d:
        assert d is current_deadline()
        assert remaining() == 2.0
        clock.advance(0.5)
        assert remaining() == 1.5
        assert not d.expired()
    assert current_deadline() is None


def test_nested_deadlines_take_the_earliest() -> None:
    clock = FakeClock()
    with deadline(seconds=1.0, clock=clock) as outer:
        with deadline(seconds=5.0, clock=clock) as inner:
            assert inner is outer  # cannot extend the caller's deadline
            assert remaining() == 1.0
        with deadline(seconds=0.25, clock=clock):
            assert remaining() == 0.25
        with deadline(None, clock=clock) as same:
            assert same is outer
        assert remaining() == 1.0


def test_entering_an_expired_deadline_refuses_the_work() -> None:
    clock = FakeClock()
    with deadline(seconds=1.0, clock=clock):
        clock.advance(1.0)
        with pytest.raises(DeadlineExceededError), deadline(None):
            pytest.fail("must not run")
        with pytest.raises(DeadlineExceededError):
            check_deadline()
    with pytest.raises(DeadlineExceededError), deadline(seconds=0):
        pytest.fail("must not run")
    assert issubclass(DeadlineExceededError, TimeoutExceededError)


@pytest.mark.parametrize("bad", ["2", float("nan"), True])
def test_bad_seconds_names_the_field(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        deadline(bad)  # type: ignore[arg-type]
    assert info.value.field == "seconds"


async def test_async_with_and_task_inheritance() -> None:
    clock = FakeClock()
    async with deadline(seconds=3.0, clock=clock):

        async def child() -> float | None:
            return remaining()

        assert await asyncio.create_task(child()) == 3.0
    assert remaining() is None


def test_deadline_crosses_thread_hops_with_copy_context() -> None:
    clock = FakeClock()
    seen: list[float | None] = []
    with deadline(seconds=4.0, clock=clock):
        ctx = contextvars.copy_context()
    thread = threading.Thread(target=ctx.run, args=(lambda: seen.append(remaining()),))
    thread.start()
    thread.join()
    assert seen == [4.0]


def test_http_round_trip_is_relative_milliseconds() -> None:
    clock = FakeClock()
    with deadline(seconds=1.5, clock=clock):
        clock.advance(0.25)
        headers = http_deadline_headers()
    assert headers == {HTTP_DEADLINE_HEADER: "1250"}
    # header names are case-insensitive
    assert deadline_from_http_headers({"request-timeout-ms": "1250"}) == 1.25
    assert deadline_from_http_headers(headers) == 1.25
    assert deadline_from_http_headers({}) is None
    for garbage in ("soon", "-5", "1.5e3", ""):
        assert deadline_from_http_headers({HTTP_DEADLINE_HEADER: garbage}) is None


def test_expired_deadline_is_never_sent() -> None:
    clock = FakeClock()
    with deadline(seconds=0.1, clock=clock):
        clock.advance(0.2)
        with pytest.raises(DeadlineExceededError):
            http_deadline_headers()
        with pytest.raises(DeadlineExceededError):
            grpc_deadline_metadata()
        with pytest.raises(DeadlineExceededError):
            message_with_deadline(Message(type="quote.requested"))


@pytest.mark.parametrize(
    ("seconds", "wire"),
    [
        (1.5, "1500m"),
        (0.3, "300m"),
        (0.0015, "1m"),
        (0.0005, "500u"),
        (1e-7, "100n"),
        (1e-12, "1n"),
        (99_999.999, "99999999m"),
        (200_000.0, "200000S"),
        (1e9, "16666666M"),
        (1e15, "99999999H"),
        (float("inf"), "99999999H"),
    ],
)
def test_grpc_timeout_format(seconds: float, wire: str) -> None:
    assert format_grpc_timeout(seconds) == wire
    parsed = parse_grpc_timeout(wire)
    assert parsed is not None
    assert parsed <= max(seconds, 1e-9)


def test_grpc_parse_rejects_garbage() -> None:
    for garbage in ("", "m", "12", "12x", "123456789m", "-1m", "1.5S"):
        assert parse_grpc_timeout(garbage) is None
    assert parse_grpc_timeout("2S") == 2.0
    assert parse_grpc_timeout("3M") == 180.0
    with pytest.raises(ConfigurationError):
        format_grpc_timeout(0)


def test_grpc_metadata_round_trip() -> None:
    clock = FakeClock()
    with deadline(seconds=2.0, clock=clock):
        metadata = grpc_deadline_metadata()
    assert metadata == [(GRPC_TIMEOUT_METADATA, "2000m")]
    assert deadline_from_grpc_metadata([("x-other", "1"), *metadata]) == 2.0
    assert deadline_from_grpc_metadata([("grpc-timeout", "bogus")]) is None
    assert deadline_from_grpc_metadata([]) is None


def test_message_deadline_is_absolute_so_queue_time_counts() -> None:
    clock = FakeClock()
    wall = [1_700_000_000.0]
    with deadline(seconds=30.0, clock=clock):
        message = message_with_deadline(Message(type="quote.requested"), now=lambda: wall[0])
    assert message.headers[MESSAGE_DEADLINE_HEADER] == str(1_700_000_030_000)
    wall[0] += 10  # ten seconds in the queue
    assert deadline_from_message(message, now=lambda: wall[0]) == pytest.approx(20.0)
    wall[0] += 25
    left = deadline_from_message(message, now=lambda: wall[0])
    assert left == 0.0
    handled = []
    with pytest.raises(DeadlineExceededError), deadline(left):
        handled.append(message)  # the consumer must not do the work
    assert handled == []
    assert message_with_deadline(Message(type="x")).headers == {}
    garbage = Message(type="x", headers={MESSAGE_DEADLINE_HEADER: "tomorrow"})
    assert deadline_from_message(garbage) is None
