"""PixService over a real loopback gRPC server and channel."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import grpc
import pytest
from examples.codepix.adapters.grpc_api import SERVICE_NAME, build_server
from examples.codepix.adapters.grpc_api._generated import codepix_pb2, codepix_pb2_grpc
from examples.codepix.application import UnitOfWork, UnitOfWorkFactory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def start(uow: UnitOfWorkFactory) -> tuple[grpc.Server, str]:
    server, port, _ = build_server(uow, "127.0.0.1:0", max_workers=8)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def target(codepix_db: Any) -> Iterator[str]:
    server, address = start(codepix_db.uow)
    yield address
    server.stop(grace=None).wait()


@pytest.fixture
def stub(target: str) -> Iterator[codepix_pb2_grpc.PixServiceStub]:
    with grpc.insecure_channel(target) as channel:
        yield codepix_pb2_grpc.PixServiceStub(channel)


def register(stub: Any, kind: str, key: str, account_id: str) -> Any:
    return stub.RegisterPixKey(
        codepix_pb2.RegisterPixKeyRequest(kind=kind, key=key, account_id=account_id), timeout=10
    )


def find(stub: Any, kind: str, key: str) -> Any:
    return stub.Find(codepix_pb2.FindPixKeyRequest(kind=kind, key=key), timeout=10)


def code_of(call: Any, *args: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value.code()  # type: ignore[no-any-return]


def test_register_then_find_returns_key_account_and_bank(stub: Any) -> None:
    created = register(stub, "email", "Bob@Example.com", "acc-bob")
    assert created.key == "bob@example.com"  # canonical form
    found = find(stub, "email", "bob@example.com")
    assert found == created
    assert (found.kind, found.status) == ("email", "active")
    assert (found.account.id, found.account.owner_name) == ("acc-bob", "Bob")
    assert (found.account.bank.code, found.account.bank.name) == ("002", "Banco Dois")


def test_status_codes(stub: Any) -> None:
    register(stub, "cpf", "529.982.247-25", "acc-ann")
    assert (
        code_of(register, stub, "cpf", "52998224725", "acc-bob") == grpc.StatusCode.ALREADY_EXISTS
    )
    assert code_of(find, stub, "cpf", "11144477735") == grpc.StatusCode.NOT_FOUND
    assert code_of(find, stub, "cpf", "11144477736") == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code_of(register, stub, "phone", "11987654321", "acc-ann")
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert code_of(register, stub, "iban", "x", "acc-ann") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(register, stub, "phone", "+5511987654321", "nobody") == grpc.StatusCode.NOT_FOUND
    # the server is still fine after every error
    assert find(stub, "cpf", "52998224725").account.id == "acc-ann"


def deactivate(stub: Any, kind: str, key: str) -> Any:
    return stub.DeactivatePixKey(
        codepix_pb2.DeactivatePixKeyRequest(kind=kind, key=key), timeout=10
    )


def test_deactivate_keeps_the_key_inactive_and_maps_errors(stub: Any) -> None:
    register(stub, "email", "bob@example.com", "acc-bob")
    deactivated = deactivate(stub, "email", "Bob@Example.com")
    assert (deactivated.key, deactivated.status) == ("bob@example.com", "inactive")
    assert deactivated.account.id == "acc-bob"
    assert find(stub, "email", "bob@example.com") == deactivated  # kept, not deleted
    assert (
        code_of(deactivate, stub, "email", "bob@example.com") == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert code_of(deactivate, stub, "email", "nobody@example.com") == grpc.StatusCode.NOT_FOUND
    assert code_of(deactivate, stub, "cpf", "123") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(deactivate, stub, "iban", "x") == grpc.StatusCode.INVALID_ARGUMENT
    # a deactivated key still belongs to its account: nobody else can take it
    assert (
        code_of(register, stub, "email", "bob@example.com", "acc-ann")
        == grpc.StatusCode.ALREADY_EXISTS
    )


def open_account(stub: Any, bank_code: str, account_id: str, owner: str = "Dee") -> Any:
    return stub.OpenAccount(
        codepix_pb2.OpenAccountRequest(
            bank_code=bank_code, account_id=account_id, number="3001", owner_name=owner
        ),
        timeout=10,
    )


def test_open_account_lets_a_bank_announce_its_accounts(stub: Any) -> None:
    opened = open_account(stub, "002", "acc-dee")
    assert (opened.id, opened.bank.code, opened.bank.name) == ("acc-dee", "002", "Banco Dois")
    assert register(stub, "email", "dee@example.com", "acc-dee").account.id == "acc-dee"
    assert code_of(open_account, stub, "002", "acc-dee") == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(open_account, stub, "777", "acc-x") == grpc.StatusCode.NOT_FOUND
    assert code_of(open_account, stub, "7", "acc-x") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(open_account, stub, "002", "", "Eve") == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_registration_of_one_key_has_exactly_one_owner(target: str) -> None:
    """Two banks race for the same keys over separate channels: one wins each key."""
    keys = [str(uuid.uuid4()) for _ in range(15)]
    accounts = {"001": "acc-ann", "002": "acc-bob"}
    outcomes: dict[str, list[tuple[str, str]]] = {k: [] for k in keys}
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def bank(code: str) -> None:
        with grpc.insecure_channel(target) as channel:
            bank_stub = codepix_pb2_grpc.PixServiceStub(channel)
            for key in keys:
                barrier.wait(timeout=20)
                try:
                    register(bank_stub, "random", key, accounts[code])
                    result = "ok"
                except grpc.RpcError as exc:
                    result = exc.code().name
                with lock:
                    outcomes[key].append((code, result))

    threads = [threading.Thread(target=bank, args=(code,)) for code in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with grpc.insecure_channel(target) as channel:
        reader = codepix_pb2_grpc.PixServiceStub(channel)
        for key, results in outcomes.items():
            assert sorted(r for _, r in results) == ["ALREADY_EXISTS", "ok"], results
            winner = next(code for code, r in results if r == "ok")
            assert find(reader, "random", key).account.bank.code == winner


def test_health_check_reports_serving(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_service(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert SERVICE_NAME in database.get_services()
        from google.protobuf.descriptor_pool import DescriptorPool

        service = DescriptorPool(database).FindServiceByName(SERVICE_NAME)
        assert {m.name for m in service.methods} == {
            "RegisterPixKey",
            "Find",
            "OpenAccount",
            "DeactivatePixKey",
        }


class _SlowUnitOfWork:
    """Delegates to a real unit of work after a pause: a database that got slow."""

    def __init__(self, inner: UnitOfWork, pause: float) -> None:
        self._inner = inner
        self._pause = pause

    def __enter__(self) -> UnitOfWork:
        time.sleep(self._pause)
        return self._inner.__enter__()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._inner.__exit__(t, e, tb)


def test_expired_deadline_is_honoured_nothing_is_committed(codepix_db: Any) -> None:
    """The client gives up after 0.2 s; the server, slowed to 0.6 s, must not commit the key."""
    slow: UnitOfWorkFactory = lambda: _SlowUnitOfWork(codepix_db.uow(), 0.6)  # type: ignore[assignment, return-value]  # noqa: E731
    server, address = start(slow)
    try:
        with grpc.insecure_channel(address) as channel:
            slow_stub = codepix_pb2_grpc.PixServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                slow_stub.RegisterPixKey(
                    codepix_pb2.RegisterPixKeyRequest(
                        kind="email", key="late@example.com", account_id="acc-ann"
                    ),
                    timeout=0.2,
                )
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.8)  # let the server-side handler run to its end
    finally:
        server.stop(grace=None).wait()
    fast, fast_address = start(codepix_db.uow)
    try:
        with grpc.insecure_channel(fast_address) as channel:
            fast_stub = codepix_pb2_grpc.PixServiceStub(channel)
            assert (
                code_of(find, fast_stub, "email", "late@example.com") == grpc.StatusCode.NOT_FOUND
            )
            # and with enough time the same registration goes through
            assert (
                register(fast_stub, "email", "late@example.com", "acc-ann").account.id == "acc-ann"
            )
    finally:
        fast.stop(grace=None).wait()
