"""The use cases: each call is one unit of work (one database transaction).

Every state change and every message it causes commit together (the adapter's
`MessageSink` writes to the outbox); every incoming message is first recorded
in the inbox, in the same transaction, so a redelivered message changes
nothing. A use case either commits all of it or none of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from examples.codepix.domain import (
    Account,
    AccountNotFoundError,
    Bank,
    BankNotFoundError,
    CodePixError,
    IllegalTransitionError,
    PixKey,
    PixKeyNotFoundError,
    Transaction,
    TransactionNotFoundError,
    TransactionStatus,
    normalize_key,
    validate_bank_code,
)

from .messages import (
    COMPLETED,
    CONFIRMED,
    FAILED,
    REQUESTED,
    FailedPayload,
    FailureReport,
    StatusPayload,
    StatusUpdate,
    TransferRequest,
    transfer_payload,
)
from .ports import OutgoingMessage, UnitOfWork, UnitOfWorkFactory

TRANSACTIONS_CONSUMER: Final = "codepix.transactions"
CONFIRMATIONS_CONSUMER: Final = "codepix.transaction_confirmation"


class RegisterBank:
    """Admit a bank to the network (an operator action: CLI or seed data)."""

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    def __call__(self, code: str, name: str) -> Bank:
        bank = Bank(code=code, name=name)
        with self._uow() as uow:
            uow.banks.add(bank)
            uow.commit()
        return bank


class OpenAccount:
    """Make a bank's account known to CodePix so keys can point at it."""

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    def __call__(self, *, bank_code: str, account_id: str, number: str, owner_name: str) -> Account:
        validate_bank_code(bank_code)  # a malformed code is bad input, not an unknown bank
        with self._uow() as uow:
            bank = uow.banks.get(bank_code)
            if bank is None:
                raise BankNotFoundError(f"no bank with code {bank_code!r}")
            account = Account(id=account_id, number=number, owner_name=owner_name, bank=bank)
            uow.accounts.add(account)
            uow.commit()
        return account


class RegisterPixKey:
    """Bind a key to an account. Exactly one account owns a key, even under concurrent calls."""

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    def __call__(self, kind: str, key: str, account_id: str) -> PixKey:
        parsed_kind, canonical = normalize_key(kind, key)  # refuse bad input before any I/O
        with self._uow() as uow:
            account = uow.accounts.get(account_id)
            if account is None:
                raise AccountNotFoundError(f"no account with id {account_id!r}")
            pix_key = PixKey(kind=parsed_kind, key=canonical, account=account)
            uow.pix_keys.add(pix_key)  # the repository enforces uniqueness atomically
            uow.commit()
        return pix_key


class FindPixKey:
    """Look a key up (banks do this before showing "send R$ 10 to Maria at Bank 002?")."""

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    def __call__(self, kind: str, key: str) -> PixKey:
        parsed_kind, canonical = normalize_key(kind, key)
        with self._uow() as uow:
            found = uow.pix_keys.find(parsed_kind, canonical)
        if found is None:
            raise PixKeyNotFoundError(f"no {parsed_kind} key {canonical!r}")
        return found


class DeactivatePixKey:
    """Stop a key receiving transfers (its owner gave it up); transfers to it are then refused.

    The key is kept, not deleted: past transactions refer to it, and a refused
    transfer's reason can still name it.
    """

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    def __call__(self, kind: str, key: str) -> PixKey:
        parsed_kind, canonical = normalize_key(kind, key)
        with self._uow() as uow:
            found = uow.pix_keys.find(parsed_kind, canonical)
            if found is None:
                raise PixKeyNotFoundError(f"no {parsed_kind} key {canonical!r}")
            deactivated = found.deactivate()  # InactivePixKeyError if it already is
            uow.pix_keys.save(deactivated)
            uow.commit()
        return deactivated


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """What handling one incoming message did.

    Attributes:
        transaction: the transfer after the change (None when refused before it existed).
        duplicate: the message had been applied before; nothing changed.
        rejected: the reason sent back to the origin bank, when the transfer was refused.
    """

    transaction: Transaction | None = None
    duplicate: bool = False
    rejected: str | None = None


class RegisterTransaction:
    """Take a transfer from the ``transactions`` topic and forward it to the destination bank.

    A transfer that cannot succeed (unknown or inactive key, same account, bad
    amount) is answered with ``transaction.failed`` to the origin bank, in the
    same transaction that records the message as handled: the bank always hears
    back. A message CodePix cannot attribute to a bank (unknown origin account)
    raises, and the consumer dead-letters it with the reason.
    """

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    def __call__(self, request: TransferRequest) -> TransferOutcome:
        with self._uow() as uow:
            if not uow.inbox.first_time(TRANSACTIONS_CONSUMER, request.message_id):
                return TransferOutcome(duplicate=True)
            origin = uow.accounts.get(request.account_id)
            if origin is None:
                raise AccountNotFoundError(f"origin account {request.account_id!r} is unknown")
            existing = uow.transactions.get(request.id)
            if existing is not None and existing.account_from.id == origin.id:
                uow.commit()  # the bank resent a transfer we already have: nothing to do
                return TransferOutcome(transaction=existing, duplicate=True)
            try:
                if existing is not None:
                    raise IllegalTransitionError(
                        f"transaction id {request.id!r} is already used by another account"
                    )
                kind, key = normalize_key(request.pix_key_kind, request.pix_key)
                destination = uow.pix_keys.find(kind, key)
                if destination is None:
                    raise PixKeyNotFoundError(f"no {kind} key {key!r}")
                transaction = Transaction.register(
                    id=request.id,
                    account_from=origin,
                    amount_cents=request.amount_cents,
                    pix_key_to=destination,
                    description=request.description,
                )
            except CodePixError as exc:
                reason = str(exc)
                _tell_origin_it_failed(uow, origin.bank.code, request.id, reason)
                uow.commit()
                return TransferOutcome(rejected=reason)
            uow.transactions.add(transaction)
            uow.messages.emit(
                OutgoingMessage(
                    bank_code=destination.account.bank.code,
                    type=REQUESTED,
                    key=transaction.id,
                    payload=transfer_payload(transaction),
                )
            )
            uow.commit()
        return TransferOutcome(transaction=transaction)


