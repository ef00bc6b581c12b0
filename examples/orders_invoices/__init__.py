"""Orders and invoices: seven services that survive their own failures.

gateway, orders (owns the order saga), stock, payments (fake Stripe), invoices
(gapless numbers), email (SMTP) and logistics (fake Correios behind a
resilience pipeline), each with its own database and HTTP API, talking through
outboxes, a broker and inboxes. ``python -m examples.orders_invoices demo``
runs them all in one process with chaos; see docs/examples/orders-invoices.md.
"""
