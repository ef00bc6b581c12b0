"""Each service as its own process: ``serve SERVICE`` runs one, ``up`` runs them all.

``up`` is a small supervisor: it creates what the services need (a database
per service, the topics), starts the fakes and every service as child
processes (``serve ... --supervised``), waits until each answers ``/health``,
restarts any child that dies (with a growing delay if it keeps dying), and on
SIGTERM or ^C stops them all with SIGTERM, then SIGKILL for any that hangs.
A supervised child exits on its own if the supervisor disappears.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import httpx

from examples.orders_invoices import _tracing
from examples.orders_invoices._environment import ServerEnvironment
from examples.orders_invoices._service import Service
from examples.orders_invoices.deployment import (
    DEFAULT_BASE_PORT,
    SERVICE_NAMES,
    Options,
    build,
    peers,
    ports,
)
from examples.orders_invoices.domain import INITIAL_STOCK
from examples.orders_invoices.fakes import Fakes
from resilience.messaging import stop_on_signals

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: children run ``python -m examples.orders_invoices`` from there."""

PROCESSES = ("fakes", *SERVICE_NAMES)
"""Every child process ``up`` starts, in start order."""


@dataclass(frozen=True)
class Settings:
    """What ``up`` and ``serve`` are told on the command line."""

    kafka: str = "127.0.0.1:9092"
    postgres: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    redis: str = "redis://127.0.0.1:6379/0"
    namespace: str = "oi"
    base_port: int = DEFAULT_BASE_PORT
    consumer_options: Mapping[str, str] = field(default_factory=dict)
    options: Options = field(default_factory=Options)
    trace_exporter: str = _tracing.DEFAULT_EXPORTER

    def environment(self) -> ServerEnvironment:
        return ServerEnvironment(
            kafka=self.kafka,
            postgres=self.postgres,
            redis=self.redis,
            namespace=self.namespace,
            ports=ports(self.base_port),
            consumer_options=dict(self.consumer_options),
        )

    def addresses(self) -> dict[str, str]:
        return peers(self.base_port)

    def argv(self) -> list[str]:
        """These settings as command-line flags (what a child process is given)."""
        opts = self.options
        out = [
            f"--kafka={self.kafka}",
            f"--postgres={self.postgres}",
            f"--redis={self.redis}",
            f"--namespace={self.namespace}",
            f"--base-port={self.base_port}",
            f"--saga-timeout={opts.saga_timeout}",
            f"--crash-after-charge={opts.crash_after_charge}",
            "--stock=" + ",".join(f"{sku}={n}" for sku, n in opts.stock.items()),
            f"--trace-exporter={self.trace_exporter}",
        ]
        out += [f"--kafka-consumer-option={k}={v}" for k, v in self.consumer_options.items()]
        return [*out, "--no-policies"] if not opts.policies else out


def _pairs(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _stock(text: str) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (_pairs(part) for part in text.split(","))}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected sku=units,...: {exc}") from exc


