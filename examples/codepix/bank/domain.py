"""The bank's rules, free of I/O: who the bank is, accounts, transfers and their money.

Money only moves in whole cents (ints). A transfer touches balances at three
moments, each exactly once: the origin *debits* when it sends, the destination
*credits* when it receives, and the origin *refunds* if CodePix refuses the
transfer. "Exactly once" is a rule of the domain (`Transfer` only allows the
moves below) and of the database (one entry per transfer and kind).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from examples.codepix.domain import (
    IllegalTransitionError,
    InvalidAccountError,
    InvalidAmountError,
    InvalidInputError,
    PixKeyKind,
    RuleViolationError,
    validate_amount,
    validate_bank_code,
    validate_transaction_id,
)

__all__ = [
    "KNOWN_BANKS",
    "BankProfile",
    "Direction",
    "EntryKind",
    "InsufficientFundsError",
    "Transfer",
    "TransferConflictError",
    "TransferStatus",
    "format_reais",
    "new_transfer_id",
    "parse_reais",
    "profile_for",
    "validate_colour",
    "validate_owner",
]

_COLOUR: Final = re.compile(r"#[0-9a-fA-F]{6}")
_REAIS: Final = re.compile(r"[0-9]{1,12}(?:[.,][0-9]{1,2})?")


class InsufficientFundsError(RuleViolationError):
    """The origin account cannot pay the amount; nothing was debited."""


class TransferConflictError(RuleViolationError):
    """A transfer id the bank already used, sent again with different details."""


def validate_colour(value: object) -> str:
    """*value* if it is a ``#rrggbb`` colour (it goes into the page's CSS)."""
    if not isinstance(value, str) or not _COLOUR.fullmatch(value):
        raise InvalidInputError(f"colour must look like #1a2b3c, got {value!r}")
    return value.lower()


@dataclass(frozen=True, slots=True)
class BankProfile:
    """Who this process is: the same code runs every bank, with a different profile.

    Attributes:
        code: three digits; names the topic the bank consumes (``bank001``).
        name: the short name shown on the pages ("BBX").
        colour: the primary colour of the pages (``#rrggbb``).
        accent: a second colour for headings and buttons.
    """

    code: str
    name: str
    colour: str = "#334155"
    accent: str = "#f8fafc"

    def __post_init__(self) -> None:
        validate_bank_code(self.code)
        if not isinstance(self.name, str) or not 0 < len(self.name.strip()) <= 40:
            raise InvalidInputError("bank name must be 1..40 characters")
        validate_colour(self.colour)
        validate_colour(self.accent)

    @property
    def topic(self) -> str:
        """The topic CodePix writes this bank's messages to."""
        return f"bank{self.code}"


KNOWN_BANKS: Final = {
    "001": BankProfile("001", "BBX", colour="#0b3d91", accent="#ffd200"),
    "002": BankProfile("002", "CTD", colour="#7a1f5c", accent="#ffe9f5"),
}
"""The two banks of the examples; any other code needs ``--name`` (and may set colours)."""


def profile_for(
    code: str, name: str | None = None, colour: str | None = None, accent: str | None = None
) -> BankProfile:
    """The profile for *code*: a known bank's, with any given field overriding it."""
    validate_bank_code(code)
    base = KNOWN_BANKS.get(code)
    if base is None and not name:
        raise InvalidInputError(f"bank {code} is not one of {sorted(KNOWN_BANKS)}: give it a name")
    return BankProfile(
        code=code,
        name=name or (base.name if base else ""),
        colour=colour or (base.colour if base else "#334155"),
        accent=accent or (base.accent if base else "#f8fafc"),
    )


class TransferStatus(enum.StrEnum):
    """A transfer as one bank sees it (the same words CodePix uses)."""

    PENDING = "pending"  # origin: debited and sent; destination: received, not yet credited
    CONFIRMED = "confirmed"  # the destination credited the money
    COMPLETED = "completed"  # both sides settled
    ERROR = "error"  # refused by CodePix; the origin refunded the debit


