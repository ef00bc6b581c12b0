"""Gateway: the single entry point, and a backend-for-frontend that degrades.

Each upstream service gets its own timeout and its own circuit breaker, so a
slow invoices service costs a BFF call at most its 0.5 s timeout, and once its
breaker opens, nothing at all. ``POST /orders`` requires an ``Idempotency-Key``
(``IdempotencyMiddleware`` over a ``SqlStore`` in the gateway's database): a
client retrying after a lost response gets the first answer back, not a second
order.

``GET /bff/orders/{id}`` returns the order with its invoice, payment and a
delivery estimate. The order itself is required; the other parts are
optional: when their service is down or its breaker open, the response is still
200, with ``partial: true`` and ``missing`` saying which parts and why.

``policies=False`` removes the timeouts and breakers (a client nobody tuned:
30 s timeout), which is what the docs measure the policies against. The app
runs its blocking handlers on 16 worker threads, like a server's worker pool:
the resource a slow upstream exhausts when nothing bounds the wait.
"""

from .service import GatewayService

__all__ = ["GatewayService"]
