"""Transactional outbox and inbox: events committed with the business change, delivered at least once, applied once."""

__all__: list[str] = []
