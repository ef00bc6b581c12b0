"""Shared breaker state through a real Redis: several real processes, outages, the CLI."""

from __future__ import annotations

import json
import multiprocessing
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilience import CircuitOpenError, ConfigurationError
from resilience._cli import build_parser
from resilience.policies import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    RedisSharedState,
)
from resilience.policies._breaker_cli import register
from resilience.policies._breaker_redis import publish_state, read_status
from resilience.testing import TcpProxy, free_port

SYNC = 0.05

CONFIG = CircuitBreakerConfig(
    window_size=10,
    minimum_calls=5,
    failure_rate_threshold=50,
    open_duration=1.0,
    permitted_calls_in_half_open=1,
)


class Boom(Exception):
    pass


def _ok() -> str:
    return "ok"


def _boom() -> str:
    raise Boom


def _attempt(breaker: CircuitBreaker, fail: bool) -> str:
    try:
        breaker.call(_boom if fail else _ok)
    except Boom:
        return "failed"
    except CircuitOpenError as exc:
        return f"rejected:{exc.state}"
    return "ok"


def worker(redis_url: str, prefix: str, name: str, inbox: Any, outbox: Any) -> None:
    """One 'service process': a breaker sharing its state through Redis."""
    shared = RedisSharedState(redis_url, prefix=prefix, sync_interval=SYNC, window_seconds=10)
    breaker = CircuitBreaker(name, CONFIG, shared=shared)
    deadline = time.monotonic() + 10
    while shared.syncs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    outbox.put(("ready", shared.healthy))
    while True:
        command, arg = inbox.get(timeout=60)
        if command == "stop":
            shared.close()
            outbox.put(("stopped", None))
            return
        if command == "calls":
            fail, n = arg
            outbox.put(("calls", [_attempt(breaker, fail) for _ in range(n)]))
        elif command == "state":
            outbox.put(("state", breaker.state.value))


