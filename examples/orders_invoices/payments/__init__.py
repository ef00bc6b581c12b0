"""Payments: charges the card through Stripe, exactly once per order, and refunds on cancel.

The charge is ``@idempotent`` (key: the order id, store: ``SqlStore`` in the
payments database) with a recovery point after Stripe answers. Stripe gets our
own ``Idempotency-Key`` too, so even when our database is gone at the worst
moment -- Stripe charged, nothing recorded here -- the redelivered message
asks Stripe again with the same key and gets the *same* charge back instead of
a second one. ``crash_after_charge`` plays that scenario on demand.
"""

from .service import PaymentsService

__all__ = ["PaymentsService"]