class Direction(enum.StrEnum):
    """Whether this bank sends (``out``) or receives (``in``) the transfer."""

    OUT = "out"
    IN = "in"


class EntryKind(enum.StrEnum):
    """A line of the statement; the sign of the amount follows from the kind."""

    DEPOSIT = "deposit"
    DEBIT = "debit"
    CREDIT = "credit"
    REFUND = "refund"

    def signed(self, amount_cents: int) -> int:
        """*amount_cents* with the sign this kind of entry has on the balance."""
        return -amount_cents if self is EntryKind.DEBIT else amount_cents


_MOVES: Final = {
    TransferStatus.PENDING: frozenset({TransferStatus.CONFIRMED, TransferStatus.ERROR}),
    TransferStatus.CONFIRMED: frozenset({TransferStatus.COMPLETED}),
    TransferStatus.COMPLETED: frozenset(),
    TransferStatus.ERROR: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Transfer:
    """One side of a transfer. Immutable: `move` returns the changed copy.

    Attributes:
        id: chosen by the origin bank; the same id on both sides and at CodePix.
        direction: this bank's side.
        account_id: this bank's account (debited for ``out``, credited for ``in``).
        amount_cents: positive integer cents.
        pix_key_kind / pix_key: the destination key (canonical form).
        counterparty: who is on the other side, for the statement ("Bob @ 002").
        description: free text from the sender.
        status: see `TransferStatus`.
        reason: why CodePix refused it (status ``error``).
    """

    id: str
    direction: Direction
    account_id: str
    amount_cents: int
    pix_key_kind: PixKeyKind
    pix_key: str
    counterparty: str = ""
    description: str = ""
    status: TransferStatus = TransferStatus.PENDING
    reason: str | None = None

    def __post_init__(self) -> None:
        validate_transaction_id(self.id)
        validate_amount(self.amount_cents)
        object.__setattr__(self, "direction", Direction(self.direction))
        object.__setattr__(self, "status", TransferStatus(self.status))
        object.__setattr__(self, "pix_key_kind", PixKeyKind(self.pix_key_kind))
        if not isinstance(self.description, str) or len(self.description) > 140:
            raise InvalidInputError("description must be at most 140 characters")

    def move(self, target: TransferStatus, reason: str | None = None) -> Transfer:
        """The transfer in *target*; `IllegalTransitionError` for a move the life cycle forbids."""
        if target not in _MOVES[self.status]:
            raise IllegalTransitionError(f"transfer {self.id} cannot go {self.status} -> {target}")
        return dataclasses.replace(self, status=target, reason=reason)

    def same_request(self, other: Transfer) -> bool:
        """Whether *other* asks for the same thing (a retried request, not a conflicting one)."""
        fields = ("account_id", "amount_cents", "pix_key_kind", "pix_key", "description")
        return all(getattr(self, f) == getattr(other, f) for f in fields)


def new_transfer_id() -> str:
    """A fresh transfer id (clients may choose their own, to retry safely)."""
    return str(uuid.uuid4())


def parse_reais(text: object) -> int:
    """``"12.34"`` or ``"12,34"`` (reais, as typed in a form) as integer cents.

    Decimal, never float: "0.10" is 10 cents exactly. More than two decimals,
    signs, exponents and blanks are refused rather than rounded.
    """
    if not isinstance(text, str) or not _REAIS.fullmatch(text.strip()):
        raise InvalidAmountError("amount must look like 12.34 (reais, at most two decimals)")
    try:
        cents = Decimal(text.strip().replace(",", ".")) * 100
    except InvalidOperation:  # pragma: no cover - the pattern already excludes it
        raise InvalidAmountError("amount is not a number") from None
    return validate_amount(int(cents))


def format_reais(cents: int) -> str:
    """``R$ 1,234.56``: exact (Decimal), for pages and printouts."""
    return f"R$ {Decimal(cents) / 100:,.2f}"


def validate_owner(name: object) -> str:
    """An account holder's name (1..120 characters)."""
    if not isinstance(name, str) or not 0 < len(name.strip()) <= 120:
        raise InvalidAccountError("owner name must be 1..120 characters")
    return name.strip()