class _StatusChange:
    """Shared shape of confirm / complete: load, move, save, tell the other bank."""

    target: TransactionStatus
    message_type: str

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    def _move(self, transaction: Transaction) -> Transaction:
        raise NotImplementedError

    def _notify(self, transaction: Transaction) -> str:
        raise NotImplementedError

    def __call__(self, update: StatusUpdate) -> TransferOutcome:
        with self._uow() as uow:
            if not uow.inbox.first_time(CONFIRMATIONS_CONSUMER, update.message_id):
                return TransferOutcome(duplicate=True)
            current = uow.transactions.get(update.id)
            if current is None:
                raise TransactionNotFoundError(f"no transaction {update.id!r}")
            if current.status is self.target:
                uow.commit()  # a bank repeated itself with a new message id
                return TransferOutcome(transaction=current, duplicate=True)
            moved = self._move(current)  # IllegalTransitionError for e.g. completing a pending one
            uow.transactions.save(moved)
            uow.messages.emit(
                OutgoingMessage(
                    bank_code=self._notify(moved),
                    type=self.message_type,
                    key=moved.id,
                    payload=StatusPayload(id=moved.id, status=str(moved.status)),
                )
            )
            uow.commit()
        return TransferOutcome(transaction=moved)


class ConfirmTransaction(_StatusChange):
    """The destination bank credited the money: mark confirmed and tell the origin bank."""

    target = TransactionStatus.CONFIRMED
    message_type = CONFIRMED

    def _move(self, transaction: Transaction) -> Transaction:
        return transaction.confirm()

    def _notify(self, transaction: Transaction) -> str:
        return transaction.account_from.bank.code


class CompleteTransaction(_StatusChange):
    """The origin bank settled its side: mark completed and tell the destination bank."""

    target = TransactionStatus.COMPLETED
    message_type = COMPLETED

    def _move(self, transaction: Transaction) -> Transaction:
        return transaction.complete()

    def _notify(self, transaction: Transaction) -> str:
        return transaction.pix_key_to.account.bank.code


class FailTransaction:
    """The destination bank cannot credit (it lacks the key's account): mark error, tell the origin.

    Only a pending transfer can be refused this way: once the destination has
    confirmed, it has credited the money, and refunding the origin as well would
    create money; such a report is an `IllegalTransitionError` (dead-lettered).
    """

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    def __call__(self, report: FailureReport) -> TransferOutcome:
        with self._uow() as uow:
            if not uow.inbox.first_time(CONFIRMATIONS_CONSUMER, report.message_id):
                return TransferOutcome(duplicate=True)
            current = uow.transactions.get(report.id)
            if current is None:
                raise TransactionNotFoundError(f"no transaction {report.id!r}")
            if current.status is TransactionStatus.ERROR:
                uow.commit()  # the bank refused again under a new message id
                return TransferOutcome(transaction=current, duplicate=True)
            if current.status is not TransactionStatus.PENDING:
                raise IllegalTransitionError(
                    f"transaction {current.id} is {current.status}; the destination cannot refuse it"
                )
            failed = current.fail(report.reason)
            uow.transactions.save(failed)
            _tell_origin_it_failed(
                uow, failed.account_from.bank.code, failed.id, failed.error_reason or ""
            )
            uow.commit()
        return TransferOutcome(transaction=failed, rejected=failed.error_reason)


def _tell_origin_it_failed(
    uow: UnitOfWork, bank_code: str, transaction_id: str, reason: str
) -> None:
    """Queue ``transaction.failed`` for the origin bank, which refunds on it (same commit)."""
    uow.messages.emit(
        OutgoingMessage(
            bank_code=bank_code,
            type=FAILED,
            key=transaction_id,
            payload=FailedPayload(id=transaction_id, status="error", reason=reason),
        )
    )


PERMANENT_ERRORS: Final[tuple[type[Exception], ...]] = (
    CodePixError,  # malformed payloads, unknown accounts / transactions, illegal transitions
)
"""Errors a retry cannot fix: the consumer dead-letters them at once, with the reason."""

__all__ = [
    "CONFIRMATIONS_CONSUMER",
    "PERMANENT_ERRORS",
    "TRANSACTIONS_CONSUMER",
    "CompleteTransaction",
    "ConfirmTransaction",
    "DeactivatePixKey",
    "FailTransaction",
    "FindPixKey",
    "OpenAccount",
    "RegisterBank",
    "RegisterPixKey",
    "RegisterTransaction",
    "TransferOutcome",
]
