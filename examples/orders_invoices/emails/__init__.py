"""Email: turns ``invoice.issued`` into a message sent over SMTP.

Delivery is at least once (SMTP has no transaction to join), so each message
carries a ``Message-ID`` derived from the invoice number: a resend after a crash
between "SMTP accepted" and "inbox committed" is recognisable downstream. The
inbox makes the ordinary redelivery a no-op.
"""

from .service import EmailService

__all__ = ["EmailService"]
