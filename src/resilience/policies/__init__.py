"""Circuit breaker, retry, timeout, bulkhead, rate limiter, fallback and pipelines."""

from ._base import Policy, PolicyDecorator

__all__ = ["Policy", "PolicyDecorator"]
