"""Email: turns ``invoice.issued`` into a message sent over SMTP.

Delivery is at least once (SMTP has no transaction to join), so each message
carries a ``Message-ID`` derived from the invoice number: a resend after a crash
between "SMTP accepted" and "inbox committed" is recognisable downstream. The
inbox makes the ordinary redelivery a no-op.
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from examples.orders_invoices._service import Service
from examples.orders_invoices.domain import Events
from resilience.messaging import InMemoryBroker, Message


class EmailService(Service):
    """The email service."""

    def __init__(self, workdir: Path, broker: InMemoryBroker, smtp_port: int) -> None:
        super().__init__("email", workdir, broker)
        self.smtp_port = smtp_port
        self.sent = sa.Table(
            "sent",
            self.metadata,
            sa.Column("invoice_number", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("recipient", sa.String(200), nullable=False),
        )
        handler = self.inbox.handler(consumer="email", sessionmaker=self.sessions, fn=self._send)
        self.consume("invoice", handler)

    def _send(self, session: Session, message: Message) -> None:
        if message.type != Events.INVOICE_ISSUED:
            return
        payload = message.payload
        number = int(payload["number"])
        mail = EmailMessage()
        mail["From"] = "invoices@shop.example"
        mail["To"] = str(payload["customer"])
        mail["Subject"] = f"Invoice {number:06d}"
        mail["Message-ID"] = f"<invoice-{number}@shop.example>"
        total = int(payload["total_cents"])
        mail.set_content(f"Your invoice {number:06d}: R$ {total // 100},{total % 100:02d}.")
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=5) as smtp:
            smtp.send_message(mail)
        session.execute(
            self.sent.insert().values(invoice_number=number, recipient=str(payload["customer"]))
        )

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.sent)).scalar_one())
