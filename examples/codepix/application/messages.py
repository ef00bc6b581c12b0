"""The message contract between CodePix and the banks (topics, types, payload fields).

Amounts travel as integer cents (``amount_cents``), never as floats.

=============================  ==========================  ============================
topic                          type                        payload
=============================  ==========================  ============================
``transactions`` (bank in)     ``transaction.requested``   id, account_id, amount_cents,
                                                           pix_key_kind, pix_key, description
``transaction_confirmation``   ``transaction.confirmed``   id (sent by the destination bank)
``transaction_confirmation``   ``transaction.completed``   id (sent by the origin bank)
``transaction_confirmation``   ``transaction.failed``      id, reason (the destination refuses)
``bank<code>`` (CodePix out)   ``transaction.requested``   the transfer, status pending
``bank<code>``                 ``transaction.confirmed``   id, status (to the origin bank)
``bank<code>``                 ``transaction.completed``   id, status (to the destination bank)
``bank<code>``                 ``transaction.failed``      id, status error, reason (to the origin)
=============================  ==========================  ============================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from typing_extensions import TypedDict  # pydantic (the docs catalogue) needs it before 3.12

from examples.codepix.domain import InvalidInputError, Transaction

TRANSACTIONS_TOPIC: Final = "transactions"
CONFIRMATIONS_TOPIC: Final = "transaction_confirmation"
REQUESTED: Final = "transaction.requested"
CONFIRMED: Final = "transaction.confirmed"
COMPLETED: Final = "transaction.completed"
FAILED: Final = "transaction.failed"


class TransferRequestPayload(TypedDict):
    """``transaction.requested`` from the origin bank to CodePix (topic ``transactions``)."""

    id: str
    account_id: str
    amount_cents: int
    pix_key_kind: str
    pix_key: str
    description: str


class StatusReportPayload(TypedDict):
    """``transaction.confirmed`` / ``.completed`` from a bank to CodePix."""

    id: str


class FailureReportPayload(TypedDict):
    """``transaction.failed`` from the destination bank to CodePix: it cannot credit the transfer."""

    id: str
    reason: str


class AccountRef(TypedDict):
    """The origin side of a forwarded transfer."""

    bank_code: str
    account_id: str
    account_number: str
    owner_name: str


class KeyRef(TypedDict):
    """The destination side of a forwarded transfer."""

    bank_code: str
    account_id: str
    pix_key_kind: str
    pix_key: str


# ``transaction.requested`` from CodePix to the destination bank (``bank<code>``).
# The functional form, because one field is called "from".
ForwardedTransferPayload = TypedDict(
    "ForwardedTransferPayload",
    {
        "id": str,
        "status": str,
        "amount_cents": int,
        "description": str,
        "from": AccountRef,
        "to": KeyRef,
    },
)


class StatusPayload(TypedDict):
    """``transaction.confirmed`` / ``.completed`` from CodePix to a bank."""

    id: str
    status: str


class FailedPayload(TypedDict):
    """``transaction.failed`` from CodePix to the origin bank: the transfer will not happen."""

    id: str
    status: str
    reason: str


class MalformedMessageError(InvalidInputError):
    """An incoming message whose payload does not follow the contract; it is dead-lettered."""


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A bank asks CodePix to move money (``transaction.requested`` on ``transactions``)."""

    message_id: str
    id: str
    account_id: str
    amount_cents: int
    pix_key_kind: str
    pix_key: str
    description: str = ""

    @classmethod
    def from_payload(cls, message_id: str, payload: object) -> TransferRequest:
        """Parse a payload; raises `MalformedMessageError` naming the bad field."""
        body = _object(payload)
        return cls(
            message_id=message_id,
            id=_string(body, "id"),
            account_id=_string(body, "account_id"),
            amount_cents=_raw(body, "amount_cents"),
            pix_key_kind=_string(body, "pix_key_kind"),
            pix_key=_string(body, "pix_key"),
            description=_optional_string(body, "description"),
        )


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A bank reports progress on a transfer (``transaction.confirmed`` / ``.completed``)."""

    message_id: str
    id: str

    @classmethod
    def from_payload(cls, message_id: str, payload: object) -> StatusUpdate:
        """Parse a payload; raises `MalformedMessageError`."""
        return cls(message_id=message_id, id=_string(_object(payload), "id"))


@dataclass(frozen=True, slots=True)
class FailureReport:
    """The destination bank refuses a transfer (``transaction.failed`` on the confirmations)."""

    message_id: str
    id: str
    reason: str

    @classmethod
    def from_payload(cls, message_id: str, payload: object) -> FailureReport:
        """Parse a payload; raises `MalformedMessageError`."""
        body = _object(payload)
        return cls(message_id=message_id, id=_string(body, "id"), reason=_string(body, "reason"))


def transfer_payload(transaction: Transaction) -> ForwardedTransferPayload:
    """The JSON body describing *transaction* to a bank."""
    source = transaction.account_from
    return {
        "id": transaction.id,
        "status": str(transaction.status),
        "amount_cents": transaction.amount_cents,
        "description": transaction.description,
        "from": {
            "bank_code": source.bank.code,
            "account_id": source.id,
            "account_number": source.number,
            "owner_name": source.owner_name,
        },
        "to": {
            "bank_code": transaction.pix_key_to.account.bank.code,
            "account_id": transaction.pix_key_to.account.id,
            "pix_key_kind": str(transaction.pix_key_to.kind),
            "pix_key": transaction.pix_key_to.key,
        },
    }


def _object(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise MalformedMessageError(f"payload must be a JSON object, got {type(payload).__name__}")
    return payload


def _raw(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise MalformedMessageError(f"payload has no {name!r}")
    return body[name]


def _optional_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedMessageError(f"payload field {name!r} must be a string")
    return value


def _string(body: dict[str, Any], name: str) -> str:
    value = _raw(body, name)
    if not isinstance(value, str) or not value:
        raise MalformedMessageError(f"payload field {name!r} must be a non-empty string")
    return value
