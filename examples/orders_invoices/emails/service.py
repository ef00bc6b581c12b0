"""The email service: its inbox and SMTP delivery (see the package docstring)."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import sqlalchemy as sa
from sqlalchemy.orm import Session

from examples.orders_invoices._environment import Environment
from examples.orders_invoices._service import Service, handles
from examples.orders_invoices.events import InvoiceIssued
from resilience.messaging import Message


class EmailService(Service):
    """The email service; *smtp* is the mail server's ``host:port``."""

    name = "email"

    def __init__(self, env: Environment, smtp: str) -> None:
        super().__init__(env)
        host, _, port = smtp.rpartition(":")
        self.smtp_host, self.smtp_port = host or "127.0.0.1", int(port)
        self.sent = sa.Table(
            "sent",
            self.metadata,
            sa.Column("invoice_number", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("recipient", sa.String(200), nullable=False),
        )

    @handles(InvoiceIssued)
    def _on_issued(self, message: Message, event: InvoiceIssued) -> None:
        self.once(message, lambda session: self._send(session, event))

    def _send(self, session: Session, event: InvoiceIssued) -> None:
        number = event.number
        mail = EmailMessage()
        mail["From"] = "invoices@shop.example"
        mail["To"] = event.customer
        mail["Subject"] = f"Invoice {number:06d}"
        mail["Message-ID"] = f"<invoice-{number}@shop.example>"
        total = event.total_cents
        mail.set_content(f"Your invoice {number:06d}: R$ {total // 100},{total % 100:02d}.")
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=5) as smtp:
            smtp.send_message(mail)
        session.execute(self.sent.insert().values(invoice_number=number, recipient=event.customer))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.sent)).scalar_one())
