"""Orders: takes orders and owns the order saga (``resilience.saga``).

``pending`` --stock.reserved--> ``reserved`` --payment.succeeded--> ``confirmed``
and ``cancelled`` from ``pending`` (stock unavailable), from ``reserved``
(payment failed) or from either when the saga's persisted deadline timer
fires. Each move runs in one transaction with the inbox row, the saga state
(optimistic lock), the order row and the outbox event, so a redelivered or
late message changes nothing. A cancellation is announced with
``order.cancelled``: stock releases what it reserved, payments refunds what it
charged.
"""

from .service import OrdersService

__all__ = ["OrdersService"]