class Fleet:
    """N worker processes (spawned, so nothing is inherited) driven through queues."""

    def __init__(self, n: int, redis_url: str, prefix: str, name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.inboxes = [ctx.Queue() for _ in range(n)]
        self.outboxes = [ctx.Queue() for _ in range(n)]
        self.procs = [
            ctx.Process(
                target=worker,
                args=(redis_url, prefix, name, self.inboxes[i], self.outboxes[i]),
                daemon=True,
            )
            for i in range(n)
        ]
        for p in self.procs:
            p.start()
        for out in self.outboxes:
            kind, healthy = out.get(timeout=30)
            assert (kind, healthy) == ("ready", True)

    def ask(self, i: int, command: str, arg: Any = None) -> Any:
        self.inboxes[i].put((command, arg))
        kind, value = self.outboxes[i].get(timeout=20)
        assert kind == command
        return value

    def wait_state(self, i: int, state: str, timeout: float = 5.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.ask(i, "state") == state:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"worker {i} never reached {state!r}; it is {self.ask(i, 'state')!r}")

    def stop(self) -> None:
        for i, p in enumerate(self.procs):
            if p.is_alive():
                self.inboxes[i].put(("stop", None))
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


@pytest.fixture
def fleet_factory(redis_url: str, redis_prefix: str) -> Iterator[Callable[[int, str], Fleet]]:
    fleets: list[Fleet] = []

    def make(n: int, name: str) -> Fleet:
        fleet = Fleet(n, redis_url, redis_prefix, name)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


def test_processes_trip_together_and_recover_together(
    fleet_factory: Callable[[int, str], Fleet],
) -> None:
    fleet = fleet_factory(3, "correios")
    # Worker 0 sees the postal API fail and trips its breaker...
    assert fleet.ask(0, "calls", (True, 5)) == ["failed"] * 5
    assert fleet.ask(0, "state") == "open"
    # ...and workers 1 and 2, which saw nothing wrong, follow within a few sync intervals.
    for i in (1, 2):
        lag = fleet.wait_state(i, "open", timeout=3)
        assert lag < 2.0
        assert fleet.ask(i, "calls", (False, 1)) == ["rejected:open"]
    # After open_duration one process runs a trial; its success closes the breaker everywhere.
    time.sleep(CONFIG.open_duration)
    deadline = time.monotonic() + 5
    while (outcome := fleet.ask(1, "calls", (False, 1))) != ["ok"]:
        assert outcome == ["rejected:open"]  # the shared open period may end a bit later
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert fleet.ask(1, "state") == "closed"
    for i in (0, 2):
        fleet.wait_state(i, "closed", timeout=3)
        assert fleet.ask(i, "calls", (False, 2)) == ["ok", "ok"]


def test_failures_spread_over_processes_trip_the_shared_window(
    fleet_factory: Callable[[int, str], Fleet],
) -> None:
    fleet = fleet_factory(3, "spread")
    # Two failures each: no process reaches its own minimum_calls (5)...
    for i in range(2):
        assert fleet.ask(i, "calls", (True, 2)) == ["failed", "failed"]
        assert fleet.ask(i, "state") == "closed"
    # The third worker's first failure may already be the fifth the shared window sees (once
    # the others' counts have synced), which trips it before the sixth call runs.
    assert fleet.ask(2, "calls", (True, 2)) in (["failed", "failed"], ["failed", "rejected:open"])
    # ...but together they do (6 calls, 100 % failed): Redis trips all of them.
    for i in range(3):
        fleet.wait_state(i, "open", timeout=3)


def test_operator_cli_opens_and_closes_every_process(
    redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = RedisSharedState(redis_url, prefix=redis_prefix, sync_interval=SYNC)
    breaker = CircuitBreaker("payments", CONFIG, shared=shared)
    try:
        _wait(lambda: shared.syncs > 0)
        parser = build_parser_with_breaker()
        common = ["--redis", redis_url, "--prefix", redis_prefix]

        args = parser.parse_args(["breaker", "open", "payments", "--for", "30", *common])
        assert args.handler(args) == 0
        assert "state        open" in capsys.readouterr().out
        _wait(lambda: breaker.state is CircuitState.OPEN)
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(_ok)
        assert 25 < info.value.retry_after <= 30

        args = parser.parse_args(["breaker", "status", "payments", "--json", *common])
        assert args.handler(args) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["state"] == "open"
        assert status["name"] == "payments"

        args = parser.parse_args(["breaker", "open", "payments", "--forced", *common])
        assert args.handler(args) == 0
        _wait(lambda: breaker.state is CircuitState.FORCED_OPEN)

        args = parser.parse_args(["breaker", "reset", "payments", *common])
        assert args.handler(args) == 0
        _wait(lambda: breaker.state is CircuitState.CLOSED)
        assert breaker.call(_ok) == "ok"

        args = parser.parse_args(["breaker", "close", "payments", *common])
        assert args.handler(args) == 0
        assert "state        closed" in capsys.readouterr().out
    finally:
        shared.close()


def test_cli_reports_an_unreachable_redis(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser_with_breaker()
    url = f"redis://127.0.0.1:{free_port()}/0"
    args = parser.parse_args(["breaker", "status", "x", "--redis", url])
    assert args.handler(args) == 1
    assert "resilience: error: ConnectionError" in capsys.readouterr().err


def build_parser_with_breaker() -> Any:
    parser = build_parser()
    # Until the lead registers the module in _cli.py, register it here as _cli would.
    for action in parser._actions:
        if getattr(action, "choices", None) is not None and "breaker" in action.choices:  # type: ignore[operator]
            return parser
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    register(subparsers)
    return parser


def test_local_trip_is_published_and_read_back(redis_url: str, redis_prefix: str) -> None:
    shared = RedisSharedState(redis_url, prefix=redis_prefix, sync_interval=SYNC)
    breaker = CircuitBreaker("orders", CONFIG, shared=shared)
    try:
        for _ in range(5):
            with pytest.raises(Boom):
                breaker.call(_boom)
        assert breaker.state is CircuitState.OPEN
        _wait(lambda: read_status(redis_url, "orders", redis_prefix).state == "open")
        status = read_status(redis_url, "orders", redis_prefix)
        assert 0 < status.retry_after <= CONFIG.open_duration
        assert status.failed_calls == 5
        assert status.version >= 1
    finally:
        shared.close()


def test_redis_down_from_the_start_falls_back_to_local_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared = RedisSharedState(f"redis://127.0.0.1:{free_port()}/0", sync_interval=SYNC)
    breaker = CircuitBreaker("lonely", CONFIG, shared=shared)
    try:
        started = time.perf_counter()
        assert breaker.call(_ok) == "ok"
        assert time.perf_counter() - started < 0.05  # never waits on Redis
        for _ in range(4):  # 4 of 5 failed: trips
            with pytest.raises(Boom):
                breaker.call(_boom)
        assert breaker.state is CircuitState.OPEN  # local protection still works
        with pytest.raises(CircuitOpenError):
            breaker.call(_ok)
        _wait(lambda: "unreachable" in caplog.text)
        assert not shared.healthy
    finally:
        shared.close()


def test_redis_lost_mid_flight_then_back(redis_url: str, redis_prefix: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    proxy = TcpProxy("127.0.0.1", port)
    import redis as redis_module

    client = redis_module.Redis(
        host="127.0.0.1", port=proxy.port, socket_timeout=0.5, socket_connect_timeout=0.5
    )
    shared = RedisSharedState(client, prefix=redis_prefix, sync_interval=SYNC)
    breaker = CircuitBreaker("flaky-net", CONFIG, shared=shared)
    try:
        _wait(lambda: shared.healthy)
        proxy.cut()
        _wait(lambda: not shared.healthy)
        # The caller never notices: calls, failures and local trips work as usual.
        assert breaker.call(_ok) == "ok"
        for _ in range(4):  # 4 of 5 failed: trips
            with pytest.raises(Boom):
                breaker.call(_boom)
        assert breaker.state is CircuitState.OPEN
        proxy.restore()
        _wait(lambda: shared.healthy, timeout=10)
        # The trip made while Redis was away is published once it is back.
        _wait(lambda: read_status(redis_url, "flaky-net", redis_prefix).state == "open")
    finally:
        shared.close()
        client.close()
        proxy.close()


def test_publish_state_rejects_unknown_states(redis_url: str, redis_prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="ajar"):
        publish_state(redis_url, "x", "ajar", redis_prefix)


def test_shared_state_validation() -> None:
    with pytest.raises(ConfigurationError, match="sync_interval"):
        RedisSharedState("redis://localhost", sync_interval=0)
    with pytest.raises(ConfigurationError, match="window_seconds"):
        RedisSharedState("redis://localhost", window_seconds=0)


def test_one_shared_state_per_breaker(redis_url: str, redis_prefix: str) -> None:
    shared = RedisSharedState(redis_url, prefix=redis_prefix, sync_interval=SYNC)
    try:
        CircuitBreaker(f"a-{uuid.uuid4().hex[:6]}", CONFIG, shared=shared)
        with pytest.raises(ConfigurationError, match="exactly one breaker"):
            CircuitBreaker("b", CONFIG, shared=shared)
    finally:
        shared.close()


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _child_after_fork(shared: RedisSharedState, breaker: CircuitBreaker, out: Any) -> None:
    before = shared.syncs
    deadline = time.monotonic() + 10
    while shared.syncs <= before + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    out.put((shared.syncs > before + 2, breaker.state.value))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_sync_thread_restarts_in_forked_children(redis_url: str, redis_prefix: str) -> None:
    # gunicorn --preload builds breakers in the master, then forks the workers.
    shared = RedisSharedState(redis_url, prefix=redis_prefix, sync_interval=SYNC)
    breaker = CircuitBreaker("preloaded", CONFIG, shared=shared)
    try:
        _wait(lambda: shared.syncs > 0)
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_child_after_fork, args=(shared, breaker, out))
        child.start()
        synced, state = out.get(timeout=20)
        child.join(10)
        assert synced, "the forked child's sync thread did not run"
        assert state == "closed"
    finally:
        shared.close()
