"""Logistics: shipping quotes from Correios, which is slow or down more often than we'd like.

Every quote goes through one pipeline, outermost first:

- ``Fallback``: the last good price for the same region (cache), else a flat rate,
  marked ``estimated``. A quote is always answered.
- ``Bulkhead(8)``: at most 8 calls to Correios at once; the rest fall back at once.
- ``Retry`` (3 attempts) drawing on a ``RetryBudget``: retries stay a fraction of
  traffic, so an outage does not triple the load on a struggling API.
- ``CircuitBreaker``: after enough failures, stop calling for a while.
- ``Timeout(0.3 s)``: a slow answer is a failure.

``policies=False`` calls Correios bare, with a client nobody tuned (30 s
timeout, no fallback): the comparison the docs measure.
"""

from .service import LogisticsService

__all__ = ["LogisticsService"]
