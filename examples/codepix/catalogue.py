"""Every message CodePix and the banks exchange, declared once from the wiring.

Topics come from the constants and routers the services use; the payload
types are the TypedDicts the code builds its payloads with. The docs render
this (``<!-- message-catalogue: examples.codepix.catalogue -->``) and a test
replays a run against it, so neither can drift from the code.
"""

from __future__ import annotations

from typing import Any, Final

from examples._catalogue import EventSpec
from examples.codepix.adapters.messaging import TOPICS
from examples.codepix.application import (
    COMPLETED,
    CONFIRMED,
    FAILED,
    REQUESTED,
    FailedPayload,
    FailureReportPayload,
    ForwardedTransferPayload,
    StatusPayload,
    StatusReportPayload,
    TransferRequestPayload,
)
from examples.codepix.bank.adapters.sql import TO_CODEPIX
from resilience.messaging import Message

BANK_TOPIC: Final = "bank<code>"
"""Each bank consumes its own topic, ``bank001``, ``bank002``...: one row per message type."""

ORIGIN: Final = "bank (origin)"
DESTINATION: Final = "bank (destination)"
CODEPIX: Final = "codepix"


def to_codepix(message_type: str) -> str:
    """The topic a bank sends *message_type* to (the bank's own router decides)."""
    topic = TO_CODEPIX(Message(type=message_type))
    assert topic in TOPICS, f"banks send {message_type} to {topic}, which CodePix does not consume"
    return topic


def catalogue() -> tuple[EventSpec, ...]:
    """The eight messages of a transfer's life, in the order they happen."""
    rows: tuple[tuple[str, str, str, str, type[Any], str], ...] = (
        (REQUESTED, to_codepix(REQUESTED), ORIGIN, CODEPIX, TransferRequestPayload,
         "The origin debited the sender and asks CodePix to move the money."),
        (REQUESTED, BANK_TOPIC, CODEPIX, DESTINATION, ForwardedTransferPayload,
         "CodePix registered the transfer (pending) and forwards it to the key's bank."),
        (CONFIRMED, to_codepix(CONFIRMED), DESTINATION, CODEPIX, StatusReportPayload,
         "The destination credited the receiver (once)."),
        (CONFIRMED, BANK_TOPIC, CODEPIX, ORIGIN, StatusPayload,
         "CodePix tells the origin that the money arrived."),
        (COMPLETED, to_codepix(COMPLETED), ORIGIN, CODEPIX, StatusReportPayload,
         "The origin settled its side (its own transfer is now completed)."),
        (COMPLETED, BANK_TOPIC, CODEPIX, DESTINATION, StatusPayload,
         "CodePix tells the destination that the transfer is done."),
        (FAILED, to_codepix(FAILED), DESTINATION, CODEPIX, FailureReportPayload,
         "The destination has no such account; CodePix marks the transfer error."),
        (FAILED, BANK_TOPIC, CODEPIX, ORIGIN, FailedPayload,
         "CodePix or the destination refused the transfer (unknown key, own account,"
         " no such account...); the origin refunds."),
    )  # fmt: skip
    return tuple(
        EventSpec(
            type=kind,
            topic=topic,
            producer=producer,
            consumers=(consumer,),
            payload=payload,
            summary=summary,
        )
        for kind, topic, producer, consumer, payload, summary in rows
    )
