"""Telemetry events emitted by policies and relays.

Components emit an `Event` only on the paths that matter to an operator
(state changes, rejections, retries, dead letters), never per successful call,
so telemetry costs nothing on the hot path. The default sink logs through the
standard `logging` module; `resilience.tracing` provides an OpenTelemetry sink.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Event", "LoggingTelemetry", "Telemetry", "TelemetryFanout"]

_log = logging.getLogger("resilience")


@dataclass(frozen=True, slots=True)
class Event:
    """Something a component wants an operator to know about.

    Attributes:
        component: the kind of component, e.g. ``"circuit_breaker"``, ``"retry"``.
        name: the instance name given by the user, e.g. ``"correios"``.
        kind: what happened, e.g. ``"state_change"``, ``"rejected"``, ``"retry"``.
        attributes: details (e.g. ``{"from": "closed", "to": "open"}``).
    """

    component: str
    name: str
    kind: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Telemetry(Protocol):
    """Receives events. Implementations must be cheap and must never raise."""

    def emit(self, event: Event) -> None: ...


class LoggingTelemetry:
    """Logs every event on the ``resilience`` logger (DEBUG unless *level* says otherwise)."""

    __slots__ = ("level", "logger")

    def __init__(self, logger: logging.Logger = _log, level: int = logging.INFO) -> None:
        self.logger = logger
        self.level = level

    def emit(self, event: Event) -> None:
        if self.logger.isEnabledFor(self.level):
            self.logger.log(
                self.level,
                "%s %r %s %s",
                event.component,
                event.name,
                event.kind,
                dict(event.attributes),
                extra={"resilience_event": event},
            )


class TelemetryFanout:
    """Sends each event to several sinks; a failing sink never breaks the caller."""

    __slots__ = ("sinks",)

    def __init__(self, *sinks: Telemetry) -> None:
        self.sinks = sinks

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # telemetry must never take the service down
                _log.exception("telemetry sink %r failed", sink)
