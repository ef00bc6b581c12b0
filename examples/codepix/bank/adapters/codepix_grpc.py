"""The bank's client for CodePix's synchronous side (`PixRegistry` over gRPC).

Every call carries a deadline, so a CodePix that hangs costs the bank at most
*timeout* seconds, and gRPC status codes become the errors the use cases know:
ALREADY_EXISTS -> `PixKeyAlreadyExistsError` / fine for accounts,
INVALID_ARGUMENT -> `InvalidPixKeyError`, NOT_FOUND (bank) -> `BankNotAdmittedError`,
UNAVAILABLE / DEADLINE_EXCEEDED -> `CodePixUnavailableError`.
"""

from __future__ import annotations

from typing import Any, Final

import grpc

from examples.codepix.adapters.grpc_api._generated import codepix_pb2, codepix_pb2_grpc
from examples.codepix.bank.ports import BankNotAdmittedError, CodePixUnavailableError
from examples.codepix.domain import (
    AccountNotFoundError,
    InvalidInputError,
    InvalidPixKeyError,
    PixKeyAlreadyExistsError,
)
from resilience.policies import Retry

_GONE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


_CHANNEL_OPTIONS: Final = (
    # Reconnect quickly after CodePix restarts instead of grpc's default (up to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


class _NotConnected(CodePixUnavailableError):
    """UNAVAILABLE: the request did not reach CodePix, so sending it again is safe."""


class GrpcPixRegistry:
    """`PixRegistry` talking to CodePix at *target* (``host:port``).

    A call that could not reach CodePix (UNAVAILABLE, e.g. the channel is
    still reconnecting after a restart) is retried four times with a short backoff (about 1.5 s in all)
    (`resilience.policies.Retry`); a call that may have reached it
    (DEADLINE_EXCEEDED) is not, and the caller sees 503.
    """

    def __init__(self, target: str, *, timeout: float = 3.0) -> None:
        self.target = target
        self._timeout = timeout
        self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub: Any = codepix_pb2_grpc.PixServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._retry = Retry(
            on=_NotConnected, attempts=5, wait_initial=0.1, wait_max=0.5, name="codepix-grpc"
        )

    def _call(self, method: str, request: Any) -> Any:
        return self._retry.call(self._once, method, request)

    def _once(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code in _GONE:
                error = (
                    _NotConnected
                    if code is grpc.StatusCode.UNAVAILABLE
                    else CodePixUnavailableError
                )
                raise error(
                    f"CodePix at {self.target} is unreachable ({code.name}); try again shortly"
                ) from None
            raise _domain_error(method, code, details) from None

    def open_account(self, *, bank_code: str, account_id: str, number: str, owner: str) -> None:
        request = codepix_pb2.OpenAccountRequest(
            bank_code=bank_code, account_id=account_id, number=number, owner_name=owner
        )
        try:
            self._call("OpenAccount", request)
        except _AlreadyThere:
            pass  # announced before (a retry after a crash): nothing to do

    def register_key(self, kind: str, key: str, account_id: str) -> str:
        request = codepix_pb2.RegisterPixKeyRequest(kind=kind, key=key, account_id=account_id)
        try:
            return str(self._call("RegisterPixKey", request).key)
        except PixKeyAlreadyExistsError:
            # Ours already (an earlier attempt got through, its answer did not)? Then it is done.
            owner = self._call("Find", codepix_pb2.FindPixKeyRequest(kind=kind, key=key))
            if owner.account.id == account_id:
                return str(owner.key)
            raise

    def close(self) -> None:
        self._channel.close()


class _AlreadyThere(PixKeyAlreadyExistsError):
    """ALREADY_EXISTS from OpenAccount; swallowed there, never seen by callers."""


def _domain_error(method: str, code: grpc.StatusCode, details: str) -> Exception:
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return (
            _AlreadyThere(details) if method == "OpenAccount" else PixKeyAlreadyExistsError(details)
        )
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return (
            InvalidPixKeyError(details) if method != "OpenAccount" else InvalidInputError(details)
        )
    if code is grpc.StatusCode.NOT_FOUND:
        if "bank" in details:
            return BankNotAdmittedError(f"CodePix has not admitted this bank: {details}")
        return AccountNotFoundError(details)
    return CodePixUnavailableError(f"CodePix answered {code.name}: {details}")
