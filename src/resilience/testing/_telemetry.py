from __future__ import annotations

from resilience._telemetry import Event

__all__ = ["RecordingTelemetry"]


class RecordingTelemetry:
    """Keeps every event, for assertions in tests."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of_kind(self, kind: str) -> list[Event]:
        """The recorded events whose ``kind`` is *kind*, in order."""
        return [e for e in self.events if e.kind == kind]
