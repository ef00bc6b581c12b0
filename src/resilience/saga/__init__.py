"""Choreographed sagas: multi-service transactions as events, with compensations and timeouts."""

__all__: list[str] = []
