"""The CLI drives the same use cases as gRPC; the entrypoint runs gRPC + consumer + relay."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from examples.codepix.adapters.cli import EXIT_DOMAIN_ERROR, main
from examples.codepix.adapters.grpc_api import build_server
from examples.codepix.adapters.grpc_api._generated import codepix_pb2, codepix_pb2_grpc
from examples.codepix.adapters.sql import create_engine, unit_of_work_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[3]


def run(db: str, *argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = main(["--db", db, *argv], out)
    return code, json.loads(out.getvalue())


def test_cli_drives_the_use_cases_and_grpc_sees_the_result(sqlite_url: str) -> None:
    assert run(sqlite_url, "bank", "add", "001", "Banco Um") == (
        0,
        {"code": "001", "name": "Banco Um"},
    )
    code, _ = run(sqlite_url, "account", "add", "001", "acc-ann", "1001", "Ann")
    assert code == 0
    code, created = run(sqlite_url, "key", "register", "cpf", "529.982.247-25", "acc-ann")
    assert code == 0
    assert created["key"] == "52998224725"
    assert run(sqlite_url, "key", "find", "cpf", "52998224725") == (0, created)

    # the gRPC adapter, over the same database, sees what the CLI registered
    engine = create_engine(sqlite_url)
    server, port, _ = build_server(unit_of_work_factory(engine), "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            found = codepix_pb2_grpc.PixServiceStub(channel).Find(
                codepix_pb2.FindPixKeyRequest(kind="cpf", key="52998224725"), timeout=5
            )
        assert (found.account.id, found.account.bank.code) == ("acc-ann", "001")
    finally:
        server.stop(grace=None).wait()
        engine.dispose()


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (("bank", "add", "1", "X"), "InvalidBankError"),
        (("bank", "add", "001", "Again"), "BankAlreadyExistsError"),
        (("account", "add", "999", "acc-x", "1", "X"), "BankNotFoundError"),
        (("key", "register", "email", "not-an-email", "acc-ann"), "InvalidPixKeyError"),
        (("key", "register", "email", "ann@example.com", "nobody"), "AccountNotFoundError"),
        (("key", "find", "phone", "+5511987654321"), "PixKeyNotFoundError"),
    ],
)
def test_cli_reports_domain_errors_without_a_traceback(
    sqlite_url: str, argv: tuple[str, ...], error: str
) -> None:
    run(sqlite_url, "bank", "add", "001", "Banco Um")
    run(sqlite_url, "account", "add", "001", "acc-ann", "1001", "Ann")
    code, body = run(sqlite_url, *argv)
    assert code == EXIT_DOMAIN_ERROR
    assert body["error"] == error
    assert body["message"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_entrypoint_all_serves_grpc_and_stops_cleanly_on_sigterm(sqlite_url: str) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.codepix",
            "--db",
            sqlite_url,
            "all",
            "--grpc",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="codepix.v1.PixService"), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "consuming transactions, transaction_confirmation" in output
    assert f"listening on port {port}" in output
