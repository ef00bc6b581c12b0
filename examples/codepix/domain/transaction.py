"""Transfers and their life cycle: pending -> confirmed -> completed, or error."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Final

from .bank import Account
from .errors import (
    IllegalTransitionError,
    InactivePixKeyError,
    InvalidAmountError,
    InvalidInputError,
    SameAccountError,
)
from .pix_key import PixKey

MAX_AMOUNT_CENTS: Final = 100_000_000_000
"""One billion reais: anything above is a bug or an attack, never a real Pix."""

_MAX_ID: Final = 64
_MAX_DESCRIPTION: Final = 140
_MAX_REASON: Final = 500


class TransactionStatus(enum.StrEnum):
    """Where a transfer is in its life cycle."""

    PENDING = "pending"  # registered by CodePix, sent to the destination bank
    CONFIRMED = "confirmed"  # the destination bank credited the money
    COMPLETED = "completed"  # the origin bank settled its side
    ERROR = "error"  # refused; `Transaction.error_reason` says why


_ALLOWED: Final = {
    TransactionStatus.PENDING: frozenset({TransactionStatus.CONFIRMED, TransactionStatus.ERROR}),
    TransactionStatus.CONFIRMED: frozenset({TransactionStatus.COMPLETED, TransactionStatus.ERROR}),
    TransactionStatus.COMPLETED: frozenset(),
    TransactionStatus.ERROR: frozenset(),
}


def can_transition(current: TransactionStatus, target: TransactionStatus) -> bool:
    """Whether the life cycle allows going from *current* to *target*."""
    return target in _ALLOWED[current]


def validate_amount(amount_cents: object) -> int:
    """*amount_cents* if it is an int in 1..`MAX_AMOUNT_CENTS`; floats are refused.

    Money is never a float: 0.1 + 0.2 != 0.3, and a payment system that rounds
    is a payment system that loses cents.
    """
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int):
        raise InvalidAmountError(
            f"amount must be an integer number of cents, got {type(amount_cents).__name__}"
        )
    if amount_cents <= 0:
        raise InvalidAmountError(f"amount must be positive, got {amount_cents}")
    if amount_cents > MAX_AMOUNT_CENTS:
        raise InvalidAmountError(f"amount {amount_cents} is over the {MAX_AMOUNT_CENTS} cap")
    return amount_cents


def validate_transaction_id(value: object) -> str:
    """A transaction id as the origin bank chose it (non-empty, at most 64 characters)."""
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_ID:
        raise InvalidInputError(f"transaction id must be 1..{_MAX_ID} characters")
    return value


@dataclass(frozen=True, slots=True)
class Transaction:
    """A transfer from an account to whoever owns a Pix key. Immutable: transitions return copies.

    The id is chosen by the origin bank, so a bank that resends a transfer
    (it timed out waiting for the broker's ack) names the same transfer and
    CodePix can recognise it.
    """

    id: str
    account_from: Account
    amount_cents: int
    pix_key_to: PixKey
    description: str = ""
    status: TransactionStatus = TransactionStatus.PENDING
    error_reason: str | None = None

    def __post_init__(self) -> None:
        validate_transaction_id(self.id)
        validate_amount(self.amount_cents)
        if not isinstance(self.description, str) or len(self.description) > _MAX_DESCRIPTION:
            raise InvalidInputError(f"description must be at most {_MAX_DESCRIPTION} characters")
        object.__setattr__(self, "status", TransactionStatus(self.status))

    @classmethod
    def register(
        cls,
        *,
        id: str,
        account_from: Account,
        amount_cents: int,
        pix_key_to: PixKey,
        description: str = "",
    ) -> Transaction:
        """A new pending transfer, after the rules a transfer must pass to be attempted."""
        transaction = cls(
            id=id,
            account_from=account_from,
            amount_cents=amount_cents,
            pix_key_to=pix_key_to,
            description=description,
        )
        if not pix_key_to.is_active:
            raise InactivePixKeyError(f"key {pix_key_to.kind}:{pix_key_to.key} is inactive")
        if pix_key_to.account.id == account_from.id:
            raise SameAccountError("the destination key belongs to the origin account")
        return transaction

    def _move(self, target: TransactionStatus, reason: str | None = None) -> Transaction:
        if not can_transition(self.status, target):
            raise IllegalTransitionError(
                f"transaction {self.id} cannot go from {self.status} to {target}"
            )
        return dataclasses.replace(self, status=target, error_reason=reason)

    def confirm(self) -> Transaction:
        """The destination bank credited the money."""
        return self._move(TransactionStatus.CONFIRMED)

    def complete(self) -> Transaction:
        """The origin bank settled its side; the transfer is done."""
        return self._move(TransactionStatus.COMPLETED)

    def fail(self, reason: str) -> Transaction:
        """The transfer cannot succeed; *reason* is sent back to the origin bank."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInputError("an error needs a reason")
        return self._move(TransactionStatus.ERROR, reason[:_MAX_REASON])
