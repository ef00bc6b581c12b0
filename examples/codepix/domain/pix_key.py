"""Pix keys: the aliases (CPF, e-mail, phone, random UUID) a transfer is addressed to."""

from __future__ import annotations

import dataclasses
import enum
import re
import uuid
from dataclasses import dataclass
from typing import Final

from .bank import Account
from .errors import InactivePixKeyError, InvalidPixKeyError

_EMAIL_MAX: Final = 77  # the Pix rulebook's limit for e-mail keys
_EMAIL: Final = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
# E.164 for Brazil: +55, a two-digit area code without zeros, 8 digits or 9 starting with 9.
_PHONE: Final = re.compile(r"\+55[1-9]{2}(?:9[0-9]{8}|[2-8][0-9]{7})")
_CPF_PUNCTUATED: Final = re.compile(r"[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}")
_CPF_DIGITS: Final = re.compile(r"[0-9]{11}")


class PixKeyKind(enum.StrEnum):
    """What a key is; each kind has its own format."""

    CPF = "cpf"
    EMAIL = "email"
    PHONE = "phone"
    RANDOM = "random"


class PixKeyStatus(enum.StrEnum):
    """Only active keys receive transfers; inactive ones are kept for the audit trail."""

    ACTIVE = "active"
    INACTIVE = "inactive"


def cpf_check_digits(first_nine: str) -> str:
    """The two check digits of a CPF whose first nine digits are *first_nine*."""
    digits = [int(c) for c in first_nine]
    for weight_start in (10, 11):
        total = sum(d * w for d, w in zip(digits, range(weight_start, 1, -1), strict=False))
        digits.append(0 if total % 11 < 2 else 11 - total % 11)
    return f"{digits[-2]}{digits[-1]}"


def _normalize_cpf(value: str) -> str:
    if _CPF_PUNCTUATED.fullmatch(value):
        value = value.replace(".", "").replace("-", "")
    if not _CPF_DIGITS.fullmatch(value):
        raise InvalidPixKeyError("a CPF key is 11 digits (punctuation 000.000.000-00 allowed)")
    if value == value[0] * 11:
        raise InvalidPixKeyError("a CPF key cannot repeat one digit eleven times")
    if cpf_check_digits(value[:9]) != value[9:]:
        raise InvalidPixKeyError(f"CPF {value} has wrong check digits")
    return value


def _normalize_email(value: str) -> str:
    if len(value) > _EMAIL_MAX or not _EMAIL.fullmatch(value):
        raise InvalidPixKeyError(f"not a valid e-mail address of at most {_EMAIL_MAX} characters")
    return value.lower()


def _normalize_phone(value: str) -> str:
    if not _PHONE.fullmatch(value):
        raise InvalidPixKeyError("a phone key is E.164 with country code +55, e.g. +5511987654321")
    return value


def _normalize_random(value: str) -> str:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidPixKeyError("a random key is a UUID, e.g. 9f1c...-4...") from None
    if parsed.version != 4 or parsed.variant != uuid.RFC_4122 or str(parsed) != value.lower():
        raise InvalidPixKeyError("a random key is a version 4 UUID in 8-4-4-4-12 form")
    return str(parsed)


_NORMALIZERS: Final = {
    PixKeyKind.CPF: _normalize_cpf,
    PixKeyKind.EMAIL: _normalize_email,
    PixKeyKind.PHONE: _normalize_phone,
    PixKeyKind.RANDOM: _normalize_random,
}


_KINDS: Final = tuple(k.value for k in PixKeyKind)


def parse_kind(kind: object) -> PixKeyKind:
    """*kind* as a `PixKeyKind`; anything else is an `InvalidPixKeyError`."""
    if isinstance(kind, str) and kind in _KINDS:
        return PixKeyKind(kind)
    raise InvalidPixKeyError(f"key kind must be one of {', '.join(_KINDS)}, got {kind!r}")


def normalize_key(kind: PixKeyKind | str, key: object) -> tuple[PixKeyKind, str]:
    """Validate *key* for *kind* and return its canonical form.

    Canonical forms make "the same key" mean the same row: a CPF is stored as
    11 digits whether it came punctuated or not, an e-mail in lower case.
    """
    parsed = parse_kind(kind)
    if not isinstance(key, str) or not key:
        raise InvalidPixKeyError("key must be a non-empty string")
    if key != key.strip():
        raise InvalidPixKeyError("key must not have surrounding whitespace")
    return parsed, _NORMALIZERS[parsed](key)


@dataclass(frozen=True, slots=True)
class PixKey:
    """A registered key pointing at one account. Construct it with a valid key or it raises.

    Attributes:
        kind: which format *key* follows.
        key: the canonical key (see `normalize_key`).
        account: the account transfers to this key are credited to.
        status: only active keys receive transfers.
    """

    kind: PixKeyKind
    key: str
    account: Account
    status: PixKeyStatus = PixKeyStatus.ACTIVE

    def __post_init__(self) -> None:
        kind, key = normalize_key(self.kind, self.key)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "key", key)
        if not isinstance(self.account, Account):
            raise InvalidPixKeyError("a key must point at an Account")
        object.__setattr__(self, "status", PixKeyStatus(self.status))

    @property
    def is_active(self) -> bool:
        """Whether transfers to this key are accepted."""
        return self.status is PixKeyStatus.ACTIVE

    def deactivate(self) -> PixKey:
        """This key, inactive; the row stays (transactions refer to it) but receives nothing.

        Deactivating twice is an `InactivePixKeyError`: a second request means the
        caller's view is stale, which it should hear about rather than get a silent no-op.
        """
        if not self.is_active:
            raise InactivePixKeyError(f"key {self.kind}:{self.key} is already inactive")
        return dataclasses.replace(self, status=PixKeyStatus.INACTIVE)
