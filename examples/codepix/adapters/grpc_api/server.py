"""The gRPC driving adapter: PixService over the use cases, with health and reflection.

The code in ``_generated`` comes from ``examples/codepix/proto/codepix.proto``;
regenerate it from the project root with::

    python -m grpc_tools.protoc \\
      -Iexamples/codepix/adapters/grpc_api/_generated=examples/codepix/proto \\
      --python_out=. --pyi_out=. --grpc_python_out=. \\
      examples/codepix/proto/codepix.proto

(the ``-I<virtual>=<real>`` mapping makes the generated import paths match the package).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any, Final, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from examples.codepix.application import (
    DeactivatePixKey,
    FindPixKey,
    OpenAccount,
    RegisterPixKey,
    UnitOfWorkFactory,
)
from examples.codepix.domain import (
    Account,
    AlreadyExistsError,
    CodePixError,
    InvalidInputError,
    NotFoundError,
    PixKey,
    RuleViolationError,
)
from resilience import DeadlineExceededError
from resilience.policies import deadline, deadline_from_grpc_metadata
from resilience.tracing import grpc_server_interceptor

from ._generated import codepix_pb2, codepix_pb2_grpc

SERVICE_NAME: Final = codepix_pb2.DESCRIPTOR.services_by_name["PixService"].full_name
"""``codepix.v1.PixService``, as health checks and reflection name it."""

_STATUS: Final[tuple[tuple[type[CodePixError], grpc.StatusCode], ...]] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (RuleViolationError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(error: CodePixError) -> grpc.StatusCode:
    """The gRPC status a domain error maps to (one branch of the error tree, one code)."""
    for kind, code in _STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def _caller_seconds(context: grpc.ServicerContext) -> float | None:
    """What the caller allows: grpcio's own deadline, or ``grpc-timeout`` metadata
    forwarded by a proxy that terminates HTTP/2 (the core strips the real header)."""
    left = context.time_remaining()
    if left is not None and left < 1e9:  # grpcio reports "no deadline" as a huge number
        return float(left)
    return deadline_from_grpc_metadata(
        (k, v) for k, v in context.invocation_metadata() if isinstance(v, str)
    )


def _account_proto(account: Account) -> codepix_pb2.Account:
    return codepix_pb2.Account(
        id=account.id,
        number=account.number,
        owner_name=account.owner_name,
        bank=codepix_pb2.Bank(code=account.bank.code, name=account.bank.name),
    )


def _to_proto(pix_key: PixKey) -> codepix_pb2.PixKeyInfo:
    return codepix_pb2.PixKeyInfo(
        kind=str(pix_key.kind),
        key=pix_key.key,
        status=str(pix_key.status),
        account=_account_proto(pix_key.account),
    )


class PixServicer(codepix_pb2_grpc.PixServiceServicer):
    """Translates RPCs into use-case calls and domain errors into status codes; nothing else."""

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._register = RegisterPixKey(uow)
        self._find = FindPixKey(uow)
        self._open = OpenAccount(uow)
        self._deactivate = DeactivatePixKey(uow)

    @contextmanager
    def _call(self, context: grpc.ServicerContext) -> Iterator[None]:
        try:
            with deadline(_caller_seconds(context)):
                yield
        except DeadlineExceededError as exc:
            _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except CodePixError as exc:
            _abort(context, status_for(exc), str(exc))

    def RegisterPixKey(
        self, request: codepix_pb2.RegisterPixKeyRequest, context: grpc.ServicerContext
    ) -> codepix_pb2.PixKeyInfo:
        with self._call(context):
            return _to_proto(self._register(request.kind, request.key, request.account_id))
        raise AssertionError("unreachable")  # pragma: no cover - _call aborts

    def Find(
        self, request: codepix_pb2.FindPixKeyRequest, context: grpc.ServicerContext
    ) -> codepix_pb2.PixKeyInfo:
        with self._call(context):
            return _to_proto(self._find(request.kind, request.key))
        raise AssertionError("unreachable")  # pragma: no cover - _call aborts

    def OpenAccount(
        self, request: codepix_pb2.OpenAccountRequest, context: grpc.ServicerContext
    ) -> codepix_pb2.Account:
        with self._call(context):
            account = self._open(
                bank_code=request.bank_code,
                account_id=request.account_id,
                number=request.number,
                owner_name=request.owner_name,
            )
            return _account_proto(account)
        raise AssertionError("unreachable")  # pragma: no cover - _call aborts

    def DeactivatePixKey(
        self, request: codepix_pb2.DeactivatePixKeyRequest, context: grpc.ServicerContext
    ) -> codepix_pb2.PixKeyInfo:
        with self._call(context):
            return _to_proto(self._deactivate(request.kind, request.key))
        raise AssertionError("unreachable")  # pragma: no cover - _call aborts


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("context.abort returned")  # pragma: no cover


def build_server(
    uow: UnitOfWorkFactory,
    address: str = "127.0.0.1:50051",
    *,
    max_workers: int = 16,
    interceptors: list[Any] | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A server with PixService, the standard health service and server reflection.

    Every call runs in a SERVER span continuing the caller's trace
    (`resilience.tracing.grpc_server_interceptor`, a no-op without
    OpenTelemetry); *interceptors* are added after it.

    Returns the (not yet started) server, the bound port (useful with
    ``address="127.0.0.1:0"``) and the health servicer, so the caller can flip
    the status to NOT_SERVING while draining.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="codepix-grpc"),
        interceptors=[grpc_server_interceptor(), *(interceptors or ())],
    )
    codepix_pb2_grpc.add_PixServiceServicer_to_server(PixServicer(uow), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return server, port, health_servicer


def serve(uow: UnitOfWorkFactory, address: str, stop: Callable[[float], bool]) -> None:
    """Run the server until ``stop(timeout)`` returns True (e.g. ``threading.Event().wait``)."""
    server, _port, health_servicer = build_server(uow, address)
    server.start()
    try:
        while not stop(1.0):
            pass
    finally:
        health_servicer.enter_graceful_shutdown()  # tell load balancers first
        server.stop(grace=5).wait()
