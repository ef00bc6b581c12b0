"""The bank's use cases; each call is one unit of work (one database transaction).

Sending debits the origin account, records the transfer as pending and writes
``transaction.requested`` to the outbox in ONE commit: there is never a debit
without its message, or a message without its debit. Each incoming message is
recorded in the inbox in the commit that applies it, so a redelivery changes
nothing: the destination credits once, the origin refunds once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from examples.codepix.application import (
    COMPLETED,
    CONFIRMED,
    FAILED,
    REQUESTED,
    FailureReportPayload,
    MalformedMessageError,
    StatusReportPayload,
    TransferRequestPayload,
)
from examples.codepix.domain import (
    AccountAlreadyExistsError,
    AccountNotFoundError,
    InvalidAccountError,
    InvalidAmountError,
    TransactionNotFoundError,
    normalize_key,
    validate_amount,
    validate_transaction_id,
)

from .domain import (
    BankProfile,
    Direction,
    EntryKind,
    InsufficientFundsError,
    Transfer,
    TransferConflictError,
    TransferStatus,
    new_transfer_id,
    validate_owner,
)
from .ports import AccountView, BankUnitOfWork, Entry, PixRegistry, StatusChange

BankUnitOfWorkFactory = Callable[[], BankUnitOfWork]
MAX_DEPOSIT_CENTS: Final = 1_000_000_000  # ten million reais: the examples' sanity cap


def _account_id(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise AccountNotFoundError(f"no account {value!r}")
    return value


class OpenAccount:
    """Open an account here and announce it to CodePix (keys and transfers need that).

    CodePix is asked first: if it is unreachable nothing is stored and the
    caller gets `CodePixUnavailableError`. Announcing is idempotent, so a retry
    with the same *account_id* after a crash is safe. That is also why a chosen
    *account_id* must carry this bank's prefix (``001-...``): CodePix's "exists
    already" would otherwise let this bank adopt another bank's account, whose
    transfers CodePix then routes to the other bank.
    """

    def __init__(
        self, profile: BankProfile, uow: BankUnitOfWorkFactory, registry: PixRegistry
    ) -> None:
        self._profile = profile
        self._uow = uow
        self._registry = registry

    def __call__(
        self, owner_name: str, deposit_cents: int = 0, *, account_id: str | None = None
    ) -> AccountView:
        owner = validate_owner(owner_name)
        prefix = f"{self._profile.code}-"
        if account_id is not None and not (
            account_id.startswith(prefix) and 0 < len(account_id) - len(prefix) <= 60
        ):
            raise InvalidAccountError(
                f"an account id here looks like {prefix}..., got {account_id!r}"
            )
        if deposit_cents != 0:
            validate_amount(deposit_cents)
            if deposit_cents > MAX_DEPOSIT_CENTS:
                raise InvalidAmountError(f"an opening deposit is at most {MAX_DEPOSIT_CENTS} cents")
        account = AccountView(
            id=account_id or f"{self._profile.code}-{secrets.token_hex(6)}",
            number=f"{secrets.randbelow(900_000) + 100_000}",
            owner_name=owner,
            balance_cents=0,
        )
        with self._uow() as uow:
            if uow.accounts.get(account.id) is not None:
                raise AccountAlreadyExistsError(f"account {account.id} exists")
        self._registry.open_account(
            bank_code=self._profile.code,
            account_id=account.id,
            number=account.number,
            owner=account.owner_name,
        )
        with self._uow() as uow:
            uow.accounts.add(account)
            if deposit_cents:
                uow.accounts.post(account.id, EntryKind.DEPOSIT, deposit_cents, None)
            uow.commit()
        return AccountView(account.id, account.number, account.owner_name, deposit_cents)


class RegisterKey:
    """Register a Pix key for one of our accounts: CodePix decides, synchronously.

    The format is checked here first (no round trip for a typo); CodePix then
    refuses a key someone else owns (`PixKeyAlreadyExistsError`) and the bank
    keeps a local copy only once CodePix said yes.
    """

    def __init__(self, uow: BankUnitOfWorkFactory, registry: PixRegistry) -> None:
        self._uow = uow
        self._registry = registry

    def __call__(self, account_id: str, kind: str, key: str) -> str:
        parsed_kind, canonical = normalize_key(kind, key)
        with self._uow() as uow:
            if uow.accounts.get(_account_id(account_id)) is None:
                raise AccountNotFoundError(f"no account {account_id!r}")
        canonical = self._registry.register_key(str(parsed_kind), canonical, account_id)
        with self._uow() as uow:
            uow.keys.add(account_id, parsed_kind, canonical)
            uow.commit()
        return canonical


@dataclass(frozen=True, slots=True)
class Sent:
    """What `SendTransfer` did: the transfer, and whether this call created it."""

    transfer: Transfer
    created: bool


class SendTransfer:
    """Debit the origin account and ask CodePix to move the money (asynchronously).

    Works while CodePix is down: the request waits in the outbox, then in
    Kafka. The transfer id is the idempotency key: the same id with the same
    details returns the existing transfer (nothing is debited twice); with
    different details it is a `TransferConflictError`.
    """

    def __init__(self, uow: BankUnitOfWorkFactory) -> None:
        self._uow = uow

    def __call__(
        self,
        *,
        account_id: str,
        pix_key_kind: str,
        pix_key: str,
        amount_cents: int,
        description: str = "",
        transfer_id: str | None = None,
    ) -> Sent:
        kind, key = normalize_key(pix_key_kind, pix_key)
        transfer = Transfer(
            id=validate_transaction_id(transfer_id) if transfer_id else new_transfer_id(),
            direction=Direction.OUT,
            account_id=_account_id(account_id),
            amount_cents=validate_amount(amount_cents),
            pix_key_kind=kind,
            pix_key=key,
            counterparty=f"{kind} {key}",
            description=description,
        )
        with self._uow() as uow:
            # Sends from one account take turns (the row lock), so a double submit's second
            # request finds the first one's transfer below instead of colliding with it.
            if uow.accounts.get(transfer.account_id, lock=True) is None:
                raise AccountNotFoundError(f"no account {transfer.account_id!r}")
            existing = uow.transfers.get(transfer.id, Direction.OUT)
            if existing is not None:
                if not existing.same_request(transfer):
                    raise TransferConflictError(f"transfer {transfer.id} exists with other details")
                return Sent(existing, created=False)
            if not uow.accounts.post(
                transfer.account_id, EntryKind.DEBIT, transfer.amount_cents, transfer.id
            ):
                raise InsufficientFundsError(
                    f"account {transfer.account_id} cannot pay {transfer.amount_cents} cents"
                )
            uow.transfers.add(transfer)
            uow.messages.emit(
                REQUESTED,
                transfer.id,
                TransferRequestPayload(
                    id=transfer.id,
                    account_id=transfer.account_id,
                    amount_cents=transfer.amount_cents,
                    pix_key_kind=str(kind),
                    pix_key=key,
                    description=transfer.description,
                ),
            )
            uow.commit()
        return Sent(transfer, created=True)


def _field(payload: Mapping[str, Any], name: str, kind: type[Any] = str) -> Any:
    value = payload.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or value == "":
        raise MalformedMessageError(f"payload field {name!r} must be a {kind.__name__}")
    return value


def _body(payload: object) -> Mapping[str, Any]:
    if not isinstance(payload, dict):
        raise MalformedMessageError("payload must be a JSON object")
    return payload


class ReceiveMessage:
    """Apply one message CodePix sent to this bank, exactly once (inbox + status machine).

    - ``transaction.requested``: we are the destination: credit, tell CodePix ``confirmed``
      (or ``failed`` with the reason, for an account we do not have);
    - ``transaction.confirmed``: we are the origin: settle, tell CodePix ``completed``;
    - ``transaction.failed``: we are the origin: refund the debit, mark ``error``;
    - ``transaction.completed``: we are the destination: mark ``completed``.

    Anything else (unknown type, missing field, a transfer for another bank,
    an unknown transfer) raises a `CodePixError` and is dead-lettered.
    """

    def __init__(self, profile: BankProfile, uow: BankUnitOfWorkFactory) -> None:
        self._profile = profile
        self._uow = uow
        self.consumer = f"bank{profile.code}"
        self._handlers: dict[str, Callable[[BankUnitOfWork, Mapping[str, Any]], None]] = {
            REQUESTED: self._credit,
            CONFIRMED: self._settle,
            FAILED: self._refund,
            COMPLETED: self._complete,
        }

    def __call__(self, message_id: str, message_type: str, payload: object) -> bool:
        """Apply the message; False if it had been applied before."""
        handler = self._handlers.get(message_type)
        if handler is None:
            raise MalformedMessageError(f"a bank does not handle {message_type!r} messages")
        body = _body(payload)
        with self._uow() as uow:
            if not uow.inbox.first_time(self.consumer, message_id):
                return False
            handler(uow, body)
            uow.commit()
        return True

    def _credit(self, uow: BankUnitOfWork, body: Mapping[str, Any]) -> None:
        destination = _body(body.get("to"))
        origin = _body(body.get("from"))
        if _field(destination, "bank_code") != self._profile.code:
            raise MalformedMessageError(
                f"transfer for bank {destination['bank_code']} reached bank {self._profile.code}"
            )
        transfer_id = _field(body, "id")
        if uow.transfers.get(transfer_id, Direction.IN) is not None:
            return  # forwarded again under a new message id: credited already
        account_id = _field(destination, "account_id")
        if uow.accounts.get(account_id) is None:
            # CodePix routed a key to an account this database lacks (lost, or never
            # opened here). Dead-lettering would leave the origin's money in limbo:
            # answer instead, so CodePix fails the transfer and the origin refunds.
            reason = f"bank {self._profile.code} has no account {account_id}"
            uow.messages.emit(
                FAILED, transfer_id, FailureReportPayload(id=transfer_id, reason=reason)
            )
            return
        transfer = Transfer(
            id=transfer_id,
            direction=Direction.IN,
            account_id=account_id,
            amount_cents=_field(body, "amount_cents", int),
            pix_key_kind=_field(destination, "pix_key_kind"),
            pix_key=_field(destination, "pix_key"),
            counterparty=f"{_field(origin, 'owner_name')} @ {_field(origin, 'bank_code')}",
            description=body.get("description") or "",
        )
        uow.transfers.add(transfer)
        uow.accounts.post(account_id, EntryKind.CREDIT, transfer.amount_cents, transfer.id)
        uow.transfers.save(transfer.move(TransferStatus.CONFIRMED))
        uow.messages.emit(CONFIRMED, transfer.id, StatusReportPayload(id=transfer.id))

    def _own(self, uow: BankUnitOfWork, body: Mapping[str, Any], direction: Direction) -> Transfer:
        transfer_id = _field(body, "id")
        transfer = uow.transfers.get(transfer_id, direction)
        if transfer is None:
            raise TransactionNotFoundError(
                f"bank {self._profile.code} has no transfer {transfer_id}"
            )
        return transfer

    def _settle(self, uow: BankUnitOfWork, body: Mapping[str, Any]) -> None:
        transfer = self._own(uow, body, Direction.OUT)
        if transfer.status in {TransferStatus.CONFIRMED, TransferStatus.COMPLETED}:
            return  # CodePix repeated itself
        confirmed = transfer.move(TransferStatus.CONFIRMED)  # illegal after an error: dead letter
        uow.transfers.save(confirmed)
        uow.transfers.save(confirmed.move(TransferStatus.COMPLETED))  # the course's missing step
        uow.messages.emit(COMPLETED, transfer.id, StatusReportPayload(id=transfer.id))

    def _refund(self, uow: BankUnitOfWork, body: Mapping[str, Any]) -> None:
        transfer = self._own(uow, body, Direction.OUT)
        if transfer.status is TransferStatus.ERROR:
            return
        reason = str(body.get("reason") or "refused by CodePix")[:500]
        failed = transfer.move(TransferStatus.ERROR, reason)  # never after a credit
        uow.accounts.post(transfer.account_id, EntryKind.REFUND, transfer.amount_cents, transfer.id)
        uow.transfers.save(failed)

    def _complete(self, uow: BankUnitOfWork, body: Mapping[str, Any]) -> None:
        transfer = self._own(uow, body, Direction.IN)
        if transfer.status is not TransferStatus.COMPLETED:
            uow.transfers.save(transfer.move(TransferStatus.COMPLETED))


@dataclass(frozen=True, slots=True)
class AccountPage:
    """Everything the account page shows."""

    account: AccountView
    keys: Sequence[tuple[str, str]]
    entries: Sequence[Entry]
    transfers: Sequence[Transfer]


class Queries:
    """Read-only views for the pages, the API and the demo."""

    def __init__(self, uow: BankUnitOfWorkFactory) -> None:
        self._uow = uow

    def accounts(self) -> Sequence[AccountView]:
        with self._uow() as uow:
            return list(uow.accounts.all())

    def account(self, account_id: str, limit: int = 20) -> AccountPage:
        with self._uow() as uow:
            account = uow.accounts.get(_account_id(account_id))
            if account is None:
                raise AccountNotFoundError(f"no account {account_id!r}")
            return AccountPage(
                account=account,
                keys=[(str(k), v) for k, v in uow.keys.for_account(account_id)],
                entries=list(uow.accounts.entries(account_id, limit)),
                transfers=list(uow.transfers.for_account(account_id, limit)),
            )

    def transfer(self, transfer_id: str) -> tuple[Transfer, Sequence[StatusChange]]:
        """The outgoing transfer (else the incoming one) and its history."""
        with self._uow() as uow:
            found = uow.transfers.get(transfer_id, Direction.OUT) or uow.transfers.get(
                transfer_id, Direction.IN
            )
            if found is None:
                raise TransactionNotFoundError(f"no transfer {transfer_id!r}")
            return found, list(uow.transfers.history(transfer_id))