def add_trace_exporter(parser: argparse.ArgumentParser) -> None:
    """``--trace-exporter``, defaulting to ``OTEL_TRACES_EXPORTER`` (see ``_tracing``)."""
    parser.add_argument(
        "--trace-exporter",
        choices=_tracing.EXPORTERS,
        default=_tracing.exporter_from_environment(),
        help="where every span goes: stdout as JSON, OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, "
        "or nowhere (default: OTEL_TRACES_EXPORTER, else none)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``up`` and ``serve`` share."""
    d = Settings()
    add_trace_exporter(parser)
    parser.add_argument("--kafka", default=d.kafka, metavar="HOST:PORT", help="Kafka bootstrap")
    parser.add_argument(
        "--postgres", default=d.postgres, metavar="URL", help="PostgreSQL server URL"
    )
    parser.add_argument("--redis", default=d.redis, metavar="URL", help="Redis URL")
    parser.add_argument(
        "--namespace",
        default=d.namespace,
        help="prefix of databases (NS_orders...), topics (NS.order...), groups, Redis keys",
    )
    parser.add_argument(
        "--base-port", type=int, default=d.base_port, help="gateway port; the others follow it"
    )
    parser.add_argument(
        "--kafka-consumer-option",
        type=_pairs,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka consumer setting (repeatable), e.g. session.timeout.ms=6000",
    )
    parser.add_argument("--saga-timeout", type=float, default=d.options.saga_timeout)
    parser.add_argument(
        "--crash-after-charge",
        type=int,
        default=0,
        metavar="N",
        help="payments: the next N charges die after Stripe answered",
    )
    parser.add_argument(
        "--no-policies",
        action="store_true",
        help="gateway and logistics without timeouts, breakers and fallbacks",
    )
    parser.add_argument(
        "--stock",
        type=_stock,
        default=dict(INITIAL_STOCK),
        metavar="SKU=N,...",
        help="stock levels on first start",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        kafka=args.kafka,
        postgres=args.postgres,
        redis=args.redis,
        namespace=args.namespace,
        base_port=args.base_port,
        consumer_options=dict(args.kafka_consumer_option),
        options=Options(
            saga_timeout=args.saga_timeout,
            crash_after_charge=args.crash_after_charge,
            policies=not args.no_policies,
            stock=args.stock,
        ),
        trace_exporter=args.trace_exporter,
    )


# ---------------------------------------------------------------------- one process


class _Runnable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def serve(name: str, settings: Settings, *, supervised: bool = False) -> int:
    """Run service *name* (or ``fakes``) until SIGTERM / ^C; 0 after a clean stop."""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    layout = ports(settings.base_port)
    shutdown_tracing, _ = _tracing.install(settings.trace_exporter, f"orders-invoices-{name}")
    runner: _Runnable
    if name == "fakes":
        runner = Fakes(layout["stripe"], layout["correios"], layout["smtp"], layout["mailbox"])
    else:
        env = settings.environment()
        env.prepare([name])
        runner = build(name, env, settings.addresses(), settings.options)
    parent = os.getppid()
    with stop_on_signals() as stop:
        runner.start()
        port = layout["stripe" if name == "fakes" else name]
        print(f"{name}: ready on http://127.0.0.1:{port} (pid {os.getpid()})", flush=True)
        while not stop.wait(0.5):
            if supervised and os.getppid() != parent:
                break  # the supervisor died: do not outlive it
        runner.stop()
    if isinstance(runner, Service):
        runner.close()
    shutdown_tracing()  # flush the spans still batched
    return 0


# ---------------------------------------------------------------------- the supervisor


@dataclass
class Child:
    """One supervised process."""

    name: str
    settings: Settings
    process: subprocess.Popen[bytes]
    started_at: float
    wanted: bool = True
    died_at: float | None = None
    crashes: int = 0
    """Deaths in a row that came soon after a start (they lengthen the restart delay)."""


class Supervisor:
    """Starts, watches and stops the processes of the system.

    Args:
        settings: passed to every child as flags.
        log_dir: each child's output goes to ``<log_dir>/<name>.log``
            (default: this process's stdout / stderr).
        restart_delay: wait before restarting a child that died; doubles
            for each death within 30 s of its start, up to 32 times.
        say: where progress lines go.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log_dir: Path | None = None,
        restart_delay: float = 1.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.restart_delay = restart_delay
        self.say = say
        self.children: dict[str, Child] = {}
        self.restarts: dict[str, int] = dict.fromkeys(PROCESSES, 0)
        self._lock = threading.RLock()

    def start(self, timeout: float = 120.0, cancel: threading.Event | None = None) -> Supervisor:
        """Create databases and topics, start every process, wait until all are healthy."""
        self.settings.environment().prepare(SERVICE_NAMES)
        for name in PROCESSES:
            self.spawn(name)
        self.wait_healthy(PROCESSES, timeout, cancel)
        return self

    def spawn(self, name: str, settings: Settings | None = None) -> Child:
        """Start *name* as a child process (``serve NAME --supervised``)."""
        if name not in PROCESSES:
            raise ValueError(f"no process {name!r}; there are {', '.join(PROCESSES)}")
        with self._lock:
            chosen = settings or self.settings
            argv = [sys.executable, "-m", "examples.orders_invoices", "serve", name]
            output: IO[bytes] | None = None
            if self.log_dir is not None:
                output = (self.log_dir / f"{name}.log").open("ab")
            try:
                process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                    [*argv, "--supervised", *chosen.argv()],
                    cwd=ROOT,
                    stdout=output,
                    stderr=subprocess.STDOUT if output is not None else None,
                    start_new_session=True,  # ^C reaches the supervisor, which stops them in order
                )
            finally:
                if output is not None:
                    output.close()
            old = self.children.get(name)
            child = Child(name, chosen, process, time.monotonic())
            child.crashes = old.crashes if old is not None else 0
            self.children[name] = child
            return child

    def pid(self, name: str) -> int:
        return self.children[name].process.pid

    def health_url(self, name: str) -> str:
        port = ports(self.settings.base_port)["stripe" if name == "fakes" else name]
        return f"http://127.0.0.1:{port}/health"

    def wait_healthy(
        self, names: Sequence[str], timeout: float = 60.0, cancel: threading.Event | None = None
    ) -> None:
        """Wait until each of *names* answers ``/health`` from the process we started."""
        deadline = time.monotonic() + timeout
        waiting = list(names)
        with httpx.Client(timeout=1.0) as http:
            while waiting:
                name = waiting[0]
                child = self.children[name]
                if child.process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with status {child.process.returncode} while starting"
                        + (f"; see {self.log_dir / f'{name}.log'}" if self.log_dir else "")
                    )
                try:
                    body = http.get(self.health_url(name)).json()
                    if body.get("pid") == child.process.pid:
                        waiting.pop(0)
                        continue
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline or (cancel is not None and cancel.is_set()):
                    raise RuntimeError(f"{name} did not become healthy within {timeout:.0f} s")
                time.sleep(0.1)

    def stop(self, *names: str, timeout: float = 15.0) -> None:
        """Stop *names* together (SIGTERM, then SIGKILL after *timeout*) and keep them down."""
        with self._lock:
            children = [self.children[name] for name in names]
            for child in children:
                child.wanted = False
        _terminate([child.process for child in children], timeout)

    def restart(self, *names: str, settings: Settings | None = None) -> None:
        """Stop *names* and start them again (with other *settings* if given); wait until healthy."""
        self.stop(*names)
        for name in names:
            self.spawn(name, settings or self.children[name].settings)
        self.wait_healthy(names)

    def poll(self) -> list[str]:
        """Restart children that died on their own once their delay is over; returns their names."""
        restarted: list[str] = []
        now = time.monotonic()
        with self._lock:
            for name, child in list(self.children.items()):
                if not child.wanted or child.process.poll() is None:
                    continue
                if child.died_at is None:
                    child.died_at = now
                    child.crashes = child.crashes + 1 if now - child.started_at < 30 else 1
                    self.say(f"{name} (pid {child.process.pid}) died: {_status(child.process)}")
                delay = self.restart_delay * 2 ** min(child.crashes - 1, 5)
                if now - child.died_at >= delay:
                    fresh = self.spawn(name, child.settings)
                    self.restarts[name] += 1
                    self.say(f"{name} restarted (pid {fresh.process.pid})")
                    restarted.append(name)
        return restarted

    def watch(self, stop: threading.Event, interval: float = 0.2) -> None:
        """Keep the children running until *stop* is set."""
        while not stop.wait(interval):
            self.poll()

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop every child: SIGTERM to all, SIGKILL to those still there after *timeout*."""
        with self._lock:
            for child in self.children.values():
                child.wanted = False
            processes = [c.process for c in self.children.values()]
        _terminate(processes, timeout)


def _terminate(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _status(process: subprocess.Popen[bytes]) -> str:
    code = process.returncode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def up(settings: Settings) -> int:
    """Run the whole system until SIGTERM / ^C (``python -m examples.orders_invoices up``)."""
    supervisor = Supervisor(settings)
    with stop_on_signals() as stop:
        try:
            supervisor.start(cancel=stop)
        except RuntimeError as exc:
            print(f"up: {exc}; stopping", file=sys.stderr)
            supervisor.shutdown()
            return 1
        print("")
        print(f"orders-invoices is up (namespace {settings.namespace!r}):")
        for name, address in settings.addresses().items():
            print(f"  {name:<10} {address}")
        print("stop with ^C or SIGTERM", flush=True)
        supervisor.watch(stop)
    print("stopping ...", flush=True)
    supervisor.shutdown()
    return 0
