"""Idempotency keys: run a side effect at most once per key and replay its result."""

__all__: list[str] = []
