"""Invoices: one invoice per confirmed order, numbered without gaps or duplicates.

The number comes from a counter row incremented in the *same* transaction as
the invoice row, the inbox row and the ``invoice.issued`` outbox event. A crash
anywhere rolls all four back together, so a number is never burnt (no gap) and
a redelivered ``order.confirmed`` is skipped by the inbox (no duplicate). The
database serialises writers on the counter row, so two consumers cannot take the
same number either.

The shipping cost is asked from logistics over HTTP *before* the transaction
opens, so no lock is held across a network call.
"""

from .service import InvoicesService

__all__ = ["InvoicesService"]
