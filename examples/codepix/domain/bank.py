"""Banks and accounts: the parties CodePix moves money between."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import InvalidAccountError, InvalidBankError

_BANK_CODE: Final = re.compile(r"[0-9]{3}")
_MAX_TEXT: Final = 120


def _text(value: object, field: str, error: type[Exception], limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise error(f"{field} must be a non-empty string of at most {limit} characters")
    return value.strip()


def validate_bank_code(code: object) -> str:
    """*code* if it is exactly three digits; otherwise `InvalidBankError`."""
    if not isinstance(code, str) or not _BANK_CODE.fullmatch(code):
        raise InvalidBankError(f"bank code must be exactly three digits, got {code!r}")
    return code


@dataclass(frozen=True, slots=True)
class Bank:
    """A participant of the Pix network, identified by its three-digit code ("001").

    The code also names the bank's Kafka topic (``bank001``), which is why it is
    validated strictly: a bad code would be a bad topic name.
    """

    code: str
    name: str

    def __post_init__(self) -> None:
        validate_bank_code(self.code)
        object.__setattr__(self, "name", _text(self.name, "bank name", InvalidBankError))

    @property
    def topic(self) -> str:
        """The topic the bank consumes transfers from."""
        return f"bank{self.code}"


@dataclass(frozen=True, slots=True)
class Account:
    """An account at a bank; *id* is the bank's own identifier (a UUID in practice)."""

    id: str
    number: str
    owner_name: str
    bank: Bank

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", _text(self.id, "account id", InvalidAccountError, 64))
        object.__setattr__(
            self, "number", _text(self.number, "account number", InvalidAccountError, 32)
        )
        object.__setattr__(
            self, "owner_name", _text(self.owner_name, "owner name", InvalidAccountError)
        )
        if not isinstance(self.bank, Bank):
            raise InvalidAccountError("account bank must be a Bank")
